"""nuclio entry point of pth-saic-vul-hrnet (CVAT's "HRNET", RITM's HRNet18 interactor).

Request ``{"image": <base64>, "pos_points": [[x, y], ...] (at least 1), "neg_points"?: [[x, y], ...],
"threshold"?: 0..1 (default 0.5)}``; reply ``{"mask": H x W}``, 255 where the object probability
is above the threshold, else 0. ``obj_bbox`` is ignored, as in CVAT.
"""

from serverless.common.interactors import interactor_handler

from model_handler import HRNetRITM


def init_context(context):
    context.logger.info("Loading RITM HRNet18 (coco_lvis_h18_itermask.pth)")
    context.user_data.model = HRNetRITM()
    context.logger.info(f"Model loaded on {context.user_data.model.device}")


handler = interactor_handler(lambda context, interaction: context.user_data.model.segment(interaction),
                             min_pos_points=1)
