"""Text detection, one mask item per text instance:
- PP-OCRv4 DBNet (onnx-paddlepaddle-ppocrv4-det) on its real weights, over HTTP through the runtime;
- CVAT's text-detection-0004 (PixelLink), whose official IR is out of reach here: its decoder on
  hand-built logit maps, the served function on a stand-in IR with the documented signature, and
  the served function without weights."""

import base64
import io
import itertools

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import yaml
from PIL import Image

from serverless.common import masks, model_files
from serverless.common.metadata import FunctionMeta

from helpers import REPO, TESTDATA, b64_file, box_iou, function_module, serve_function

DBNET_FUNCTION = REPO / "serverless/onnx/PaddlePaddle/ppocrv4-det/nuclio"
PIXEL_LINK_FUNCTION = REPO / "serverless/openvino/omz/intel/text-detection-0004/nuclio"
TEXT = TESTDATA / "skimage/text.png"  # handwritten formulae on lined paper, grey
PAGE = TESTDATA / "skimage/page.png"  # a photographed book page: a title, 5 lines, a code line; grey
BUS = TESTDATA / "ultralytics/bus.jpg"
# "cero emisiones" on the bus side, marked by hand on the image (x0, y0, x1, y1).
BUS_LETTERING = (555, 545, 680, 615)

dbnet_handler = function_module(DBNET_FUNCTION)
pixel_link = function_module(PIXEL_LINK_FUNCTION)


def spec_labels(folder):
    return FunctionMeta.from_nuclio(yaml.safe_load((folder / "function.yaml").read_text())).labels


