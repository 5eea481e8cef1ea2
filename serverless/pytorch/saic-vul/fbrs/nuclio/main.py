"""nuclio entry point of pth-saic-vul-fbrs (CVAT's "f-BRS").

Request ``{"image": <base64>, "pos_points": [[x, y], ...] (at least one), "neg_points": [[x, y], ...],
"threshold"?: 0..1 (default 0.5)}``; reply ``{"mask": H x W of 0/255}`` over the whole image.
"""

from serverless.common.interactors import interactor_handler

from model_handler import FBRS


def init_context(context):
    context.logger.info("Loading f-BRS (resnet101_dh256_sbd.pth)")
    context.user_data.model = FBRS()
    context.logger.info(f"Model loaded on {context.user_data.model.device}")


handler = interactor_handler(lambda context, interaction: context.user_data.model.segment(interaction),
                             min_pos_points=1)
