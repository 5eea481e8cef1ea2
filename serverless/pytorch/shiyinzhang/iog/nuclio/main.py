"""nuclio entry point of pth-shiyinzhang-iog (CVAT's "IOG", Inside-Outside Guidance).

Request ``{"image": <base64>, "obj_bbox": [[x1, y1], [x2, y2]] (required), "pos_points": [[x, y],
...] (at least 1), "neg_points": [[x, y], ...], "threshold"?: 0..1 (default 0.8)}``; reply
``{"mask": H x W of 0/255}``. Without a box the answer is 400: CVAT's fallback (a box from the
negative clicks) never worked (docs/wire-format.md §D6).
"""

from serverless.common.interactors import interactor_handler

from model_handler import DEFAULT_THRESHOLD, IOG


def init_context(context):
    context.logger.info("Loading IOG (IOG_PASCAL_SBD.pth)")
    context.user_data.model = IOG()
    context.logger.info(f"Model loaded on {context.user_data.model.device}")


handler = interactor_handler(lambda context, interaction: context.user_data.model.segment(interaction),
                             min_pos_points=1, box_required=True, default_threshold=DEFAULT_THRESHOLD)
