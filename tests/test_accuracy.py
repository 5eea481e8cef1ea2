"""COCO-128 accuracy through the runtime over HTTP, with floors a little below what was measured
(README "Verified on"), so a regression in pre- or post-processing fails."""

import runpy

from conftest import REPO

evaluate = runpy.run_path(str(REPO / "scripts/eval_coco.py"))["evaluate"]


def test_yolo_v3_on_the_tiny_ir():
    stats = evaluate(REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio")
    assert stats["images"] == 128
    assert stats["mAP"] >= 0.21 and stats["AP50"] >= 0.41  # measured 0.224 / 0.429
