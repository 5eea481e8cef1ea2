"""nuclio entry point of opencv-grabcut ("GrabCut", ours: no learned weights).

Request ``{"image": <base64>, "pos_points": [[x, y], ...], "neg_points": [[x, y], ...],
"obj_bbox": [[x1, y1], [x2, y2]] or null or []}``: a box, positive points, or both; reply
``{"mask": H x W}``, 0 background and 255 object.
"""

from serverless.common.interactors import interactor_handler

from model_handler import GrabCut


def init_context(context):
    context.user_data.model = GrabCut()
    context.logger.info("GrabCut ready (OpenCV, no model files)")


handler = interactor_handler(lambda context, interaction: context.user_data.model.segment(interaction))
