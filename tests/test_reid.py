"""ReID functions (kind reid): boxes on two frames linked by the cosine distance between their
crops' embeddings, under the rules of serverless/common/reid.py.
- opencv-reid-colour-histogram (ours, no weights) on a real photo seen by a panning camera: the
  matching rules in process, then the function served over HTTP;
- CVAT's person reidentification (person-reidentification-retail-0277), whose official IR is out of
  reach here: served on a stand-in IR with the documented signature, and served without weights."""

import base64
import io
import json

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import yaml
from PIL import Image

from serverless.common import reid
from serverless.common.metadata import FunctionMeta

from helpers import REPO, TESTDATA, function_module, serve_function

HISTOGRAM_FUNCTION = REPO / "serverless/opencv/reid-colour-histogram/nuclio"
PERSON_REID_FUNCTION = REPO / "serverless/openvino/omz/intel/person-reidentification-retail-0277/nuclio"
histograms = function_module(HISTOGRAM_FUNCTION).ColourHistograms()

BUS = TESTDATA / "ultralytics/bus.jpg"
# The four people on bus.jpg (x1, y1, x2, y2), marked by hand on the image: the man in the cream
# coat, the man in the black coat beside him (their boxes overlap), the person cut by the left
# edge and the one cut by the right edge.
PEOPLE = [(50, 400, 245, 900), (222, 405, 345, 860), (0, 550, 80, 875), (668, 395, 810, 880)]
# Two 760x560 JPEG frames of a camera panning over the photo: the second window is 12 px left of and
# 5 px above the first, so whatever is in full view moves 12 px right and 5 px down, 13 px. The two
# people cut by the frame's edges move less: their boxes are clipped to the frame.
FRAME_SIZE = (760, 560)
ORIGIN0, ORIGIN1 = (20, 360), (8, 355)
PAN = 13.0
# boxes1 lists the people in this order, so person i of boxes0 is boxes1[EXPECTED[i]].
ORDER = [2, 0, 3, 1]
EXPECTED = [ORDER.index(person) for person in range(len(PEOPLE))]


def encoded(image: Image.Image, format: str = "PNG", **options) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return base64.b64encode(buffer.getvalue()).decode()


def shape(points, label_id: int = 1, frame: int = 0) -> dict:
    """A CVAT rectangle as the dispatcher sends it; only points and label_id count."""
    return {"type": "rectangle", "frame": frame, "label_id": label_id, "points": [float(p) for p in points],
            "occluded": False, "outside": False, "z_order": 0, "rotation": 0, "attributes": [], "source": "manual"}


def people_in_view(origin: tuple[int, int], frame: int) -> list[dict]:
    x, y = origin
    width, height = FRAME_SIZE
    return [shape((max(x1 - x, 0), max(y1 - y, 0), min(x2 - x, width), min(y2 - y, height)), frame=frame)
            for x1, y1, x2, y2 in PEOPLE]


@pytest.fixture(scope="module")
def pan() -> dict:
    """The request body for the two frames of the pan, boxes1 in ``ORDER``."""
    photo = Image.open(BUS).convert("RGB")
    frames = [encoded(photo.crop((x, y, x + FRAME_SIZE[0], y + FRAME_SIZE[1])), "JPEG", quality=90)
              for x, y in (ORIGIN0, ORIGIN1)]
    boxes1 = people_in_view(ORIGIN1, 1)
    return {"image0": frames[0], "image1": frames[1], "boxes0": people_in_view(ORIGIN0, 0),
            "boxes1": [boxes1[person] for person in ORDER]}


def link(body: dict, embed=histograms.embed) -> list[int]:
    return reid.match(reid.read_request(body), embed)


def nothing_to_embed(crops):
    raise AssertionError(f"embed was called with {len(crops)} crops")


@pytest.mark.parametrize("folder, function_id, name, description", [
    (PERSON_REID_FUNCTION, "openvino-omz-intel-person-reidentification-retail-0277", "Person reidentification",
     "Person reidentification model for a general scenario"),
    (HISTOGRAM_FUNCTION, "opencv-reid-colour-histogram", "ReID by colour histogram",
     "Re-identification by colour histograms (HSV, per horizontal stripe), no learned weights needed"),
], ids=["person-reid", "colour-histogram"])
def test_function_files_declare_reid_functions(folder, function_id, name, description):
    meta = FunctionMeta.from_nuclio(yaml.safe_load((folder / "function.yaml").read_text()))
    assert (meta.id, meta.kind, meta.name, meta.labels) == (function_id, "reid", name, ())
    assert meta.description == description


# --- the matching rules, in process with the colour-histogram embedding ------------------------------


