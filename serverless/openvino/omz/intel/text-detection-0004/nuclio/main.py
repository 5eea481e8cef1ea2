"""nuclio entry point of openvino-omz-intel-text-detection-0004 (CVAT's "Text detection v4").

Request ``{"image": <base64>, "threshold"?, "pixel_threshold"?, "link_threshold"?}`` (each 0..1)
or the batch form ``{"images": [...]}``. ``threshold`` is the pixel threshold unless
``pixel_threshold`` is given (CVAT ignores ``threshold``); both default to CVAT's 0.8, and so does
``link_threshold``. Reply: one ``text`` mask item per instance, carrying only that instance's
pixels, with its rotated rectangle (TL, TR, BR, BL) in ``points`` (one list per image for a batch).
"""

from serverless.common.handler import detector_handler, read_probability

from model_handler import LINK_THRESHOLD, PIXEL_THRESHOLD, TextDetector


def init_context(context):
    context.logger.info("Loading text-detection-0004")
    context.user_data.model = TextDetector()
    context.logger.info("Model loaded")


def detect(context, image, threshold, body):
    pixel_threshold = read_probability(body, "pixel_threshold", threshold)
    link_threshold = read_probability(body, "link_threshold", LINK_THRESHOLD)
    return context.user_data.model.detect(image, pixel_threshold, link_threshold)


handler = detector_handler(detect, default_threshold=PIXEL_THRESHOLD)
