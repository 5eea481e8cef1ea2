"""YOLO v3 as a cvat-sdk detection function: rectangles with the 80 COCO label names of CVAT's
``openvino-omz-public-yolo-v3-tf``, each with its score. The official yolo-v3-tf IR when it is in
MODELS_DIR, else the yolo-v3-tiny stand-in, as the function folder does.

    python -m dispatcher auto-annotate 12 --function-module serverless.sdk_functions.yolo_v3 --conf-threshold 0.3
"""

from serverless.common.sdk import FolderDetectionFunction
from serverless.common.settings import CODE_ROOT

FOLDER = CODE_ROOT / "serverless/openvino/omz/public/yolo-v3-tf/nuclio"


def create(threshold: float = 0.5) -> FolderDetectionFunction:
    """``threshold``: the confidence kept when the caller gives no ``conf_threshold``."""
    return FolderDetectionFunction(FOLDER, default_threshold=threshold)
