"""The interactors' shared pieces: request reading, click maps against hand-computed values, crop
and paste-back geometry, the confidence, the replies."""

import math

import numpy as np
import pytest

from serverless.common.handler import BadRequest
from serverless.common.interactors import (
    Segmentation,
    gaussian_heatmap,
    interactor_handler,
    mask_reply,
    mean_probability,
    normalise_255,
    padded_box,
    paste,
    read_box,
    read_points,
    rle_reply,
    shapes_reply,
)


def test_points_are_read_and_checked():
    body = {"pos_points": [[1, 2], [3.5, 4]], "neg_points": []}
    assert read_points(body, "pos_points", 10, 10).tolist() == [[1, 2], [3.5, 4]]
    assert read_points(body, "neg_points", 10, 10).shape == (0, 2)
    assert read_points({}, "neg_points", 10, 10).shape == (0, 2)
    cases = [
        ({}, "pos_points", 4, "'pos_points' is required: at least 4 points as [[x, y], ...]"),
        ({"pos_points": [[1, 1]]}, "pos_points", 4, "'pos_points' needs at least 4 points, got 1"),
        ({"pos_points": [[1, 2, 3]]}, "pos_points", 0,
         "'pos_points[0]' must be [x, y] with two numbers, got [1, 2, 3]"),
        ({"pos_points": [[1, True]]}, "pos_points", 0,
         "'pos_points[0]' must be [x, y] with two numbers, got [1, True]"),
        ({"pos_points": [[11, 2]]}, "pos_points", 0, "'pos_points[0]' = [11, 2] is outside the 10x10 image"),
        ({"pos_points": "1,2"}, "pos_points", 0, "'pos_points' must be a list of [x, y] points, got str"),
    ]
    for body, key, minimum, message in cases:
        with pytest.raises(BadRequest) as error:
            read_points(body, key, 10, 10, minimum)
        assert str(error.value) == message


def test_boxes_in_either_form_and_none():
    assert read_box({"obj_bbox": [[8, 9], [2, 3]]}, 10, 10) == (2, 3, 8, 9)  # corners in any order
    assert read_box({"obj_bbox": [2, 3, 12, 9]}, 10, 10) == (2, 3, 10, 9)  # clipped to the image
    assert read_box({"obj_bbox": []}, 10, 10) is None and read_box({"obj_bbox": None}, 10, 10) is None
    with pytest.raises(BadRequest, match="must be"):
        read_box({"obj_bbox": [[1, 2]]}, 10, 10)
    with pytest.raises(BadRequest, match="outside the 10x10 image"):
        read_box({"obj_bbox": [20, 20, 30, 30]}, 10, 10)


def test_gaussian_heatmap_by_hand():
    heatmap = gaussian_heatmap(np.array([[2.0, 1.0]]), (3, 5), sigma=10)
    assert heatmap[1, 2] == 1.0
    # d^2 = 4 + 1 = 5 at (x=0, y=0): exp(-4 ln2 * 5 / 100) = 2^(-0.2)
    assert heatmap[0, 0] == pytest.approx(2 ** -0.2, rel=1e-6)
    # at half the width (d = sigma / 2) the value is one half
    assert gaussian_heatmap(np.array([[0.0, 0.0]]), (1, 6), sigma=10)[0, 5] == pytest.approx(0.5)
    two = gaussian_heatmap(np.array([[0.0, 0.0], [4.0, 0.0]]), (1, 5), sigma=10)
    assert two[0, 4] == 1.0 and two[0, 2] == pytest.approx(math.exp(-4 * math.log(2) * 4 / 100))
    assert gaussian_heatmap(np.zeros((0, 2)), (2, 2)).tolist() == [[0, 0], [0, 0]]
    assert normalise_255(np.array([1.0, 2.0, 3.0])).tolist() == [0, 127.5, 255]
    assert normalise_255(np.ones(3)).tolist() == [0, 0, 0]


def test_padded_box_and_paste_geometry():
    points = np.array([[60.7, 70.2], [100.9, 90.0]])
    assert padded_box(points, 50, (200, 300)) == (10, 20, 150, 140)  # truncated, then padded
    assert padded_box(points, 80, (150, 120)) == (0, 0, 119, 149)  # clipped to the last column/row
    crop = np.array([[0, 1], [1, 1], [0, 0]])
    full = paste(crop, (3, 1, 5, 4), (5, 6))
    assert full.dtype == np.uint8 and full.sum() == 3
    assert full[1:4, 3:5].tolist() == [[0, 1], [1, 1], [0, 0]]
    with pytest.raises(ValueError):
        paste(crop, (3, 1, 6, 4), (5, 6))


def test_the_reply_is_the_whole_image_in_0_and_255():
    assert mask_reply(np.array([[0, 3], [True, 0]])) == {"mask": [[0, 255], [255, 0]]}


