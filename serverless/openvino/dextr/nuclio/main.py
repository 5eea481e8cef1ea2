"""nuclio entry point of openvino-dextr (CVAT's "DEXTR", Deep Extreme Cut).

Request ``{"image": <base64>, "pos_points": [[x, y], ...] (at least 4, the object's extreme
points), "neg_points"?, "obj_bbox"? (both unused), "threshold"?: 0..1 (default 0.8)}``; reply
``{"mask": H x W}`` over the whole image, 0 background and 255 object.
"""

from serverless.common.interactors import interactor_handler

from model_handler import MIN_POS_POINTS, THRESHOLD, Dextr


def init_context(context):
    context.logger.info("Loading DEXTR (the OpenVINO export of dextr_pascal-sbd.pth)")
    context.user_data.model = Dextr()
    context.logger.info("Model loaded")


handler = interactor_handler(lambda context, interaction: context.user_data.model.segment(interaction),
                             min_pos_points=MIN_POS_POINTS, default_threshold=THRESHOLD)
