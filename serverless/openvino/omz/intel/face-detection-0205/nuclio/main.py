"""nuclio entry point of openvino-omz-intel-face-detection-0205 (CVAT's "Attributed face detection").

Request ``{"image": <base64>, "threshold"?: 0..1 (default 0.5; 0 returns every face)}`` or the
batch form ``{"images": [...]}``; reply: ``face`` rectangles with ``age``, ``gender`` and
``emotion`` attributes (one list per image for a batch).
"""

from serverless.common.handler import detector_handler

from model_handler import FaceDetector


def init_context(context):
    context.logger.info("Loading face-detection-0205, age-gender-recognition-retail-0013, "
                        "emotions-recognition-retail-0003")
    context.user_data.model = FaceDetector()
    context.logger.info("Models loaded")


handler = detector_handler(lambda context, image, threshold, body: context.user_data.model.detect(image, threshold))
