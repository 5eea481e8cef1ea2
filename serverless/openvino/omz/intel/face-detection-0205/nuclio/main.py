"""nuclio entry point of openvino-omz-intel-face-detection-0205 (CVAT's "Attributed face detection").

Request ``{"image": <base64>, "threshold"?: 0..1 (default 0.5; 0 returns every face)}``;
reply: a list of ``face`` rectangles with ``age``, ``gender`` and ``emotion`` attributes.
"""

from model_handler import FaceDetector

from serverless.common.handler import json_handler, read_probability
from serverless.common.images import decode_image


def init_context(context):
    context.logger.info("Loading face-detection-0205, age-gender-recognition-retail-0013, emotions-recognition-retail-0003")
    context.user_data.model = FaceDetector()
    context.logger.info("Models loaded")


@json_handler
def handler(context, body):
    image = decode_image(body.get("image"))
    threshold = read_probability(body, "threshold", default=0.5)
    return context.user_data.model.detect(image, threshold)