def test_the_compact_reply_is_cvats_stored_rle():
    # CVAT's worked example (docs/wire-format.md §4.7): a 3 x 4 box at the origin.
    flat = [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    mask = np.zeros((6, 5), dtype=np.uint8)
    mask[0:4, 0:3] = np.array(flat).reshape(4, 3)
    assert rle_reply(mask) == {"rle": [0, 2, 2, 2, 2, 2, 2, 0, 0, 2, 3], "size": [6, 5]}
    assert rle_reply(np.zeros((2, 3))) == {"rle": [], "size": [2, 3]}


def test_confidence_is_the_mean_probability_over_the_mask():
    probabilities = np.array([[0.2, 0.9], [0.6, 0.1]], np.float32)
    assert mean_probability(probabilities, np.array([[0, 1], [255, 0]])) == pytest.approx((0.9 + 0.6) / 2)
    assert mean_probability(probabilities, np.zeros((2, 2))) == 0.0
    above = Segmentation.above(probabilities, 0.6)  # strictly above: 0.6 itself is background
    assert above.mask.tolist() == [[False, True], [False, False]] and above.confidence == pytest.approx(0.9)
    assert Segmentation.above(probabilities, 0.95).confidence == 0.0
    for confidence in (-0.1, 1.01, math.nan):
        with pytest.raises(ValueError, match="between 0 and 1"):
            Segmentation(np.ones((1, 1)), confidence)


def test_the_shapes_reply_is_one_mask_shape_with_its_confidence():
    mask = np.zeros((4, 5), dtype=np.uint8)
    mask[1, 1:3] = 1
    mask[2, 2:4] = 7  # any non-zero value is the object
    # Box (1, 1)-(3, 2) inclusive, 3 x 2: pixels 1 1 0 | 0 1 1, runs from a background run of 0.
    points = [0, 2, 2, 2, 1, 1, 3, 2]
    assert rle_reply(mask)["rle"] == points
    assert shapes_reply(Segmentation(mask, 2 / 3)) == {
        "shapes": [{"type": "mask", "points": points, "attributes": [{"spec_id": 0, "value": "0.6667"}]}]}
    assert shapes_reply(Segmentation(mask, 1.0))["shapes"][0]["attributes"] == [{"spec_id": 0, "value": "1.0000"}]
    assert shapes_reply(Segmentation(np.zeros((2, 3)), 0.0)) == {"shapes": []}


def test_an_interactor_handler_answers_each_mask_format_and_ignores_text_prompts(tmp_path):
    """The handler over a real nuclio-sdk Context and Event, with a segment that marks the box."""
    import base64
    import io
    import json

    import nuclio_sdk
    from PIL import Image

    def segment(context, interaction):
        x1, y1, x2, y2 = (int(v) for v in interaction.box)
        mask = np.zeros(interaction.shape, dtype=bool)
        mask[y1:y2, x1:x2] = True
        return Segmentation(mask, 0.75)

    handler = interactor_handler(segment, box_required=True)
    buffer = io.BytesIO()
    Image.new("RGB", (5, 3)).save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    context = nuclio_sdk.Context(logger=nuclio_sdk.Logger(0))

    def call(**body):
        return handler(context, nuclio_sdk.Event(body={"image": image, "pos_points": [], "neg_points": [], **body}))

    reply = call(obj_bbox=[[1, 0], [3, 2]])
    assert reply.status_code == 200 and json.loads(reply.body)["mask"] == [[0, 255, 255, 0, 0]] * 2 + [[0] * 5]
    compact = json.loads(call(obj_bbox=[1, 0, 3, 2], mask_format="cvat_rle").body)
    assert compact == {"rle": [0, 4, 1, 0, 2, 1], "size": [3, 5]}  # 2 x 2 of object at columns 1-2, rows 0-1
    shapes = json.loads(call(obj_bbox=[1, 0, 3, 2], mask_format="shapes").body)
    assert shapes == {"shapes": [{"type": "mask", "points": [0, 4, 1, 0, 2, 1],
                                  "attributes": [{"spec_id": 0, "value": "0.7500"}]}]}
    # CVAT 2.60+ may send text prompts (any JSON value); none of ours reads them.
    for mask_format in ("full", "cvat_rle", "shapes"):
        plain = call(obj_bbox=[1, 0, 3, 2], mask_format=mask_format)
        for prompts in (["a cat"], "cat", {"text": "cat"}, None):
            prompted = call(obj_bbox=[1, 0, 3, 2], mask_format=mask_format, text_prompts=prompts)
            assert (prompted.status_code, prompted.body) == (plain.status_code, plain.body)
    assert (call(obj_bbox=None).status_code, call(obj_bbox=None).body) == (
        400, "'obj_bbox' is required: this interactor starts from the object's box, [[x1, y1], [x2, y2]]")
    assert call(obj_bbox=[1, 0, 3, 2], mask_format="png").body == (
        "'mask_format' must be one of full, cvat_rle, shapes, got 'png'")