def encoded(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(function, **body):
    reply = function.http.post("/", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def decoded_masks(items, size):
    """Each item's mask as an image-sized bool array."""
    width, height = size
    result = []
    for item in items:
        crop, (x0, y0, x1, y1) = masks.from_function_mask(item["mask"])
        assert 0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height
        full = np.zeros((height, width), bool)
        full[y0:y1 + 1, x0:x1 + 1] = crop
        result.append(full)
    return result


def polygon_bounds(item):
    points = np.array(item["points"]).reshape(-1, 2)
    return (*points.min(axis=0), *points.max(axis=0))


def assert_text_items(items, folder, size, min_confidence=0.0):
    """Well-formed mask items, each with a mask of its own (no pixel in two) within its rectangle's bounds."""
    (label,) = spec_labels(folder)
    width, height = size
    object_masks = decoded_masks(items, size)
    for item, mask in zip(items, object_masks):
        assert (item["label"], item["type"], item["attributes"]) == (label.name, label.type, [])
        assert isinstance(item["confidence"], str) and min_confidence <= float(item["confidence"]) <= 1
        points = np.array(item["points"]).reshape(-1, 2)
        assert points.shape == (4, 2) and len({tuple(p) for p in points}) == 4
        assert (points >= 0).all() and (points <= [width, height]).all()
        x0, y0, x1, y1 = polygon_bounds(item)
        ys, xs = np.nonzero(mask)
        assert xs.min() >= x0 - 2 and xs.max() <= x1 + 2 and ys.min() >= y0 - 2 and ys.max() <= y1 + 2
        assert mask.sum() >= 0.3 * (x1 - x0) * (y1 - y0)  # a fair part of its rectangle, not a sliver
    for first, second in itertools.combinations(object_masks, 2):
        assert not (first & second).any()  # CVAT gives every instance the same all-text mask


# --- PP-OCRv4 DBNet, real weights over HTTP -------------------------------------------------------


@pytest.fixture(scope="module")
def dbnet():
    try:
        model_files.resolve("text-detection-ppocrv4-dbnet")
    except model_files.ModelFilesMissing as error:
        pytest.fail(f"{error}\nRun the setup command from the README first.")
    with serve_function(DBNET_FUNCTION) as running:
        yield running


@pytest.fixture(scope="module")
def dbnet_items(dbnet):
    """Each test image's reply at the default threshold, asked once for the module."""
    return {path: post(dbnet, image=b64_file(path)) for path in (TEXT, PAGE, BUS)}


def test_dbnet_input_size_follows_rapidocr():
    assert dbnet_handler.input_size(172, 448) == (736, 1920)  # text.png: short side up to 736
    assert dbnet_handler.input_size(1080, 810) == (1088, 800)  # bus.jpg: kept, rounded to 32
    assert dbnet_handler.input_size(4000, 6000) == (1344, 1984)  # the long side is brought to about 2000
    assert dbnet_handler.input_size(10, 5000) == (32, 1984)  # ...even when the short side is then under 736


@pytest.mark.parametrize("path, fewest, most", [(TEXT, 6, 14), (PAGE, 6, 9), (BUS, 4, 14)],
                         ids=["text", "page", "bus"])
def test_dbnet_regions_on_real_images(dbnet_items, path, fewest, most):
    items = dbnet_items[path]
    assert fewest <= len(items) <= most
    assert_text_items(items, DBNET_FUNCTION, Image.open(path).size, min_confidence=0.5)


def test_dbnet_regions_are_where_the_text_is(dbnet_items):
    # page.png: the title is one wide region at the top; every region spans a line, not a word.
    page = sorted(dbnet_items[PAGE], key=lambda item: polygon_bounds(item)[1])
    x0, y0, x1, y1 = polygon_bounds(page[0])
    assert y1 < 40 and x1 - x0 > 250
    assert sum(polygon_bounds(item)[2] - polygon_bounds(item)[0] > 150 for item in page) >= 6
    # bus.jpg: a region on "cero emisiones".
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in map(polygon_bounds, dbnet_items[BUS])]
    left, top, right, bottom = BUS_LETTERING
    assert any(left <= x <= right and top <= y <= bottom for x, y in centres)


def test_dbnet_threshold_is_the_box_score_and_zero_is_honoured(dbnet, dbnet_items):
    default = dbnet_items[BUS]
    everything = post(dbnet, image=b64_file(BUS), threshold=0)
    strict = post(dbnet, image=b64_file(BUS), threshold=0.9)
    assert len(everything) > len(default) >= len(strict)
    assert all(float(item["confidence"]) >= 0.9 for item in strict)
    assert_text_items(everything, DBNET_FUNCTION, Image.open(BUS).size)


def assert_same_regions(items, expected):
    assert len(items) == len(expected)
    for item, other in zip(items, expected):
        np.testing.assert_allclose(item["points"], other["points"], atol=1)


def test_dbnet_batch_of_two_sizes_matches_single_calls(dbnet, dbnet_items):
    text, bus = post(dbnet, images=[b64_file(TEXT), b64_file(BUS)])
    assert_same_regions(text, dbnet_items[TEXT])
    assert_same_regions(bus, dbnet_items[BUS])


def test_dbnet_grey_and_rgba_frames(dbnet, dbnet_items):
    bus = Image.open(BUS)
    grey = post(dbnet, image=encoded(bus.convert("L")))
    assert abs(len(grey) - len(dbnet_items[BUS])) <= 3
    assert_text_items(grey, DBNET_FUNCTION, bus.size, min_confidence=0.5)
    # page.png is grey; with an alpha channel added it must come out the same.
    page = Image.open(PAGE).convert("RGBA")
    assert_same_regions(post(dbnet, image=encoded(page)), dbnet_items[PAGE])


@pytest.mark.parametrize("body, message", [
    ({"image": "%%% not base64 %%%"}, "'image' is not valid base64"),
    ({"image": base64.b64encode(b"not an image").decode()}, "'image' is not an image file"),
    ({"images": "not a list"}, "'images' must be a non-empty list"),
    ({"threshold": 1.5}, "'threshold' must be between 0 and 1"),
    ({"threshold": "high"}, "'threshold' must be a number between 0 and 1"),
])
def test_dbnet_bad_input_is_400(dbnet, body, message):
    reply = dbnet.http.post("/", json={"image": b64_file(PAGE), **body})
    assert reply.status_code == 400 and reply.text.startswith(message) and "\n" not in reply.text


# --- PixelLink decoder on hand-built logits ---------------------------------------------------------

MAP_HEIGHT, MAP_WIDTH = 192, 320
IMAGE_SIZE = (1280, 768)  # 4 image pixels per map pixel


def logit(probability):
    """The logit whose (0, logit) softmax gives ``probability``."""
    return np.log(probability / (1 - probability))


def pixel_link_logits(text_score: np.ndarray, link_score: np.ndarray | float = 0.999):
    """NCHW outputs whose softmax gives ``text_score`` [H, W] and ``link_score`` [H, W, 8] (or one value)."""
    link_score = np.broadcast_to(link_score, (MAP_HEIGHT, MAP_WIDTH, 8))
    segm = np.zeros((1, 2, MAP_HEIGHT, MAP_WIDTH), np.float32)
    segm[0, 1] = logit(text_score)
    link_pairs = np.zeros((MAP_HEIGHT, MAP_WIDTH, 8, 2), np.float32)
    link_pairs[..., 1] = logit(link_score)
    return segm, link_pairs.reshape(MAP_HEIGHT, MAP_WIDTH, 16).transpose(2, 0, 1)[np.newaxis]


def text_map(*regions):
    """A text score map: 0.99 inside each (row0, row1, col0, col1) map region, 0.01 elsewhere."""
    scores = np.full((MAP_HEIGHT, MAP_WIDTH), 0.01)
    for row0, row1, col0, col1 in regions:
        scores[row0:row1, col0:col1] = 0.99
    return scores


def decode(text_score, link_score=0.999, pixel_threshold=0.8, link_threshold=0.8, image_size=IMAGE_SIZE):
    segm, links = pixel_link_logits(text_score, link_score)
    return pixel_link.decode_pixel_link(segm, links, image_size, pixel_threshold, link_threshold)


def mask_of(instance, image_size=IMAGE_SIZE):
    """The instance's crop placed in an image-sized array."""
    width, height = image_size
    mask = np.zeros((height, width), bool)
    x, y = instance.origin
    mask[y:y + instance.crop.shape[0], x:x + instance.crop.shape[1]] = instance.crop
    return mask


def polygon_of(instance):
    """Bounds (x0, y0, x1, y1) of a decoded instance's rectangle."""
    return (*instance.corners.min(axis=0), *instance.corners.max(axis=0))


def test_two_separate_regions_are_two_instances_with_their_own_boxes_and_masks():
    first, second = decode(text_map((10, 20, 20, 60), (50, 70, 100, 200)))
    # Map rows 10..19, columns 20..59 are image rows 40..79, columns 80..239; the rectangle joins
    # the outer pixel centres, as OMZ's and CVAT's (contour, then cv2.minAreaRect) do.
    np.testing.assert_allclose(first.corners, [[80, 40], [239, 40], [239, 79], [80, 79]], atol=0.01)
    np.testing.assert_allclose(second.corners, [[400, 200], [799, 200], [799, 279], [400, 279]], atol=0.01)
    expected_first = np.zeros((768, 1280), bool)
    expected_first[40:80, 80:240] = True
    np.testing.assert_array_equal(mask_of(first), expected_first)  # its own pixels, not all the text
    assert mask_of(second).sum() == 80 * 400 and not (mask_of(first) & mask_of(second)).any()
    assert first.score == pytest.approx(0.99)


def test_touching_regions_split_or_join_by_their_links():
    text = text_map((10, 20, 20, 80))
    # Links between column 49 and column 50 are negative in both directions: two instances.
    links = np.full((MAP_HEIGHT, MAP_WIDTH, 8), 0.999)
    rightward = [k for k, (dx, _) in enumerate(pixel_link.NEIGHBOURS) if dx == 1]
    leftward = [k for k, (dx, _) in enumerate(pixel_link.NEIGHBOURS) if dx == -1]
    links[:, 49, rightward] = 0.01
    links[:, 50, leftward] = 0.01
    left, right = decode(text, links)
    assert polygon_of(left)[2] < 200 <= polygon_of(right)[0]
    assert not (mask_of(left) & mask_of(right)).any() and (mask_of(left) | mask_of(right)).sum() == 40 * 240
    # One positive direction is enough to join a pair, as in OMZ's union-find: one instance.
    links[:, 49, rightward] = 0.999
    (joined,) = decode(text, links)
    np.testing.assert_allclose(joined.corners, [[80, 40], [319, 40], [319, 79], [80, 79]], atol=0.01)


def test_link_threshold_decides_what_joins():
    text = text_map((10, 20, 20, 80))
    links = np.full((MAP_HEIGHT, MAP_WIDTH, 8), 0.999)
    links[:, 49:51, :] = 0.85  # every link out of columns 49 and 50 is weaker
    assert len(decode(text, links, link_threshold=0.8)) == 1
    # At 0.9 nothing links column 49 to column 50; each still joins its other side, whose links into it are strong.
    left, right = decode(text, links, link_threshold=0.9)
    assert polygon_of(left)[2] == pytest.approx(199) and polygon_of(right)[0] == pytest.approx(200)


def test_size_floor_drops_thin_and_small_components():
    # 2 map rows = 8 image pixels high (under 10); 3 x 6 map pixels = 12 x 24 image pixels,
    # a rectangle of 11 x 23 = 253 between pixel centres (under 300); 4 x 8 = 15 x 31 is kept.
    instances = decode(text_map((10, 12, 20, 120), (40, 43, 20, 26), (80, 84, 20, 28)))
    (kept,) = instances
    np.testing.assert_allclose(polygon_of(kept), [80, 320, 111, 335], atol=0.01)


def test_pixel_threshold_decides_what_counts():
    scores = text_map((10, 20, 20, 60), (50, 70, 100, 200))
    scores[50:70, 100:200] = 0.85
    assert len(decode(scores, pixel_threshold=0.8)) == 2
    (strong,) = decode(scores, pixel_threshold=0.9)
    assert polygon_of(strong)[1] == pytest.approx(40)
    assert len(decode(scores, pixel_threshold=0.0)) == 1  # everything is text: one instance, the frame
    (weak, _) = sorted(decode(scores, pixel_threshold=0.8), key=lambda i: i.score)
    assert weak.score == pytest.approx(0.85)  # the confidence is the component's mean score


def test_nhwc_outputs_decode_the_same():
    segm, links = pixel_link_logits(text_map((10, 20, 20, 60), (50, 70, 100, 200)))
    nchw = pixel_link.decode_pixel_link(segm, links, IMAGE_SIZE, 0.8, 0.8)
    nhwc = pixel_link.decode_pixel_link(segm.transpose(0, 2, 3, 1), links.transpose(0, 2, 3, 1), IMAGE_SIZE, 0.8, 0.8)
    assert len(nchw) == len(nhwc) == 2
    for a, b in zip(nchw, nhwc):
        np.testing.assert_array_equal(a.corners, b.corners)
        np.testing.assert_array_equal(mask_of(a), mask_of(b))


def test_frames_of_other_sizes_scale_boxes_and_masks():
    # A frame half the map's size shows every other map pixel: a one-pixel component at an odd
    # row and column has no image pixel and is skipped.
    text = text_map((10, 50, 20, 100), (101, 102, 301, 302))
    (instance,) = decode(text, image_size=(160, 96))
    np.testing.assert_allclose(polygon_of(instance), [10, 5, 49, 24], atol=0.01)
    expected = np.zeros((96, 160), bool)
    expected[5:25, 10:50] = True
    np.testing.assert_array_equal(mask_of(instance, (160, 96)), expected)
    # A non-4:3 frame: x and y scale differently.
    (instance,) = decode(text_map((10, 20, 20, 60)), image_size=(640, 960))
    np.testing.assert_allclose(polygon_of(instance), [40, 50, 119, 99], atol=0.01)
    expected = np.zeros((960, 640), bool)
    expected[50:100, 40:120] = True
    np.testing.assert_array_equal(mask_of(instance, (640, 960)), expected)


def test_rotated_component_corners_are_tl_tr_br_bl():
    rows, cols = np.mgrid[:MAP_HEIGHT, :MAP_WIDTH]
    diagonal = (np.abs((rows - 96) - (cols - 160)) <= 3) & (np.abs((rows - 96) + (cols - 160)) <= 40)
    (instance,) = decode(np.where(diagonal, 0.99, 0.01))
    corners = instance.corners
    assert len({tuple(c) for c in corners.round(2)}) == 4
    # Clockwise on screen (y down): the signed area is positive.
    x, y = corners[:, 0], corners[:, 1]
    assert np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)) > 0
    assert np.argmin(corners.sum(axis=1)) == 0


