"""nuclio entry point of pth-facebookresearch-detectron2-retinanet-r101 (CVAT's "RetinaNet R101").

Request ``{"image": <base64>, "threshold"?: 0..1 (default 0.5; 0 returns up to 100 boxes)}`` or the
batch form ``{"images": [...]}``; reply: rectangles labelled with the spec's 80 COCO names (one
list per image for a batch).
"""

from serverless.common.handler import detector_handler

from model_handler import RetinaNetR101


def init_context(context):
    context.logger.info("Loading RetinaNet R101 (detectron2 model_final_971ab9.pkl)")
    context.user_data.model = RetinaNetR101()
    context.logger.info(f"Model loaded on {context.user_data.model.device}")


handler = detector_handler(lambda context, image, threshold, body: context.user_data.model.detect(image, threshold))
