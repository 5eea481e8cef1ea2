"""CVAT's YOLO v3 function: the yolo-v3-tiny IR on real images over HTTP, and the official IR's
RegionYolo path checked on a graph built with OpenVINO's own RegionYolo op."""

import base64
import io
import math

import numpy as np
import openvino as ov
import openvino.opset1 as ops
import pytest
import yaml
from PIL import Image

from serverless.common import model_files
from serverless.common.metadata import FunctionMeta

from helpers import REPO, TESTDATA, b64_file, detect, function_module, serve_function

FUNCTION = REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio"
BUS = TESTDATA / "ultralytics/bus.jpg"
model_handler = function_module(FUNCTION)

SPEC_NAMES = {label.name for label in
              FunctionMeta.from_nuclio(yaml.safe_load((FUNCTION / "function.yaml").read_text())).labels}


@pytest.fixture(scope="module")
def yolo():
    with serve_function(FUNCTION) as running:
        yield running


def assert_well_formed(items, size, threshold):
    width, height = size
    for item in items:
        assert item["label"] in SPEC_NAMES and item["type"] == "rectangle"
        x0, y0, x1, y1 = item["points"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert float(item["confidence"]) >= threshold


def test_spec_has_cvat_names_and_ids():
    labels = FunctionMeta.from_nuclio(yaml.safe_load((FUNCTION / "function.yaml").read_text())).labels
    assert [label.id for label in labels] == list(range(80))
    names = [label.name for label in labels]
    assert names[3] == "motorbike" and names[9] == "traffic light" and names[62] == "tvmonitor"


def test_bus_has_a_bus_and_people(yolo):
    items = detect(yolo, BUS, threshold=0.1)  # tiny finds this bus only at 0.15
    labels = [item["label"] for item in items]
    assert labels.count("person") >= 3 and "bus" in labels
    assert_well_formed(items, (810, 1080), 0.1)


def test_threshold_is_honoured_including_zero(yolo):
    default, everything = detect(yolo, BUS), detect(yolo, BUS, threshold=0.0)
    assert len(everything) > len(default) >= 3
    assert_well_formed(default, (810, 1080), 0.5)
    assert_well_formed(everything, (810, 1080), 0.0)


def test_batch_grey_and_rgba(yolo):
    zidane = TESTDATA / "ultralytics/zidane.jpg"
    reply = yolo.http.post("/", json={"images": [b64_file(BUS), b64_file(zidane)], "threshold": 0.3})
    assert reply.status_code == 200
    assert reply.json() == [detect(yolo, BUS, threshold=0.3), detect(yolo, zidane, threshold=0.3)]
    for mode in ("L", "RGBA"):
        buffer = io.BytesIO()
        Image.open(BUS).convert(mode).save(buffer, format="PNG")
        items = yolo.http.post("/", json={"image": base64.b64encode(buffer.getvalue()).decode()}).json()
        assert [item["label"] for item in items].count("person") >= 2
        assert_well_formed(items, (810, 1080), 0.5)


@pytest.mark.parametrize("body, message", [
    ({"image": "***"}, "'image' is not valid base64"),
    ({"image": b64_file(BUS), "threshold": 2}, "'threshold' must be between 0 and 1"),
    ({"images": "not a list"}, "'images' must be a non-empty list"),
])
def test_bad_input_is_400(yolo, body, message):
    reply = yolo.http.post("/", json=body)
    assert reply.status_code == 400 and reply.text.startswith(message)


def region_yolo_ir(tmp_path, anchors, mask, classes=2, grid=2):
    """An IR whose only op is OpenVINO's RegionYolo, as in the official yolo-v3-tf IR."""
    logits = ops.parameter([1, len(mask) * (5 + classes), grid, grid], np.float32, name="logits")
    region = ops.region_yolo(logits, coords=4, classes=classes, num=len(anchors) // 2, do_softmax=False,
                             mask=mask, axis=1, end_axis=3, anchors=anchors)
    region.output(0).get_tensor().set_names({"region"})
    path = tmp_path / "region.xml"
    ov.save_model(ov.Model([region], [logits], "region"), path)
    return path


def test_region_yolo_anchors_come_from_the_graph_and_the_op_applies_the_logistic(tmp_path):
    anchors = [10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119]  # six pairs; this output uses 3, 4, 5
    model = model_handler.OpenVINOModel(region_yolo_ir(tmp_path, anchors, mask=[3, 4, 5]))
    (output,) = model_handler.region_outputs(model)
    np.testing.assert_array_equal(output.anchors, [[30, 61], [62, 45], [59, 119]])

    # Raw logits: one confident object at anchor 1 (62x45), grid cell row 1, column 0, class 1.
    logits = np.full((1, 3, 7, 2, 2), -20.0, dtype=np.float32)  # [batch, anchor, 5 + classes, row, col]
    logits[0, 1, :, 1, 0] = [0.0, 2.0, math.log(2.0), 0.0, 20.0, -20.0, 20.0]
    region = model.infer(logits.reshape(1, 21, 2, 2))["region"][0]
    boxes, scores, classes = model_handler.decode(region, output.anchors, (416, 416), threshold=0.5)

    # By hand: centre x = (0 + sigmoid(0)) / 2 = 0.25, y = (1 + sigmoid(2)) / 2, w = 2 * 62 / 416, h = 45 / 416.
    y = (1 + 1 / (1 + math.exp(-2.0))) / 2
    w, h = 2 * 62 / 416, 45 / 416
    np.testing.assert_allclose(boxes, [[0.25 - w / 2, y - h / 2, 0.25 + w / 2, y + h / 2]], rtol=1e-4)
    assert classes.tolist() == [1] and scores[0] == pytest.approx(1.0, abs=1e-6)


def test_tiny_layout_is_picked_from_the_number_of_outputs():
    model = model_handler.OpenVINOModel(model_files.resolve("yolo-v3-tiny").file(".xml"))
    grids = {o.name: o.anchors.tolist() for o in model_handler.region_outputs(model)}
    assert grids == {"yolo_13": [[81, 82], [135, 169], [344, 319]], "yolo_26": [[23, 27], [37, 58], [81, 82]]}


def test_openvino_inference_precision_is_a_setting():
    from serverless.common import settings as function_settings
    from serverless.common.openvino_model import OpenVINOModel

    xml = model_files.resolve("yolo-v3-tiny").file(".xml")
    model = OpenVINOModel(xml, function_settings.load({"OPENVINO_INFERENCE_PRECISION": "F32"}))
    assert str(model.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    with pytest.raises(ValueError, match="OPENVINO_INFERENCE_PRECISION='fp64' is not one of f32, bf16, f16"):
        function_settings.load({"OPENVINO_INFERENCE_PRECISION": "fp64"})