# --- text-detection-0004 served: on a stand-in IR, and without weights -----------------------------


def build_stand_in_ir(directory):
    """An IR with text-detection-0004's documented signature whose outputs are known functions of
    the input: text logit (blue - 128) / 8 on 4x4 blocks of the first (BGR: blue) input channel, and
    every link positive (softmax 0.9997). So blue areas are text, red ones are not."""
    image = ops.parameter([1, 3, 768, 1280], np.float32, name="input")
    pooled = ops.avg_pool(image, [4, 4], [0, 0], [0, 0], [4, 4], exclude_pad=True)
    segm_weights = np.zeros((2, 3, 1, 1), np.float32)
    segm_weights[1, 0] = 1 / 8
    segm = ops.add(ops.convolution(pooled, segm_weights, [1, 1], [0, 0], [0, 0], [1, 1]),
                   np.array([0, -16], np.float32).reshape(1, 2, 1, 1))
    links = ops.add(ops.convolution(pooled, np.zeros((16, 3, 1, 1), np.float32), [1, 1], [0, 0], [0, 0], [1, 1]),
                    np.array([0, 8] * 8, np.float32).reshape(1, 16, 1, 1))
    segm.output(0).get_tensor().set_names({"model/segm_logits/add"})
    links.output(0).get_tensor().set_names({"model/link_logits_/add"})
    ov.save_model(ov.Model([links, segm], [image], "text-detection-0004-stand-in"),
                  directory / "text-detection-0004.xml", compress_to_fp16=False)
    return directory


