"""nuclio entry point of openvino-omz-intel-person-reidentification-retail-0277 (CVAT's "Person
reidentification").

Request ``{"image0", "image1": <base64>, "boxes0", "boxes1": [CVAT shapes with points and label_id],
"threshold"?: 0..2 (a cosine distance, default 0.5), "max_distance"?: px >= 0 (default 50)}``;
reply: for each box of ``boxes0``, the index of the same person in ``boxes1``, or -1. The matching
rules are in serverless/common/reid.py.
"""

from serverless.common.reid import reid_handler

from model_handler import PersonReidentification


def init_context(context):
    context.logger.info("Loading person-reidentification-retail-0277")
    context.user_data.model = PersonReidentification()
    context.logger.info("Model loaded")


handler = reid_handler(lambda context, crops: context.user_data.model.embed(crops))
