"""CVAT's "YOLO v7" (onnx-wongkinyiu-yolov7) over HTTP through the runtime, on a real trained detector.

yolov7's weights are out of reach here, so YOLOX-Nano (COCO) is converted into yolov7's raw export
layout by scripts/yolox_to_yolov7.py, and an ONNX graph with the official NMS export's signature is
built at test time to check the other layout's post-processing against hand-computed values.
"""

import base64
import io
import subprocess
import sys

import numpy as np
import onnx
import openvino as ov
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from serverless.common import detections, model_files
from serverless.common.metadata import FunctionMeta

from helpers import REPO, TESTDATA, b64_file, box_iou, detect, serve_function

FUNCTION = REPO / "serverless/onnx/WongKinYiu/yolov7/nuclio"
BUS = TESTDATA / "ultralytics/bus.jpg"  # 810x1080
COCO = TESTDATA / "coco128-val2017/images"
LIVING_ROOM = COCO / "000000000139.jpg"  # 640x426: people, a tv, chairs, a table
# Marked by hand on bus.jpg: the bus, and the three people fully in view (left to right).
BUS_BOX = (15, 230, 805, 740)
PEOPLE_BOXES = [(50, 398, 245, 905), (222, 405, 345, 860), (668, 410, 810, 878)]
# docs/wire-format.md §1.10: CVAT's YOLO v3/v7 names by class id, VOC-style where COCO's differ.
CVAT_YOLO_LABELS = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa",
    "pottedplant", "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)