def test_each_person_is_linked_to_its_panned_self(pan):
    assert link(pan) == EXPECTED
    # Without a distance gate every person is a candidate for every other: appearance alone decides.
    assert link({**pan, "max_distance": 100000}) == EXPECTED


def test_the_same_person_is_much_closer_than_anyone_else(pan):
    request = reid.read_request(pan)

    def embeddings(image, boxes):
        return histograms.embed([image[y1:y2, x1:x2] for x1, y1, x2, y2 in reid.crop_bounds(boxes.points, image)])

    first, second = embeddings(request.image0, request.boxes0), embeddings(request.image1, request.boxes1)
    costs = np.array([[reid.cosine_distances(first[i:i + 1], second[j:j + 1])[0] for j in range(len(second))]
                      for i in range(len(first))])
    same = costs[np.arange(len(PEOPLE)), EXPECTED]
    others = np.where(np.arange(len(PEOPLE))[None, :] == np.array(EXPECTED)[:, None], np.inf, costs)
    # Measured: 0.001-0.011 for the same person, 0.126 or more for anyone else.
    assert same.max() < 0.05 and others.min() > 0.1


def test_boxes_of_different_labels_never_match(pan):
    # boxes1[0] (the person at the left edge) gets another label: nothing else is near enough to take it.
    boxes1 = [dict(box, label_id=2) if index == 0 else box for index, box in enumerate(pan["boxes1"])]
    assert link({**pan, "boxes1": boxes1}) == [1, 3, -1, 2]
    boxes0 = [dict(box, label_id=2) for box in pan["boxes0"]]
    assert link({**pan, "boxes0": boxes0, "max_distance": 100000}, nothing_to_embed) == [-1] * 4


def test_max_distance_bounds_how_far_a_box_centre_moves(pan):
    assert link({**pan, "max_distance": PAN}) == EXPECTED
    # Only the two people at the edges moved less than the pan.
    assert link({**pan, "max_distance": PAN - 0.01}) == [-1, -1, 0, 2]
    assert link({**pan, "max_distance": 0}, nothing_to_embed) == [-1] * 4  # 0 is 0, not CVAT's default 50


def test_threshold_is_the_largest_cosine_distance_that_links(pan):
    assert link({**pan, "threshold": 0}) == [-1] * 4  # a moving camera's JPEG frames are never identical
    unchanged = {**pan, "image1": pan["image0"], "boxes1": pan["boxes0"]}
    assert link({**unchanged, "threshold": 0}) == [0, 1, 2, 3]  # identical crops are exactly 0 apart
    # The man in the black coat leaves; with no distance gate, the default threshold (0.5) links him
    # to someone else (another person is 0.2 away), a strict one leaves him unlinked.
    leaves = {**pan, "boxes0": [pan["boxes0"][1]], "max_distance": 100000,
              "boxes1": [box for box, person in zip(pan["boxes1"], ORDER) if person != 1]}
    assert link(leaves) != [-1]
    assert link({**leaves, "threshold": 0.1}) == [-1]


def test_empty_box_lists_link_nothing_and_embed_nothing(pan):
    assert link({**pan, "boxes0": []}, nothing_to_embed) == []
    assert link({**pan, "boxes1": []}, nothing_to_embed) == [-1] * 4
    assert link({**pan, "boxes0": [], "boxes1": []}, nothing_to_embed) == []


def test_a_box_without_pixels_never_matches(pan):
    width, _ = FRAME_SIZE
    flat = shape((300, 100, 300, 200))  # no width, at the same place in both frames
    outside = shape((width + 10, 100, width + 60, 200))  # right of the frame: nothing left after clipping
    thin = shape((400.2, 100, 400.9, 200))  # under a pixel wide: floored to x1 = x2 = 400
    body = {**pan, "boxes0": [flat, outside, thin, *pan["boxes0"]], "boxes1": [*pan["boxes1"], flat, outside, thin]}
    # An empty crop would reach the embedding and fail there; the real boxes still find each other.
    assert link(body) == [-1, -1, -1, *EXPECTED]


def test_cosine_distance_is_exact_for_identical_embeddings_and_one_for_zero_vectors():
    vector = np.array([[0.1, 0.7, 0.3]])
    assert reid.cosine_distances(vector, vector.copy())[0] == 0.0  # 1 - dot gives 2.2e-16 here
    assert reid.cosine_distances(vector, 3 * vector)[0] == pytest.approx(0, abs=1e-12)
    assert reid.cosine_distances(vector, -vector)[0] == pytest.approx(2)
    np.testing.assert_allclose(reid.cosine_distances(np.array([[1.0, 0], [0, 0], [0, 0]]),
                                                     np.array([[0, 2.0], [1, 1], [0, 0]])), [1, 1, 1])


# --- the colour-histogram function, served -----------------------------------------------------------