# On a 640x480 frame: strong blue, strong red, and a weaker blue whose text score is about 0.82.
STRONG_BLUE, RED, WEAK_BLUE = (64, 48, 256, 96), (320, 48, 512, 96), (64, 200, 256, 264)


@pytest.fixture(scope="module")
def pixel_link_stand_in(tmp_path_factory):
    weights = build_stand_in_ir(tmp_path_factory.mktemp("text-detection-0004"))
    with serve_function(PIXEL_LINK_FUNCTION, env={"TEXT_DETECTION_MODEL_PATH": str(weights)}) as running:
        yield running


def three_rectangles() -> Image.Image:
    pixels = np.zeros((480, 640, 3), np.uint8)
    for (x0, y0, x1, y1), colour in [(STRONG_BLUE, (0, 0, 255)), (RED, (255, 0, 0)), (WEAK_BLUE, (0, 0, 140))]:
        pixels[y0:y1, x0:x1] = colour
    return Image.fromarray(pixels)



def test_served_pixel_link_feeds_bgr_and_emits_own_masks(pixel_link_stand_in):
    frame = three_rectangles()
    items = post(pixel_link_stand_in, image=encoded(frame))
    # Blue is found and red is not: the frame reached the network as BGR (CVAT feeds RGB, §D17).
    assert len(items) == 2
    assert_text_items(items, PIXEL_LINK_FUNCTION, frame.size, min_confidence=0.8)
    strong, weak = sorted(items, key=lambda item: polygon_bounds(item)[1])
    assert box_iou(polygon_bounds(strong), STRONG_BLUE) > 0.8 and box_iou(polygon_bounds(weak), WEAK_BLUE) > 0.8
    assert float(strong["confidence"]) > 0.99 and 0.8 <= float(weak["confidence"]) < 0.9


