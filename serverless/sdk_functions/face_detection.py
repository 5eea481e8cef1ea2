"""CVAT's "Attributed face detection" as a cvat-sdk detection function: ``face`` rectangles with
``age`` (number 0..150), ``gender`` and ``emotion`` attributes, each with its score.

    python -m dispatcher auto-annotate 12 --function-module serverless.sdk_functions.face_detection
"""

from serverless.common.sdk import FolderDetectionFunction
from serverless.common.settings import CODE_ROOT

FOLDER = CODE_ROOT / "serverless/openvino/omz/intel/face-detection-0205/nuclio"


def create(threshold: float = 0.5) -> FolderDetectionFunction:
    """``threshold``: the confidence kept when the caller gives no ``conf_threshold``."""
    return FolderDetectionFunction(FOLDER, default_threshold=threshold)