@pytest.fixture(scope="module")
def histogram_function():
    with serve_function(HISTOGRAM_FUNCTION) as running:
        yield running


def test_served_histogram_function_links_the_panned_people(histogram_function, pan):
    reply = histogram_function.http.post("/", json=pan)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == EXPECTED


SMALL = encoded(Image.new("RGB", (32, 32), (200, 30, 30)))
BOX = shape((4, 4, 20, 20))


@pytest.mark.parametrize("changes, message", [
    ({"image0": "%%% not base64 %%%"}, "'image0' is not valid base64"),
    ({"image1": base64.b64encode(b"not an image").decode()}, "'image1' is not an image file"),
    ({"image1": None}, "'image1' must be a non-empty base64 string"),
    ({"boxes0": BOX}, "'boxes0' must be a list of shapes with 'points' and 'label_id', got dict"),
    ({"boxes1": None}, "'boxes1' must be a list of shapes"),
    ({"boxes0": [[4, 4, 20, 20]]}, "'boxes0[0]' must be a shape object"),
    ({"boxes0": [dict(BOX, points=[4, 4, 20])]}, "'boxes0[0].points' must be [x1, y1, x2, y2], 4 finite numbers"),
    ({"boxes1": [BOX, dict(BOX, points=[4, 4, "20", 20])]}, "'boxes1[1].points' must be [x1, y1, x2, y2]"),
    ({"boxes0": [dict(BOX, points=[True, 4, 20, 20])]}, "'boxes0[0].points' must be [x1, y1, x2, y2]"),
    ({"boxes0": [dict(BOX, points=[4, 4, float("nan"), 20])]}, "'boxes0[0].points' must be [x1, y1, x2, y2]"),
    ({"boxes0": [dict(BOX, points=[20, 4, 4, 20])]}, "'boxes0[0].points' [20, 4, 4, 20] has x2 < x1 or y2 < y1"),
    ({"boxes1": [dict(BOX, points=[4, 20, 20, 4])]}, "'boxes1[0].points' [4, 20, 20, 4] has x2 < x1 or y2 < y1"),
    ({"boxes0": [{"points": [4, 4, 20, 20]}]}, "'boxes0[0].label_id' must be an integer, got None"),
    ({"boxes1": [dict(BOX, label_id="1")]}, "'boxes1[0].label_id' must be an integer, got '1'"),
    ({"boxes1": [dict(BOX, label_id=1.5)]}, "'boxes1[0].label_id' must be an integer"),
    ({"boxes1": [dict(BOX, label_id=True)]}, "'boxes1[0].label_id' must be an integer"),
    ({"threshold": 2.5}, "'threshold' must be between 0 and 2 (a cosine distance), got 2.5"),
    ({"threshold": -0.1}, "'threshold' must be between 0 and 2"),
    ({"threshold": "strict"}, "'threshold' must be a number (a cosine distance), got 'strict'"),
    ({"threshold": float("inf")}, "'threshold' must be a number"),
    ({"max_distance": -1}, "'max_distance' must be at least 0 (pixels between box centres), got -1"),
    ({"max_distance": "far"}, "'max_distance' must be a number (pixels between box centres)"),
    ({"max_distance": False}, "'max_distance' must be a number"),
])
def test_bad_input_is_400_naming_the_field(histogram_function, changes, message):
    body = {"image0": SMALL, "image1": SMALL, "boxes0": [BOX], "boxes1": [BOX], **changes}
    # Sent as text: NaN and Infinity are not JSON, yet Python's parser (and so a handler) accepts them.
    reply = histogram_function.http.post("/", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.text.startswith(message) and "\n" not in reply.text


def test_a_body_that_is_not_an_object_is_400(histogram_function):
    reply = histogram_function.http.post("/", json=[SMALL, SMALL])
    assert reply.status_code == 400 and reply.text.startswith("request body must be a JSON object")


# --- person-reidentification-retail-0277 served: on a stand-in IR, and without weights ------------------


def build_stand_in_ir(directory):
    """An IR with person-reidentification-retail-0277's documented signature (input ``data``
    [1, 3, 256, 128], output ``reid_embedding`` [1, 256]) whose embedding is a known function of its
    input: entries 0..3 are the means of input channel 0 (blue, fed BGR) over the four 64-row bands
    of the input, top to bottom; the other 252 entries are 0."""
    data = ops.parameter([1, 3, 256, 128], np.float32, name="data")
    bands = ops.avg_pool(data, [64, 128], [0, 0], [0, 0], [64, 128], exclude_pad=True)  # [1, 3, 4, 1]
    select = np.zeros((12, 256), np.float32)
    select[np.arange(4), np.arange(4)] = 1  # channel 0's four bands come first once flattened
    embedding = ops.matmul(ops.reshape(bands, np.array([1, 12], np.int64), False), select, False, False)
    embedding.output(0).get_tensor().set_names({"reid_embedding"})
    ov.save_model(ov.Model([embedding], [data], "person-reidentification-retail-0277-stand-in"),
                  directory / "person-reidentification-retail-0277.xml", compress_to_fp16=False)
    return directory


@pytest.fixture(scope="module")
def person_reid_stand_in(tmp_path_factory):
    weights = build_stand_in_ir(tmp_path_factory.mktemp("person-reidentification-retail-0277"))
    with serve_function(PERSON_REID_FUNCTION, env={"REID_MODEL_PATH": str(weights)}) as running:
        yield running


def stripes(width: int, height: int, blue: tuple, red: tuple) -> np.ndarray:
    """An RGB crop of four horizontal stripes of equal height: stripe k is (red[k], 0, blue[k])."""
    crop = np.zeros((height, width, 3), np.uint8)
    for k in range(4):
        crop[k * height // 4:(k + 1) * height // 4] = (red[k], 0, blue[k])
    return crop


# Crops by stripe, top to bottom: blue (what the stand-in reads when fed BGR) and red (what it would
# read if fed RGB). X is wide (256 x 64); the others have the input's 1:2 shape (128 x 256).
#         blue                 red
#   X    40  40 200 200      200 200  40  40
#   W   200  40  40 200      200  40  40 200
#   Y    40  40 200 200       40  40 200 200
#   Z1    0  40 200   0      200 200  40  40
#   Z2  120 120 120 120      200 200  40  40
# Frame 0 holds X and W; frame 1 holds Y, Z1, Z2 and W again; one label, no distance gate.
# BGR, plain resize: X's bands are its stripes, (1, 1, 5, 5) as Y's; cost X-Y about 1e-5 (the resize
# blends two rows at the middle edge), X-Z1 0.29, X-Z2 0.17; W-W 0 exactly -> [0, 3].
# RGB: X reads (5, 5, 1, 1), as Z1 and Z2 (0), and 0.61 from Y -> [1 or 2, 3].
# A letterbox puts X (scaled to 128 x 32) in the middle rows with padding p above and below: bands
# (p, 0.75p + 10, 0.75p + 50, p), closest to Z1 for small p and to Z2 otherwise -> [1 or 2, 3] for
# every p from 0 to 255.
CROPS0 = {"X": stripes(256, 64, (40, 40, 200, 200), (200, 200, 40, 40)),
          "W": stripes(128, 256, (200, 40, 40, 200), (200, 40, 40, 200))}
CROPS1 = {"Y": stripes(128, 256, (40, 40, 200, 200), (40, 40, 200, 200)),
          "Z1": stripes(128, 256, (0, 40, 200, 0), (200, 200, 40, 40)),
          "Z2": stripes(128, 256, (120,) * 4, (200, 200, 40, 40)),
          "W": CROPS0["W"]}


def scene(crops: dict) -> tuple[str, list[dict]]:
    """The crops side by side on a grey PNG frame, 10 px apart, and their boxes."""
    width = sum(crop.shape[1] + 10 for crop in crops.values()) + 10
    frame = np.full((280, width, 3), 90, np.uint8)
    boxes, x = [], 10
    for crop in crops.values():
        height, crop_width = crop.shape[:2]
        frame[10:10 + height, x:x + crop_width] = crop
        boxes.append(shape((x, 10, x + crop_width, 10 + height)))
        x += crop_width + 10
    return encoded(Image.fromarray(frame)), boxes


def test_served_person_reid_feeds_plainly_resized_bgr_crops(person_reid_stand_in):
    (image0, boxes0), (image1, boxes1) = scene(CROPS0), scene(CROPS1)
    body = {"image0": image0, "image1": image1, "boxes0": boxes0, "boxes1": boxes1, "max_distance": 100000}
    reply = person_reid_stand_in.http.post("/", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json() == [0, 3]
    # X and Y differ by the resize's blend, W and its copy not at all.
    assert person_reid_stand_in.http.post("/", json={**body, "threshold": 0}).json() == [-1, 3]
    assert person_reid_stand_in.http.post("/", json={**body, "boxes1": []}).json() == [-1, -1]


def test_person_reid_without_weights_is_error_with_the_missing_file(tmp_path):
    with serve_function(PERSON_REID_FUNCTION, until="error",
                        env={"MODELS_DIR": str(tmp_path), "REID_MODEL_PATH": ""}) as running:
        message = running.readiness()["message"]
    name = "person-reidentification-retail-0277"
    assert f"{tmp_path}/{name}/FP32/{name}.xml is missing" in message
    assert f"python -m serverless.common.model_files download {name}" in message
