"""nuclio entry point of onnx-wongkinyiu-yolov7 (CVAT's "YOLO v7").

Request ``{"image": <base64>, "threshold"?: 0..1 (default 0.5; 0 returns every box the model
gives)}`` or the batch form ``{"images": [...]}``; reply: rectangles named with the spec's 80 COCO
labels (one list per image for a batch).
"""

from pathlib import Path

from serverless.common.handler import detector_handler
from serverless.common.metadata import label_names

from model_handler import YoloV7


def init_context(context):
    context.logger.info("Loading YOLO v7")
    # function-gpu.yaml carries the same spec; function.yaml is beside this file in both builds.
    context.user_data.model = YoloV7(label_names(Path(__file__).with_name("function.yaml")))
    context.logger.info(f"Loaded {context.user_data.model.description}")


handler = detector_handler(lambda context, image, threshold, body: context.user_data.model.detect(image, threshold))
