"""Text detection as a cvat-sdk detection function: one ``text`` mask per region (a polygon, its
rotated box, with ``conv_mask_to_poly``), each with its score.

``model="ppocrv4"`` (default) is PP-OCRv4's DB detector (``onnx-paddlepaddle-ppocrv4-det``);
``model="text-detection-0004"`` is CVAT's Open Model Zoo PixelLink function, whose threshold is
its pixel threshold.

    python -m dispatcher auto-annotate 12 --function-module serverless.sdk_functions.text_detection -p model=str:ppocrv4
"""

from serverless.common.sdk import FolderDetectionFunction
from serverless.common.settings import CODE_ROOT

MODELS = {
    "ppocrv4": (CODE_ROOT / "serverless/onnx/PaddlePaddle/ppocrv4-det/nuclio", 0.5),
    "text-detection-0004": (CODE_ROOT / "serverless/openvino/omz/intel/text-detection-0004/nuclio", 0.8),
}


def create(model: str = "ppocrv4", threshold: float | None = None) -> FolderDetectionFunction:
    """``threshold``: the one kept when the caller gives no ``conf_threshold`` (default: the model's)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    folder, default = MODELS[model]
    return FolderDetectionFunction(folder, default_threshold=default if threshold is None else threshold)
