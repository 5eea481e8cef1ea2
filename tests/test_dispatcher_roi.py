"""The region arithmetic of CVAT's ``roi`` (docs/wire-format.md §9.2), on hand-made cases; the requests
themselves run end to end in test_cvat_replay.py."""

import io

import numpy as np
import pytest
from PIL import Image

from dispatcher import roi
from serverless.common.handler import BadRequest

from helpers import TESTDATA


def test_every_shape_kind_moves_into_the_frame():
    rectangle = {"type": "rectangle", "points": [1, 2, 3, 4], "rotation": 30}
    mask = {"type": "mask", "points": [0, 2, 2, 5, 6, 7, 8]}  # runs, then the inclusive box
    skeleton = {"type": "skeleton", "points": [], "elements": [{"type": "points", "points": [1, 1]},
                                                                {"type": "points", "points": [2, 3]}]}
    assert roi.shift_shape(rectangle, 10, 100) == {"type": "rectangle", "points": [11, 102, 13, 104], "rotation": 30}
    assert roi.shift_shape(mask, 10, 100)["points"] == [0, 2, 2, 15, 106, 17, 108]  # runs untouched
    assert [e["points"] for e in roi.shift_shape(skeleton, 10, 100)["elements"]] == [[11, 101], [12, 103]]
    assert rectangle["points"] == [1, 2, 3, 4]  # the input stays as it was


def test_interactor_clicks_and_boxes_move_into_the_region():
    region = (100, 50, 300, 250)
    assert roi.into_region([[100, 50], [300, 250]], region, "pos_points") == [[0, 0], [200, 200]]
    with pytest.raises(roi.RoiError, match=r"neg_points\[1\]: \[99, 60\] is outside the ROI \[100, 50, 300, 250\]"):
        roi.into_region([[150, 60], [99, 60]], region, "neg_points")
    assert roi.box_into_region([[110, 60], [120, 70]], region) == [[10, 10], [20, 20]]
    assert roi.box_into_region([110, 60, 120, 70], region) == [10, 10, 20, 20]
    assert roi.box_into_region(None, region) is None and roi.box_into_region([], region) == []
    # A box whose corners are not numbers cannot be moved: 400 naming the corner, not a crash.
    with pytest.raises(roi.RoiError, match=r"obj_bbox\[0\]: must be \[x, y\], got \['a', 'b'\]"):
        roi.box_into_region(["a", "b", "c", "d"], region)
    with pytest.raises(roi.RoiError, match=r"obj_bbox\[0\]: must be \[x, y\], got \[None, 1\]"):
        roi.box_into_region([[None, 1], [2, 3]], region)
    assert roi.box_into_region([1, 2, 3], region) == [1, 2, 3]  # not a box at all: the function refuses it


def test_interactor_replies_come_back_in_frame_coordinates():
    region = (2, 1, 5, 3)  # 3 wide, 2 high, in a 6 x 4 frame
    crop = [[0, 255, 0], [255, 255, 0]]
    pasted = roi.reply_into_frame({"mask": crop}, region, (6, 4), "f")["mask"]
    assert pasted == [[0] * 6, [0, 0, 0, 255, 0, 0], [0, 0, 255, 255, 0, 0], [0] * 6]
    rle = roi.reply_into_frame({"rle": [1, 3, 0, 0, 1, 1], "size": [2, 3]}, region, (6, 4), "f")
    assert rle == {"rle": [1, 3, 2, 1, 3, 2], "size": [4, 6]}
    shapes = roi.reply_into_frame({"shapes": [{"type": "mask", "points": [1, 3, 0, 0, 1, 1], "attributes": []}]},
                                  region, (6, 4), "f")
    assert shapes["shapes"][0]["points"] == [1, 3, 2, 1, 3, 2]
    with pytest.raises(roi.BadFunctionReply, match=r"function f answered a mask of shape \[2, 2\] for a region of 3x2"):
        roi.reply_into_frame({"mask": [[0, 0], [0, 0]]}, region, (6, 4), "f")
    # Replies that cannot be moved are the function's fault (502), never a crash of ours.
    for broken in ({"mask": [[0, 0, 0], [0, 0]]}, {"rle": [1, 2, "x", 0, 1, 1], "size": [2, 3]},
                   {"shapes": [{"type": "rectangle", "points": ["a", 0, 1, 1]}]}, {"shapes": [{"points": 7}]}):
        with pytest.raises(roi.BadFunctionReply, match="function f answered a reply that cannot be put back"):
            roi.reply_into_frame(broken, region, (6, 4), "f")
    # An older interactor's polygon: its points move too.
    assert roi.reply_into_frame([[0, 0], [2, 1]], region, (6, 4), "f") == [[2, 1], [4, 2]]
    assert roi.reply_into_frame([1, 2], region, (6, 4), "f") == [1, 2]  # not an interactor's reply: as it came


@pytest.mark.parametrize("image_format", ["PNG", "BMP", "TIFF", "WEBP"])
def test_a_lossless_frame_is_cropped_losslessly_in_its_own_format(image_format):
    frame = Image.open(TESTDATA / "skimage/astronaut.png").convert("RGB")
    buffer = io.BytesIO()
    frame.save(buffer, image_format, **({"lossless": True} if image_format == "WEBP" else {}))
    crop = Image.open(io.BytesIO(roi.crop(buffer.getvalue(), (13, 7, 200, 100))))
    assert crop.format == image_format and crop.size == (187, 93)
    assert np.array_equal(np.asarray(crop.convert("RGB")), np.asarray(frame)[7:100, 13:200])


def test_a_frame_that_is_no_image_any_more_is_refused_in_words():
    with pytest.raises(BadRequest, match="the stored frame cannot be decoded"):
        roi.crop(b"not an image", (0, 0, 1, 1))