def encoded(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def spec_names():
    config = yaml.safe_load((FUNCTION / "function.yaml").read_text())
    return {label.name for label in FunctionMeta.from_nuclio(config).labels}


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    """YOLOX-Nano in yolov7's raw layout, made by the script, where YOLOV7_MODEL_PATH will point."""
    directory = tmp_path_factory.mktemp("yolov7-raw")
    subprocess.run([sys.executable, str(REPO / "scripts/yolox_to_yolov7.py"), str(directory / "yolov7-640.onnx")],
                   check=True, cwd=REPO)
    return directory


@pytest.fixture(scope="module")
def yolov7(converted_dir):
    with serve_function(FUNCTION, env={"YOLOV7_MODEL_PATH": str(converted_dir)}) as running:
        yield running


def assert_valid_items(items, spec_names, size, threshold=0.0):
    width, height = size
    for item in items:
        assert item["label"] in spec_names and item["type"] == "rectangle"
        x0, y0, x1, y1 = item["points"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, item["points"]
        assert isinstance(item["confidence"], str) and threshold <= float(item["confidence"]) <= 1


def test_spec_is_cvats_80_yolo_labels_in_both_builds():
    specs = [FunctionMeta.from_nuclio(yaml.safe_load((FUNCTION / name).read_text())).labels
             for name in ("function.yaml", "function-gpu.yaml")]
    assert specs[0] == specs[1]
    assert [(label.id, label.name, label.type) for label in specs[0]] == [
        (index, name, "rectangle") for index, name in enumerate(CVAT_YOLO_LABELS)]
    assert {"motorbike", "aeroplane", "sofa", "pottedplant", "diningtable", "tvmonitor"} <= {
        label.name for label in specs[0]}


def test_bus_and_three_people_on_bus_jpg(yolov7, spec_names):
    items = detect(yolov7, BUS)
    assert_valid_items(items, spec_names, (810, 1080), threshold=0.5)
    (bus,) = [item for item in items if item["label"] == "bus"]
    assert box_iou(bus["points"], BUS_BOX) > 0.8 and float(bus["confidence"]) > 0.8
    people = [item["points"] for item in items if item["label"] == "person"]
    for marked in PEOPLE_BOXES:
        assert max(box_iou(found, marked) for found in people) > 0.6, marked


def test_items_use_spec_names_and_stay_inside_the_image(yolov7, spec_names):
    for path in [BUS, LIVING_ROOM, COCO / "000000000632.jpg", COCO / "000000000724.jpg"]:
        items = detect(yolov7, path, threshold=0.25)
        assert items
        assert_valid_items(items, spec_names, Image.open(path).size, threshold=0.25)


@pytest.mark.parametrize("image_name, label", [
    ("000000001761.jpg", "aeroplane"), ("000000013177.jpg", "motorbike"), ("000000004495.jpg", "sofa"),
    ("000000000632.jpg", "pottedplant"), ("000000001993.jpg", "diningtable"), ("000000004495.jpg", "tvmonitor"),
])
def test_classes_come_out_with_cvats_voc_style_names(yolov7, image_name, label):
    """COCO's airplane, motorcycle, couch, ... are named by class id from the spec (CVAT's defect, §D3 stays out)."""
    assert label in {item["label"] for item in detect(yolov7, COCO / image_name, threshold=0.3)}


@pytest.mark.parametrize("image_path", [BUS, LIVING_ROOM])
def test_threshold_is_honoured_including_zero(yolov7, spec_names, image_path):
    size = Image.open(image_path).size
    counts = {}
    for threshold in (0.0, 0.5, 0.7):
        items = detect(yolov7, image_path, threshold=threshold)
        assert_valid_items(items, spec_names, size, threshold=threshold)
        counts[threshold] = len(items)
    assert counts[0.0] > counts[0.5] >= counts[0.7]  # 0 really is 0, not the default (CVAT's defect, §D1)


def test_batch_of_mixed_sizes_answers_one_list_per_image_in_order(yolov7):
    images = [BUS, LIVING_ROOM]
    reply = yolov7.http.post("/", json={"images": [b64_file(p) for p in images], "threshold": 0.3})
    assert reply.status_code == 200
    assert reply.json() == [detect(yolov7, p, threshold=0.3) for p in images]


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grey_and_rgba_frames(yolov7, spec_names, mode):
    reply = yolov7.http.post("/", json={"image": encoded(Image.open(BUS).convert(mode))})
    assert reply.status_code == 200
    items = reply.json()
    assert_valid_items(items, spec_names, (810, 1080), threshold=0.5)
    assert any(item["label"] == "bus" and box_iou(item["points"], BUS_BOX) > 0.8 for item in items)
    assert sum(item["label"] == "person" for item in items) >= 3


@pytest.mark.parametrize("body, message", [
    ({"image": "%%% not base64 %%%"}, "'image' is not valid base64"),
    ({"image": base64.b64encode(b"GIF89a but not really").decode()}, "'image' is not an image file"),
    ({}, "'image' must be a non-empty base64 string"),
    ({"image": b64_file(BUS), "threshold": 1.5}, "'threshold' must be between 0 and 1"),
    ({"image": b64_file(BUS), "threshold": "0.5"}, "'threshold' must be a number"),
    ({"images": []}, "'images' must be a non-empty list"),
    ({"images": [b64_file(BUS), "%%%"]}, "'images[1]' is not valid base64"),
])
def test_bad_input_is_400_with_a_reason(yolov7, body, message):
    reply = yolov7.http.post("/", json=body)
    assert reply.status_code == 400 and reply.text.startswith(message) and "\n" not in reply.text


def test_converted_model_is_yolox_decoded(converted_dir):
    """The graph's decoding equals YOLOX's, done in numpy on the original model's output."""
    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}  # compare the graphs, not the CPU's default bf16 rounding
    original = core.compile_model(model_files.resolve("yolox-nano").file(".onnx"), "CPU", f32)
    converted = core.compile_model(converted_dir / "yolov7-640.onnx", "CPU", f32)
    assert tuple(converted.inputs[0].shape) == (1, 3, 416, 416) and converted.inputs[0].any_name == "images"
    assert tuple(converted.outputs[0].shape) == (1, 3549, 85) and converted.outputs[0].any_name == "output"

    canvas, _, _ = detections.letterbox(np.asarray(Image.open(BUS).convert("RGB")), (416, 416), center=False)
    raw = original(canvas[:, :, ::-1].transpose(2, 0, 1)[np.newaxis].astype(np.float32))[0]
    expected = raw.copy()
    offset = 0
    for stride in (8, 16, 32):
        cells = 416 // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        rows = slice(offset, offset + cells * cells)
        expected[0, rows, 0:2] = (raw[0, rows, 0:2] + np.stack((xs, ys), -1).reshape(-1, 2)) * stride
        expected[0, rows, 2:4] = np.exp(raw[0, rows, 2:4]) * stride
        offset += cells * cells
    assert offset == 3549
    decoded = converted(canvas.transpose(2, 0, 1)[np.newaxis].astype(np.float32) / 255)[0]
    np.testing.assert_allclose(decoded, expected, rtol=1e-3, atol=1e-4)


def test_onnxruntime_backend_gives_the_same_boxes(yolov7, converted_dir):
    """function-gpu.yaml (ONNX_BACKEND=onnxruntime, 1 worker) on this CPU-only machine: ONNX Runtime's
    CPU provider, the same detections as OpenVINO up to OpenVINO's bf16 rounding."""
    with serve_function(FUNCTION / "function-gpu.yaml", env={"YOLOV7_MODEL_PATH": str(converted_dir)}) as running:
        on_onnxruntime = detect(running, BUS)
    on_openvino = detect(yolov7, BUS)
    assert [item["label"] for item in on_onnxruntime] == [item["label"] for item in on_openvino]
    for a, b in zip(on_onnxruntime, on_openvino):
        assert box_iou(a["points"], b["points"]) > 0.95
        assert float(a["confidence"]) == pytest.approx(float(b["confidence"]), abs=0.03)


def official_nms_export(rows: np.ndarray, size: int = 640) -> onnx.ModelProto:
    """A graph with the signature of yolov7's NMS export (input ``images`` [1, 3, size, size], output
    [K, 7] with K dynamic) that ignores the pixels and emits ``rows``."""
    nodes = [
        # Tie the output to the input (times 0), so no runtime prunes the input away.
        helper.make_node("ReduceMax", ["images"], ["pixel_max"], keepdims=0),
        helper.make_node("Mul", ["pixel_max", "zero"], ["nothing"]),
        helper.make_node("Add", ["fixed_rows", "nothing"], ["all_rows"]),
        # Keep the rows scoring at least "nothing" (all of them), a selection no runtime can fold
        # away: the row count is dynamic, as after the real graph's NMS.
        helper.make_node("Less", ["row_scores", "nothing"], ["below"]),
        helper.make_node("Not", ["below"], ["kept"]),
        helper.make_node("Compress", ["all_rows", "kept"], ["output"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "nms_export_stand_in",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["detections", 7])],
        initializer=[numpy_helper.from_array(rows.astype(np.float32), "fixed_rows"),
                     numpy_helper.from_array(np.array(0, dtype=np.float32), "zero"),
                     numpy_helper.from_array(rows[:, 6].astype(np.float32), "row_scores")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_nms_export_rows_are_unletterboxed_clipped_thresholded_and_named(tmp_path):
    # A 200x100 frame letterboxed into 640x640: ratio 3.2, 160 grey rows above and below, none at the sides.
    # Scores are exact in float32, so ">= threshold" is tested on the boundary itself (CVAT's defect, §D18).
    rows = np.array([
        # batch, x0, y0, x1, y1, class, score
        [0, 64, 192, 320, 352, 5, 0.875],    # bus (20, 10, 100, 60)
        [0, -32, 128, 700, 600, 0, 0.625],   # person (-10, -10, 218.75, 137.5), clipped to the frame
        [0, 320, 320, 480, 448, 79, 0.5],    # toothbrush (100, 50, 150, 90)
        [0, 16, 176, 48, 208, 3, 0.25],      # motorbike (5, 5, 15, 15)
        [0, 480, 160, 640, 480, 57, 0.125],  # sofa (150, 0, 200, 100)
        [0, 100, 10, 200, 100, 2, 0.95],     # wholly in the grey band above the frame: nothing left of it
        [0, 64, 192, 320, 352, 80, 0.75],    # class 80: not in the spec, so not emitted
    ])
    onnx.save(official_nms_export(rows), tmp_path / "yolov7-nms-640.onnx")
    expected = [("bus", [20, 10, 100, 60], "0.8750"), ("person", [0, 0, 200, 100], "0.6250"),
                ("toothbrush", [100, 50, 150, 90], "0.5000"), ("motorbike", [5, 5, 15, 15], "0.2500"),
                ("sofa", [150, 0, 200, 100], "0.1250")]
    frame = encoded(Image.new("RGB", (200, 100), (90, 120, 60)))
    with serve_function(FUNCTION, env={"YOLOV7_MODEL_PATH": str(tmp_path)}) as running:
        for threshold, count in [(0.0, 5), (0.25, 4), (0.5, 3), (0.6, 2), (0.875, 1), (0.9, 0)]:
            reply = running.http.post("/", json={"image": frame, "threshold": threshold})
            assert reply.status_code == 200, reply.text
            got = [(item["label"], item["points"], item["confidence"]) for item in reply.json()]
            assert [(label, confidence) for label, _, confidence in got] == [
                (label, confidence) for label, _, confidence in expected[:count]], threshold
            for (_, points, _), (_, want, _) in zip(got, expected):
                assert points == pytest.approx(want, abs=0.01)


def test_unknown_output_layout_is_an_init_error_with_the_reason(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["output"], keepdims=1)], "not_yolov7",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "yolov7-640.onnx")
    with serve_function(FUNCTION, env={"YOLOV7_MODEL_PATH": str(tmp_path)}, until="error") as running:
        assert "neither yolov7's NMS export [K, 7] nor its raw export" in running.readiness()["message"]