def test_served_pixel_link_thresholds(pixel_link_stand_in):
    image = encoded(three_rectangles())
    (strong,) = post(pixel_link_stand_in, image=image, threshold=0.9)  # threshold is the pixel threshold
    assert box_iou(polygon_bounds(strong), STRONG_BLUE) > 0.8
    assert len(post(pixel_link_stand_in, image=image, threshold=0.9, pixel_threshold=0.8)) == 2  # unless given
    assert post(pixel_link_stand_in, image=image, link_threshold=1.0) == []  # no links: single pixels, too small
    (everything,) = post(pixel_link_stand_in, image=image, threshold=0)  # 0 is 0: every pixel is text
    assert polygon_bounds(everything) == (0, 0, 639, 479)
    batch = post(pixel_link_stand_in, images=[image, encoded(Image.new("RGB", (300, 200)))])
    assert len(batch[0]) == 2 and batch[1] == []


@pytest.mark.parametrize("body, message", [
    ({"pixel_threshold": 1.5}, "'pixel_threshold' must be between 0 and 1"),
    ({"link_threshold": "high"}, "'link_threshold' must be a number between 0 and 1"),
    ({"link_threshold": True}, "'link_threshold' must be a number between 0 and 1"),
    ({"threshold": -0.1}, "'threshold' must be between 0 and 1"),
    ({"image": "%%%"}, "'image' is not valid base64"),
])
def test_served_pixel_link_bad_input_is_400(pixel_link_stand_in, body, message):
    reply = pixel_link_stand_in.http.post("/", json={"image": encoded(Image.new("RGB", (64, 64))), **body})
    assert reply.status_code == 400 and reply.text.startswith(message) and "\n" not in reply.text


def test_pixel_link_without_weights_is_error_with_the_missing_file(tmp_path):
    with serve_function(PIXEL_LINK_FUNCTION, until="error",
                        env={"MODELS_DIR": str(tmp_path), "TEXT_DETECTION_MODEL_PATH": ""}) as running:
        message = running.readiness()["message"]
    assert f"{tmp_path}/text-detection-0004/FP32/text-detection-0004.xml is missing" in message
    assert "python -m serverless.common.model_files download text-detection-0004" in message
