"""cvat-sdk functions in our product (docs/wire-format.md §7), with the real cvat-sdk from PyPI:
functions written with ``cvat_sdk.auto_annotation`` helpers served by the local runtime and used
through the dispatcher (online calls and task-wide RQ jobs), ``annotate_task`` and the
``auto-annotate`` command against a running API, and our detectors as built-in SDK functions on
real weights."""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

import cvat_sdk.auto_annotation as cvataa
import numpy as np
import pytest
from cvat_sdk.core.helpers import DeferredTqdmProgressReporter
from cvat_sdk.masks import decode_mask, encode_mask
from cvat_sdk.models import AttributeValRequest, SubLabeledShapeRequest
from PIL import Image

from dispatcher.auto_annotation import annotate_task
from dispatcher.client import Client
from serverless.common import sdk
from serverless.common.sdk.interaction import serve_interaction

from helpers import (
    ASTRONAUT,
    ASTRONAUT_FACE,
    REPO,
    TESTDATA,
    TOKEN,
    Stack,
    box_iou,
    copy_function,
    serve_platform,
    wait_until,
)

FUNCTIONS = Path(__file__).with_name("functions")
SHAPES_FILE = FUNCTIONS / "sdk-detector/shapes.py"
COFFEE = TESTDATA / "skimage/coffee.png"  # 600 x 400
PAGE = TESTDATA / "skimage/page.png"
COCO_IMAGES = sorted((TESTDATA / "coco128-val2017/images").glob("*.jpg"))

# The task labels the shapes function matches by name (select values in another order: the SDK
# compares select/radio values sorted).
TASK_LABELS = [
    {"name": "car", "type": "rectangle", "attributes": [
        {"name": "colour", "input_type": "select", "mutable": False, "values": ["blue", "red"]},
        {"name": "count", "input_type": "number", "mutable": False, "values": ["0", "10", "1"]},
        {"name": "parked", "input_type": "checkbox", "mutable": False, "values": ["false"]}]},
    {"name": "blob", "type": "any", "attributes": []},
    {"name": "person", "type": "skeleton",
     "sublabels": [{"name": "head", "type": "points"}, {"name": "foot", "type": "points"}],
     "svg": '<circle r="1.5" cx="50" cy="10" data-type="element node" data-element-id="1" data-node-id="1" '
            'data-label-name="head"></circle>'
            '<circle r="1.5" cx="50" cy="90" data-type="element node" data-element-id="2" data-node-id="2" '
            'data-label-name="foot"></circle>'},
    {"name": "scene", "type": "tag", "attributes": [
        {"name": "weather", "input_type": "radio", "mutable": False, "values": ["sunny", "rainy"]}]},
]


def shapes_function(shift: int = 0):
    return sdk.load_function(file=SHAPES_FILE, parameters={"shift": shift})


def by_name(labels: list[dict]) -> dict:
    """name -> label, sublabels and attributes under "<label>/<name>" too."""
    names = {}
    for label in labels:
        names[label["name"]] = label
        for attribute in label["attributes"]:
            names[f"{label['name']}/{attribute['name']}"] = attribute
        for sublabel in label.get("sublabels", []):
            names[f"{label['name']}/{sublabel['name']}"] = sublabel
    return names


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tree = tmp_path_factory.mktemp("tree")
    for kind in ("detector", "interactor", "tracker"):
        copy_function(FUNCTIONS / f"sdk-{kind}", tree / kind)
    # A function whose spec breaks the SDK's rules: served, it must say why it cannot run.
    broken = copy_function(FUNCTIONS / "sdk-detector", tree / "broken", **{"metadata.name": "sdk-broken"})
    (broken / "shapes.py").write_text(
        "import cvat_sdk.auto_annotation as cvataa\n"
        "class Broken:\n"
        "    @property\n"
        "    def spec(self):\n"
        "        return cvataa.DetectionFunctionSpec(labels=[cvataa.label_spec('a', 0), cvataa.label_spec('b', 0)])\n"
        "def create():\n"
        "    return Broken()\n")
    with serve_platform(tree) as running:
        yield running


@pytest.fixture(scope="module")
def stack(platform, tmp_path_factory):
    running = Stack(platform, tmp_path_factory.mktemp("data"), 8, None)
    yield running
    running.close()


@pytest.fixture
def client(stack):
    with Client(stack.url, TOKEN) as api:
        yield api


def new_task(stack, labels=TASK_LABELS, images=(ASTRONAUT, COFFEE)) -> dict:
    return stack.task(labels, list(images))


def annotations(stack, task_id: int) -> dict:
    return stack.ok("GET", f"/api/tasks/{task_id}/annotations")


# Loading and describing functions

def test_parameters_are_read_as_cvat_cli_reads_them():
    assert sdk.parse_parameter("shift=int:5") == ("shift", 5)
    assert sdk.parse_parameter("t=float:0.25") == ("t", 0.25)
    assert sdk.parse_parameter("name=str:a=b:c") == ("name", "a=b:c")
    assert sdk.parse_parameter("flag=bool:yes") == ("flag", True)
    assert sdk.parse_parameter("flag=bool:false") == ("flag", False)
    for bad, words in [("shift", "NAME=TYPE:VALUE"), ("shift=5", "type is missing"), ("n=int:x", "not a valid int"),
                       ("n=list:1", "unsupported type 'list'"), ("f=bool:maybe", "not a valid bool")]:
        with pytest.raises(ValueError, match=words):
            sdk.parse_parameter(bad)


