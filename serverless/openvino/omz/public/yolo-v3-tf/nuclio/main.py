"""nuclio entry point of openvino-omz-public-yolo-v3-tf (CVAT's "YOLO v3").

Request ``{"image": <base64>, "threshold"?: 0..1 (default 0.5)}`` or ``{"images": [...]}``;
reply: rectangles labelled with this function's own spec names.
"""

from pathlib import Path

from serverless.common import model_files
from serverless.common.handler import detector_handler
from serverless.common.metadata import label_names

from model_handler import YoloV3


def init_context(context):
    # The official yolo-v3-tf IR when present, else the yolo-v3-tiny stand-in.
    resolved = model_files.resolve_first(["yolo-v3-tf", "yolo-v3-tiny"])
    context.logger.info(f"Loading {resolved.name} ({resolved.precision})")
    context.user_data.model = YoloV3(resolved.file(".xml"), label_names(Path(__file__).with_name("function.yaml")))
    context.logger.info("Model loaded")


handler = detector_handler(lambda context, image, threshold, body: context.user_data.model.detect(image, threshold))
