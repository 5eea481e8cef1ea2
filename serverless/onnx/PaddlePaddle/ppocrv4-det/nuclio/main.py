"""nuclio entry point of onnx-paddlepaddle-ppocrv4-det (PP-OCRv4 text detection; not a CVAT function).

Request ``{"image": <base64>, "threshold"?: 0..1}`` or the batch form ``{"images": [...]}``;
``threshold`` is the box score threshold: a region is kept when its mean text probability is
``>=`` it (default 0.5; 0 keeps every region, whatever its score). Reply: one ``text`` mask item
per region, carrying only that region's pixels, with its rotated box (TL, TR, BR, BL) in
``points`` (one list per image for a batch).
"""

from serverless.common.handler import detector_handler

from model_handler import TextDetector


def init_context(context):
    context.logger.info("Loading PP-OCRv4 text detection (ch_PP-OCRv4_det_infer.onnx)")
    context.user_data.model = TextDetector()
    context.logger.info("Model loaded")


handler = detector_handler(lambda context, image, threshold, body: context.user_data.model.detect(image, threshold))
