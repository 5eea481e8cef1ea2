"""COCO-128 accuracy through the runtime over HTTP, with floors a little below what was measured
(README "Verified on"), so a regression in pre- or post-processing fails."""

import runpy
import subprocess
import sys

from helpers import REPO

evaluate = runpy.run_path(str(REPO / "scripts/eval_coco.py"))["evaluate"]


def test_yolo_v3_on_the_tiny_ir():
    stats = evaluate(REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio")
    assert stats["images"] == 128
    assert stats["mAP"] >= 0.21 and stats["AP50"] >= 0.41  # measured 0.224 / 0.429


def test_yolo_v7_handler_on_yolox_nano_in_yolov7_layout(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts/yolox_to_yolov7.py"), str(tmp_path / "yolov7-640.onnx")],
                   check=True, cwd=REPO, capture_output=True)
    stats = evaluate(REPO / "serverless/onnx/WongKinYiu/yolov7/nuclio", {"YOLOV7_MODEL_PATH": str(tmp_path)})
    assert stats["images"] == 128
    assert stats["mAP"] >= 0.32 and stats["AP50"] >= 0.48  # measured 0.333 / 0.502