def test_functions_load_by_module_or_file_with_create_as_a_factory(tmp_path):
    assert shapes_function(3).shift == 3
    module_function = sdk.load_function(module="serverless.sdk_functions.yolo_v3")
    assert sdk.function_kind(module_function) == "detector"
    with pytest.raises(TypeError, match="takes no parameters"):
        sdk.load_function(file=FUNCTIONS / "sdk-interactor/discs.py", parameters={"radius": 3})
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        sdk.load_function(file=SHAPES_FILE, parameters={"nope": 1})
    no_spec = tmp_path / "no_spec.py"
    no_spec.write_text("def detect(context, image):\n    return []\n")
    with pytest.raises(cvataa.BadFunctionError, match="no 'spec' attribute"):
        sdk.load_function(file=no_spec)
    with pytest.raises(FileNotFoundError):
        sdk.load_function(file=tmp_path / "missing.py")


@pytest.mark.parametrize("folder", sorted(FUNCTIONS.glob("sdk-*")), ids=lambda path: path.name)
def test_function_yaml_is_what_the_generator_writes_for_the_function(folder):
    """The committed function.yaml declares exactly the function's spec: its header command, run
    again, writes the same file."""
    text = (folder / "function.yaml").read_text()
    command = shlex.split(text.splitlines()[1].lstrip("#"))
    assert command[:3] == ["python", "-m", "serverless.common.sdk"]
    written = subprocess.run([sys.executable, *command[1:]], cwd=folder, capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert written.stdout == text


SPEC_BREAKS = {
    "label without id": ("[cvataa.label_spec('a', 0), models.PatchedLabelRequest(name='b')]", "label 'b' has no ID"),
    "same label id": ("[cvataa.label_spec('a', 0), cvataa.label_spec('b', 0)]",
                      r"label b has same ID as another label \(0\)"),
    "same attribute id": ("[cvataa.label_spec('a', 0, attributes=[cvataa.text_attribute_spec('x', 1), "
                          "cvataa.text_attribute_spec('y', 1)])]", "attribute 'y' of label 'a' has same ID"),
    "bad attribute values": ("[cvataa.label_spec('a', 0, attributes=[cvataa.number_attribute_spec('n', 0, "
                             "['5', '1', '1'])])]",
                             "attribute 'n' of label 'a' has invalid values"),
    "sublabels on a rectangle": ("[cvataa.label_spec('a', 0, type='rectangle', "
                                 "sublabels=[cvataa.keypoint_spec('k', 0)])]",
                                 r"label 'a' with sublabels has type 'rectangle' \(should be 'skeleton'\)"),
    "same sublabel id": ("[cvataa.skeleton_label_spec('a', 0, "
                         "[cvataa.keypoint_spec('k', 0), cvataa.keypoint_spec('l', 0)])]",
                         "sublabel 'l' of label 'a' has same ID"),
    "sublabel not points": ("[cvataa.skeleton_label_spec('a', 0, "
                            "[models.SublabelRequest(name='k', id=0, type='rectangle')])]",
                            "sublabel 'k' of label 'a' has type 'rectangle'"),
}


@pytest.mark.parametrize("case", SPEC_BREAKS, ids=list(SPEC_BREAKS))
def test_spec_rule_breaks_reach_the_user_as_bad_function_errors(tmp_path, case):
    labels, message = SPEC_BREAKS[case]
    source = tmp_path / "function.py"
    source.write_text("import cvat_sdk.auto_annotation as cvataa\nfrom cvat_sdk import models\n"
                      f"spec = cvataa.DetectionFunctionSpec(labels={labels})\n"
                      "def detect(context, image):\n    return []\n")
    with pytest.raises(cvataa.BadFunctionError, match=message):
        sdk.load_function(file=source)


def test_generator_refuses_a_function_that_breaks_the_spec_rules(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import cvat_sdk.auto_annotation as cvataa\n"
                   "spec = cvataa.DetectionFunctionSpec(labels=[cvataa.label_spec('a', 0, type='rectangle',"
                   " sublabels=[cvataa.keypoint_spec('k', 0)])])\n")
    result = subprocess.run([sys.executable, "-m", "serverless.common.sdk", "--function-file", str(bad), "--id", "x"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "label 'a' with sublabels has type 'rectangle' (should be 'skeleton')" in result.stderr


# Served by the runtime, used through the dispatcher

def test_served_detector_declares_the_sdk_spec(stack):
    function = stack.ok("GET", "/api/lambda/functions/sdk-shapes")
    assert function["kind"] == "detector" and function["state"] == "ready"
    labels = {label["name"]: label for label in function["labels_v2"]}
    assert list(labels) == ["car", "blob", "person", "scene"]
    assert labels["car"]["attributes"][0] == {"name": "colour", "input_type": "select", "values": ["red", "blue"]}
    assert [s["name"] for s in labels["person"]["sublabels"]] == ["head", "foot"]
    assert labels["scene"]["type"] == "tag"


def test_served_detector_replies_with_cvat_function_items(platform):
    port = platform.get_json("/api/functions/sdk-shapes")["status"]["httpPort"]
    image = base64.b64encode(COFFEE.read_bytes()).decode()
    import httpx

    items = httpx.post(f"http://127.0.0.1:{port}/", json={"image": image}, timeout=30).json()
    cars, blob, person, scene = items[:2], items[2], items[3], items[4]
    assert cars[0] == {"label": "car", "type": "rectangle", "points": [10.0, 10.0, 50.0, 40.0], "confidence": "0.9000",
                       "attributes": [{"name": "colour", "value": "red"}, {"name": "count", "value": "3"},
                                      {"name": "parked", "value": "true"}]}
    assert cars[1]["points"] == [300.0, 200.0, 320.0, 210.0] and cars[1]["confidence"] == "0.4000"
    # 12 x 6 object pixels at (60, 20): the function mask format is 72 x 255 then the inclusive box.
    assert blob["type"] == "mask" and blob["mask"] == [255] * 72 + [60, 20, 71, 25]
    # Its outline, for CVAT's conv_mask_to_poly.
    assert blob["points"] == [60.0, 20.0, 60.0, 25.0, 71.0, 25.0, 71.0, 20.0]
    assert [(e["label"], e["points"]) for e in person["elements"]] == [("head", [30.0, 50.0]), ("foot", [30.0, 80.0])]
    assert scene == {"label": "scene", "type": "tag", "attributes": [{"name": "weather", "value": "sunny"}]}

    strict = httpx.post(f"http://127.0.0.1:{port}/", json={"image": image, "threshold": 0.5, "conv_mask_to_poly": True},
                        timeout=30).json()
    assert [item["type"] for item in strict] == ["rectangle", "polygon", "skeleton", "tag"]
    bad = httpx.post(f"http://127.0.0.1:{port}/", json={"image": image, "conv_mask_to_poly": "yes"}, timeout=30)
    assert bad.status_code == 400 and "'conv_mask_to_poly' must be true or false" in bad.text


def test_online_call_and_task_wide_job_with_a_served_sdk_function(stack):
    task = new_task(stack, images=(ASTRONAUT, COFFEE, COCO_IMAGES[0]))
    names = by_name(stack.labels(task["id"]))
    reply = stack.ok("POST", "/api/lambda/functions/sdk-shapes",
                     json={"task": task["id"], "frame": 1, "threshold": 0.5, "conv_mask_to_poly": True})
    shapes = {shape["type"]: shape for shape in reply["shapes"]}
    assert set(shapes) == {"rectangle", "polygon", "skeleton"}  # the 0.4 car is below the threshold
    assert shapes["rectangle"]["label_id"] == names["car"]["id"]
    assert {(a["spec_id"], a["value"]) for a in shapes["rectangle"]["attributes"]} == {
        (names["car/colour"]["id"], "red"), (names["car/count"]["id"], "3"), (names["car/parked"]["id"], "true")}
    # The function's own polygon (it was told conv_mask_to_poly), not one made by the server.
    assert shapes["polygon"]["points"] == [60, 20, 71, 20, 71, 25, 60, 25]
    assert [e["label_id"] for e in shapes["skeleton"]["elements"]] == [names["person/head"]["id"],
                                                                        names["person/foot"]["id"]]
    assert reply["tags"][0]["label_id"] == names["scene"]["id"]

    created = stack.ok("POST", "/api/lambda/requests", json={"function": "sdk-shapes", "task": task["id"]})
    assert stack.wait(created["id"])["status"] == "finished"
    stored = annotations(stack, task["id"])
    assert len(stored["tags"]) == 3 and len(stored["shapes"]) == 3 * 4
    masks = [shape for shape in stored["shapes"] if shape["type"] == "mask"]
    assert {tuple(mask["points"]) for mask in masks} == {(0, 72, 60, 20, 71, 25)}  # CVAT RLE of the 12 x 6 block
    assert sorted(shape["score"] for shape in stored["shapes"] if shape["type"] == "rectangle") == [0.4] * 3 + [0.9] * 3


def test_served_function_with_a_broken_spec_says_why(stack):
    function = wait_until(lambda: (lambda f: f if f["state"] == "error" else None)(
        stack.ok("GET", "/api/lambda/functions/sdk-broken")), 30, "sdk-broken to fail")
    assert "label b has same ID as another label (0)" in function["message"]


def test_served_interaction_function_is_a_cvat_interactor(stack):
    function = stack.ok("GET", "/api/lambda/functions/sdk-discs")
    assert (function["kind"], function["version"], function["min_pos_points"], function["min_neg_points"],
            function["startswith_box"], function["startswith_box_optional"]) == ("interactor", 2, 1, 0, False, True)
    task = new_task(stack, labels=[{"name": "thing", "type": "any"}], images=(COFFEE,))
    reply = stack.ok("POST", "/api/lambda/functions/sdk-discs",
                     json={"task": task["id"], "frame": 0, "pos_points": [[100, 100]], "neg_points": [[100, 100]]})
    mask = np.array(reply["mask"])
    assert mask.shape == (400, 600) and set(np.unique(mask)) == {0, 255}
    ys, xs = np.nonzero(mask)
    # A disc of radius 8 around (100, 100) with a hole of radius 4 in its middle.
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (92, 108, 92, 108)
    assert mask[100, 100] == 0 and mask[100, 106] == 255
    in_box = stack.ok("POST", "/api/lambda/functions/sdk-discs", json={
        "task": task["id"], "frame": 0, "pos_points": [[100, 100]], "neg_points": [],
        "obj_bbox": [[100, 95], [120, 120]]})
    ys, xs = np.nonzero(np.array(in_box["mask"]))
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (100, 108, 95, 108)
    too_few = stack.error("POST", "/api/lambda/functions/sdk-discs", 400,
                          json={"task": task["id"], "frame": 0, "pos_points": [], "neg_points": []})
    assert "'pos_points' needs at least 1 point" in too_few


def test_served_interaction_function_answers_cvats_shapes_reply(platform):
    import httpx

    port = platform.get_json("/api/functions/sdk-discs")["status"]["httpPort"]
    body = {"image": base64.b64encode(COFFEE.read_bytes()).decode(), "pos_points": [[100, 100]], "neg_points": []}
    full = np.array(httpx.post(f"http://127.0.0.1:{port}/", json=body, timeout=30).json()["mask"])
    # With CVAT 2.60+'s text prompts, which the function is not given (the SDK has no place for them).
    reply = httpx.post(f"http://127.0.0.1:{port}/", json={**body, "mask_format": "shapes", "text_prompts": ["a cup"]},
                       timeout=30)
    assert reply.status_code == 200, reply.text
    (shape,) = reply.json()["shapes"]
    assert shape["type"] == "mask"
    np.testing.assert_array_equal(decode_mask(shape["points"], image_width=600, image_height=400), full == 255)
    assert shape["attributes"] == [{"spec_id": 0, "value": "1.0000"}]  # discs.py reports no confidence


def test_interaction_confidence_is_the_shapes_own_weighted_by_their_pixels():
    import nuclio_sdk

    def block(x1, y1, x2, y2, *confidence):
        mask = np.zeros((6, 10), dtype=bool)
        mask[y1:y2, x1:x2] = True
        attributes = [AttributeValRequest(spec_id=cvataa.InteractionResultAttributes.CONFIDENCE, value=value)
                      for value in confidence]
        return cvataa.InteractionResultShape(type="mask", points=encode_mask(mask), attributes=attributes)

    results = []
    function = types.SimpleNamespace(spec=cvataa.InteractionFunctionSpec(min_pos_points=1, min_neg_points=0),
                                     detect=lambda context, image, prompts: results)
    handler = serve_interaction(function)
    buffer = io.BytesIO()
    Image.new("RGB", (10, 6)).save(buffer, "PNG")
    context = nuclio_sdk.Context(logger=nuclio_sdk.Logger(0))
    body = {"image": base64.b64encode(buffer.getvalue()).decode(), "pos_points": [[1, 1]], "mask_format": "shapes"}

    def confidence():
        (shape,) = json.loads(handler(context, nuclio_sdk.Event(body=body)).body)["shapes"]
        return shape["attributes"][0]["value"]

    # 6 pixels at 0.5 and 4 that report nothing (1.0): (6 x 0.5 + 4) / 10.
    results[:] = [block(0, 0, 3, 2, "0.5"), block(5, 3, 9, 4)]
    assert confidence() == "0.7000"
    results[:] = [block(0, 0, 3, 2, "0.25")]
    assert confidence() == "0.2500"
    results[:] = []
    assert json.loads(handler(context, nuclio_sdk.Event(body=body)).body) == {"shapes": []}
    for values, message in [(("high",), "must be a real number between 0 and 1, got 'high'"),
                            (("1.5",), "must be a real number between 0 and 1, got '1.5'"),
                            (("0.5", "0.6"), "has 2 confidence attributes")]:
        results[:] = [block(0, 0, 3, 2, *values)]
        with pytest.raises(cvataa.BadFunctionError, match=message):
            handler(context, nuclio_sdk.Event(body=body))


def test_served_tracking_function_follows_a_moved_object(platform):
    import httpx

    port = platform.get_json("/api/functions/sdk-template-tracker")["status"]["httpPort"]
    url = f"http://127.0.0.1:{port}/"
    first = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    moved = np.roll(first, shift=(7, 12), axis=(0, 1))  # 12 px right, 7 px down

    def b64(pixels: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    face = {"type": "rectangle", "points": [170, 50, 250, 140]}
    started = httpx.post(url, json={"image": b64(first), "shapes": [face], "states": []}, timeout=30).json()
    assert started["shapes"] == [face] and isinstance(started["states"][0], str)
    tracked = httpx.post(url, json={"image": b64(moved), "shapes": [None], "states": started["states"]},
                         timeout=30).json()
    assert tracked["shapes"] == [{"type": "rectangle", "points": [182, 57, 262, 147]}]
    assert tracked["states"] == started["states"]

    unknown = httpx.post(url, json={"image": b64(moved), "shapes": [None], "states": ["forged"]}, timeout=30)
    assert unknown.status_code == 400 and "unknown or expired tracker state" in unknown.text
    polygon = httpx.post(url, json={"image": b64(first), "shapes": [{"type": "polygon", "points": [1, 1, 5, 1, 5, 5]}],
                                    "states": []}, timeout=30)
    assert polygon.status_code == 400 and "must be one of rectangle, got 'polygon'" in polygon.text
    smaller = httpx.post(url, json={"image": b64(first[:100, :100]), "shapes": [None], "states": started["states"]},
                         timeout=30)
    assert smaller.status_code == 400 and "was made on a 512x512 image" in smaller.text


def test_tracking_through_the_dispatcher_with_signed_states(stack, tmp_path):
    moved = tmp_path / "moved.png"
    Image.fromarray(np.roll(np.asarray(Image.open(ASTRONAUT).convert("RGB")), shift=(7, 12), axis=(0, 1))).save(moved)
    task = new_task(stack, labels=[{"name": "face", "type": "rectangle"}], images=(ASTRONAUT, moved))
    function = stack.ok("GET", "/api/lambda/functions/sdk-template-tracker")
    assert (function["kind"], function["supported_shape_types"]) == ("tracker", ["rectangle"])

    path = "/api/lambda/functions/sdk-template-tracker"
    face = {"type": "rectangle", "points": [170, 50, 250, 140]}
    started = stack.ok("POST", path, json={"task": task["id"], "frame": 0, "shapes": [face]})
    assert started["shapes"] == [face]
    tracked = stack.ok("POST", path, json={"task": task["id"], "frame": 1, "states": started["states"]})
    assert tracked["shapes"] == [{"type": "rectangle", "points": [182, 57, 262, 147]}]
    # Older clients and CVAT's own tests start with a bare [x1, y1, x2, y2]: the same rectangle.
    bare = stack.ok("POST", path, json={"task": task["id"], "frame": 0, "shapes": [face["points"]]})
    assert bare["shapes"] == [face] and len(bare["states"]) == 1

    (state,) = started["states"]
    payload, timestamp, signature = state.split(".")
    for bad in ("forged", f"{payload}.{int(timestamp) + 1}.{signature}", f"{payload[:-2]}AA.{timestamp}.{signature}"):
        detail = stack.error("POST", path, 400, json={"task": task["id"], "frame": 1, "states": [bad]})
        assert detail == "states[0]: Invalid or expired tracker state"
    polygon = {"type": "polygon", "points": [1, 1, 5, 1, 5, 5]}
    detail = stack.error("POST", path, 400, json={"task": task["id"], "frame": 0, "shapes": [polygon]})
    assert detail == "shapes[0].type: function sdk-template-tracker tracks rectangle, not 'polygon'"


def test_tracker_states_expire_after_8_hours_and_belong_to_one_function():
    from dispatcher import tracker_states

    token = tracker_states.sign(b"key", "tracker-a", {"template": [1, 2]}, now=1000)
    assert tracker_states.unsign(b"key", "tracker-a", token, "states[0]", now=1000 + 8 * 3600) == {"template": [1, 2]}
    for key, function_id, now in [(b"key", "tracker-a", 1001 + 8 * 3600), (b"other", "tracker-a", 1000),
                                  (b"key", "tracker-b", 1000)]:
        with pytest.raises(tracker_states.InvalidState, match="Invalid or expired tracker state"):
            tracker_states.unsign(key, function_id, token, "states[0]", now=now)


# annotate_task against the dispatcher

def test_annotate_task_writes_what_the_function_found(stack, client):
    task = new_task(stack)
    names = by_name(stack.labels(task["id"]))
    output = io.StringIO()
    annotate_task(client, task["id"], shapes_function(),
                  pbar=DeferredTqdmProgressReporter({"file": output, "mininterval": 0}))
    assert "2/2" in output.getvalue()

    stored = annotations(stack, task["id"])
    assert [(tag["frame"], tag["label_id"], tag["source"]) for tag in stored["tags"]] == [
        (0, names["scene"]["id"], "auto"), (1, names["scene"]["id"], "auto")]
    assert stored["tags"][0]["attributes"] == [{"spec_id": names["scene/weather"]["id"], "value": "sunny"}]
    frame1 = [shape for shape in stored["shapes"] if shape["frame"] == 1]
    assert [shape["type"] for shape in frame1] == ["rectangle", "rectangle", "mask", "skeleton"]
    car, small_car, blob, person = frame1
    assert car["points"] == [10, 10, 50, 40] and car["score"] == 0.9 and car["source"] == "auto"
    assert small_car["points"] == [300, 200, 320, 210]  # image-size dependent: the coffee photo is 600 x 400
    assert blob["points"] == [0, 72, 60, 20, 71, 25]
    assert [(e["label_id"], e["points"], e["occluded"]) for e in person["elements"]] == [
        (names["person/head"]["id"], [30, 50], False), (names["person/foot"]["id"], [30, 80], True)]


def test_threshold_and_polygons_reach_the_function(stack, client):
    task = new_task(stack, images=(COFFEE,))
    annotate_task(client, task["id"], shapes_function(), conf_threshold=0.5, conv_mask_to_poly=True)
    assert [shape["type"] for shape in annotations(stack, task["id"])["shapes"]] == ["rectangle", "polygon", "skeleton"]
    with pytest.raises(ValueError, match="conf_threshold must be None or a number between 0 and 1"):
        annotate_task(client, task["id"], shapes_function(), conf_threshold=1.5)


def test_clear_existing_replaces_and_the_default_adds(stack, client):
    task = new_task(stack, images=(COFFEE,))
    names = by_name(stack.labels(task["id"]))
    manual = {"type": "rectangle", "frame": 0, "label_id": names["car"]["id"], "points": [1, 1, 5, 5],
              "source": "manual"}
    stack.ok("PATCH", f"/api/tasks/{task['id']}/annotations", params={"action": "create"}, json={"shapes": [manual]})
    annotate_task(client, task["id"], shapes_function())
    annotate_task(client, task["id"], shapes_function())
    assert len(annotations(stack, task["id"])["shapes"]) == 1 + 2 * 4
    annotate_task(client, task["id"], shapes_function(), clear_existing=True)
    stored = annotations(stack, task["id"])
    assert len(stored["shapes"]) == 4 and len(stored["tags"]) == 1
    assert all(shape["source"] == "auto" for shape in stored["shapes"])


def test_labels_match_by_name_and_unmatched_ones_fail_or_are_dropped(stack, client):
    labels = [TASK_LABELS[0] | {"attributes": TASK_LABELS[0]["attributes"][:2]}, TASK_LABELS[1], TASK_LABELS[3]]
    task = new_task(stack, labels=labels, images=(COFFEE,))
    with pytest.raises(cvataa.BadFunctionError, match="attribute 'parked' of label 'car' is not in dataset"):
        annotate_task(client, task["id"], shapes_function())
    assert annotations(stack, task["id"])["shapes"] == []

    annotate_task(client, task["id"], shapes_function(), allow_unmatched_labels=True)
    stored = annotations(stack, task["id"])
    assert [shape["type"] for shape in stored["shapes"]] == ["rectangle", "rectangle", "mask"]  # no person skeleton
    assert len(stored["shapes"][0]["attributes"]) == 2  # "parked" dropped

    without_head = [TASK_LABELS[0], TASK_LABELS[1], TASK_LABELS[3],
                    TASK_LABELS[2] | {"sublabels": [{"name": "foot", "type": "points"},
                                                    {"name": "knee", "type": "points"}]}]
    task = new_task(stack, labels=without_head, images=(COFFEE,))
    with pytest.raises(cvataa.BadFunctionError, match="sublabel 'head' of label 'person' is not in dataset"):
        annotate_task(client, task["id"], shapes_function())
    # The head is dropped, and the task's skeleton then has more points than the function gives.
    with pytest.raises(cvataa.BadFunctionError, match=r"skeleton with fewer elements than expected \(1 vs 2\)"):
        annotate_task(client, task["id"], shapes_function(), allow_unmatched_labels=True)


class Rewritten:
    """The shapes function with one of its outputs changed, to break one rule at a time."""

    def __init__(self, change, spec=None):
        self.inner = shapes_function()
        self.spec = spec or self.inner.spec
        self.change = change

    def detect(self, context, image):
        return self.change(self.inner.detect(context, image))


def _set(index, **fields):
    def change(results):
        for key, value in fields.items():
            setattr(results[index], key, value)
        return results
    return change


def _replace(index, new):
    def change(results):
        results[index] = new
        return results
    return change


def _element_label(label_id):
    def change(results):
        results[3].elements[0].label_id = label_id
        return results
    return change


BAD_OUTPUTS = {
    "preset id": (_set(0, id=5), "function output shape with preset id"),
    "preset source": (_set(4, source="manual"), "function output tag with preset source"),
    "frame": (_set(0, frame=3), r"function output shape with unexpected frame number \(3\)"),
    "unknown label": (_set(0, label_id=42), r"function output shape with unknown label ID \(42\)"),
    "unknown attribute": (_set(0, attributes=[AttributeValRequest(spec_id=9, value="x")]),
                          r"function output attribute with unknown ID \(9\)"),
    "same attribute twice": (_set(0, attributes=[AttributeValRequest(spec_id=0, value="red"),
                                                 AttributeValRequest(spec_id=0, value="blue")]),
                             "function output shape with multiple attributes with same ID"),
    "bad attribute value": (_set(0, attributes=[AttributeValRequest(spec_id=1, value="11")]),
                            r"function output attribute value \('11'\) that is unsuitable for its attribute \(1\)"),
    "wrong shape type": (_replace(0, cvataa.polygon(0, [1, 1, 5, 1, 5, 5])),
                         r"function output shape of type 'polygon' \(expected 'rectangle'\)"),
    "tag on a shape label": (_replace(0, cvataa.tag(0)), r"function output tag \(expected shape of type 'rectangle'\)"),
    "element not points": (_replace(3, cvataa.skeleton(2, [
        SubLabeledShapeRequest(type="rectangle", label_id=0, frame=0, points=[1, 1, 2, 2])])),
        r"function output skeleton with element type other than 'points' \(rectangle\)"),
    "unknown sublabel": (_element_label(7), r"function output shape with unknown sublabel ID \(7\)"),
    "same sublabel twice": (_element_label(1), "function output skeleton with multiple elements with same sublabel"),
    "elements on a rectangle": (_set(0, elements=[cvataa.keypoint(0, [1, 1])]),
                                "function output non-skeleton shape with elements"),
    "not an annotation": (_replace(0, {"label_id": 0}), "function output an object of type 'dict'"),
}


@pytest.mark.parametrize("case", BAD_OUTPUTS, ids=list(BAD_OUTPUTS))
def test_each_protocol_break_is_a_bad_function_error_and_nothing_is_written(stack, client, case):
    change, message = BAD_OUTPUTS[case]
    task = new_task(stack, images=(COFFEE,))
    with pytest.raises(cvataa.BadFunctionError, match=message):
        annotate_task(client, task["id"], Rewritten(change))
    assert annotations(stack, task["id"]) == {"version": 0, "tags": [], "shapes": [], "tracks": []}


def test_mask_output_despite_conv_mask_to_poly_is_an_error(stack, client):
    task = new_task(stack, images=(COFFEE,))
    bitmap = np.zeros((400, 600), dtype=bool)
    bitmap[5:9, 5:9] = True
    a_mask = _replace(2, cvataa.mask(1, encode_mask(bitmap)))
    # The blob label is of type mask: under conv_mask_to_poly it is expected as a polygon.
    with pytest.raises(cvataa.BadFunctionError, match=r"function output shape of type 'mask' \(expected 'polygon'\)"):
        annotate_task(client, task["id"], Rewritten(a_mask), conv_mask_to_poly=True)
    # Declared as "any", the label takes the task label's type (any): the mask rule itself speaks.
    labels = list(shapes_function().spec.labels)
    labels[1] = cvataa.label_spec("blob", 1)
    with pytest.raises(cvataa.BadFunctionError, match="function output mask shape despite conv_mask_to_poly=True"):
        annotate_task(client, task["id"], Rewritten(a_mask, cvataa.DetectionFunctionSpec(labels=labels)),
                      conv_mask_to_poly=True)
    assert annotations(stack, task["id"])["shapes"] == []


@pytest.mark.parametrize("task_change, message", [
    ({"input_type": "radio"}, "attribute 'colour' of label 'car' has input type 'select' in the function, but 'radio'"),
    ({"values": ["red", "green"]}, r"attribute 'colour' of label 'car' has values \['red', 'blue'\] in the function, "
                                   r"but \['red', 'green'\] in the dataset"),
])
def test_attributes_must_agree_with_the_task(stack, client, task_change, message):
    car = dict(TASK_LABELS[0])
    car["attributes"] = [car["attributes"][0] | task_change, *car["attributes"][1:]]
    task = new_task(stack, labels=[car, *TASK_LABELS[1:]], images=(COFFEE,))
    with pytest.raises(cvataa.BadFunctionError, match=message):
        annotate_task(client, task["id"], shapes_function())


def test_label_types_must_agree_with_the_task(stack, client):
    task = new_task(stack, labels=[TASK_LABELS[0] | {"type": "polygon"}, *TASK_LABELS[1:]], images=(COFFEE,))
    with pytest.raises(cvataa.BadFunctionError,
                       match="label 'car' has type 'rectangle' in the function, but 'polygon'"):
        annotate_task(client, task["id"], shapes_function())
    # A mask label is expected as a polygon under conv_mask_to_poly; a task mask label then refuses it.
    task = new_task(stack, labels=[TASK_LABELS[0], TASK_LABELS[1] | {"type": "mask"}, *TASK_LABELS[2:]],
                    images=(COFFEE,))
    with pytest.raises(cvataa.BadFunctionError, match="label 'blob' has type 'polygon' in the function, but 'mask'"):
        annotate_task(client, task["id"], shapes_function(), conv_mask_to_poly=True)


# The command line, and the built-in functions on real weights

def auto_annotate(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dispatcher", "auto-annotate", *args, "--api", stack.url],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "API_TOKEN": TOKEN})


def test_cli_runs_a_built_in_yolo_function_with_a_progress_bar(stack):
    images = COCO_IMAGES[:4]
    labels = [{"name": name, "type": "rectangle"} for name in ("person", "car", "tvmonitor", "chair")]
    task = new_task(stack, labels=labels, images=images)
    refused = auto_annotate(stack, str(task["id"]), "--function-module", "serverless.sdk_functions.yolo_v3")
    assert refused.returncode == 1
    assert "the function broke the cvat-sdk protocol: label 'bicycle' is not in dataset" in refused.stderr

    done = auto_annotate(stack, str(task["id"]), "--function-module", "serverless.sdk_functions.yolo_v3",
                         "--allow-unmatched-labels", "--conf-threshold", "0.3")
    assert done.returncode == 0, done.stderr
    assert "4/4" in done.stderr and "100%" in done.stderr  # tqdm's bar
    stored = annotations(stack, task["id"])["shapes"]
    names = {label["id"]: label["name"] for label in stack.labels(task["id"])}
    # The same model through the served function folder gives the same boxes for the matched labels.
    served_function = sdk.load_function(module="serverless.sdk_functions.yolo_v3")
    expected = []
    for frame, path in enumerate(images):
        for shape in served_function.detect(sdk.detection_context(path.name, 0.3, False), Image.open(path)):
            name = served_function.spec.labels[shape.label_id].name
            if name in names.values():
                expected.append((frame, name, [round(v, 2) for v in shape.points]))
    assert expected, "YOLO found none of the task's labels on these photos"
    assert (sorted((s["frame"], names[s["label_id"]], [round(v, 2) for v in s["points"]]) for s in stored)
            == sorted(expected))
    assert all(0.3 <= s["score"] <= 1 for s in stored)


def test_cli_passes_parameters_and_reports_mistakes(stack):
    task = new_task(stack, images=(COFFEE,))
    shifted = auto_annotate(stack, str(task["id"]), "--function-file", str(SHAPES_FILE), "-p", "shift=int:5")
    assert shifted.returncode == 0, shifted.stderr
    assert annotations(stack, task["id"])["shapes"][0]["points"] == [15, 10, 55, 40]

    untyped = auto_annotate(stack, str(task["id"]), "--function-file", str(SHAPES_FILE), "-p", "shift=5")
    assert untyped.returncode == 2 and "the type is missing" in untyped.stderr
    no_create = auto_annotate(stack, str(task["id"]), "--function-file", str(FUNCTIONS / "sdk-interactor/discs.py"),
                              "-p", "r=int:1")
    assert no_create.returncode == 1 and "TypeError: function takes no parameters" in no_create.stderr
    missing_task = auto_annotate(stack, "99999", "--function-file", str(SHAPES_FILE))
    assert missing_task.returncode == 1 and "task 99999: 404" in missing_task.stderr
    bad_threshold = auto_annotate(stack, str(task["id"]), "--function-file", str(SHAPES_FILE), "--conf-threshold", "2")
    assert bad_threshold.returncode == 2 and "must be between 0 and 1" in bad_threshold.stderr


def test_built_in_face_function_gives_attributes_as_the_sdk_expects(stack, client):
    function = sdk.load_function(module="serverless.sdk_functions.face_detection")
    (face_label,) = function.spec.labels
    assert [(a.name, a.input_type.value) for a in face_label.attributes] == [
        ("age", "number"), ("gender", "select"), ("emotion", "select")]
    labels = [{"name": "face", "type": "rectangle", "attributes": [
        {"name": "age", "input_type": "number", "mutable": False, "values": ["0", "150", "1"]},
        {"name": "gender", "input_type": "select", "mutable": False, "values": ["male", "female"]},
        {"name": "emotion", "input_type": "select", "mutable": False,
         "values": ["neutral", "happy", "sad", "surprise", "anger"]}]}]
    task = new_task(stack, labels=labels, images=(ASTRONAUT,))
    annotate_task(client, task["id"], function)
    (face,) = annotations(stack, task["id"])["shapes"]
    assert box_iou(face["points"], ASTRONAUT_FACE) > 0.6
    assert 0.5 <= face["score"] <= 1
    values = {a["spec_id"]: a["value"] for a in face["attributes"]}
    attribute_ids = {a["name"]: a["id"] for a in stack.labels(task["id"])[0]["attributes"]}
    assert values[attribute_ids["gender"]] == "female" and 15 <= int(values[attribute_ids["age"]]) <= 60


def test_built_in_text_function_gives_masks_or_polygons():
    function = sdk.load_function(module="serverless.sdk_functions.text_detection")
    page = Image.open(PAGE)
    as_masks = function.detect(sdk.detection_context("page.png", None, False), page)
    as_polygons = function.detect(sdk.detection_context("page.png", None, True), page)
    assert len(as_masks) == len(as_polygons) >= 5
    assert ({shape.type.value for shape in as_masks} == {"mask"}
            and {shape.type.value for shape in as_polygons} == {"polygon"})
    for mask_shape, polygon_shape in zip(as_masks, as_polygons):
        # The polygon is the region's rotated box: it covers the region's own pixels.
        xs, ys = polygon_shape.points[0::2], polygon_shape.points[1::2]
        x1, y1, x2, y2 = mask_shape.points[-4:]
        assert box_iou((min(xs), min(ys), max(xs), max(ys)), (x1, y1, x2 + 1, y2 + 1)) > 0.7
    with pytest.raises(ValueError, match="model must be one of ppocrv4, text-detection-0004"):
        sdk.load_function(module="serverless.sdk_functions.text_detection", parameters={"model": "east"})
