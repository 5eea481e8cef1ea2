"""nuclio entry point of opencv-reid-colour-histogram ("ReID by colour histogram", ours: no learned
weights).

Request ``{"image0", "image1": <base64>, "boxes0", "boxes1": [CVAT shapes with points and label_id],
"threshold"?: 0..2 (a cosine distance, default 0.5), "max_distance"?: px >= 0 (default 50)}``, as
CVAT's person reidentification; reply: for each box of ``boxes0``, the index of the same object in
``boxes1``, or -1. The matching rules are in serverless/common/reid.py.
"""

from serverless.common.reid import reid_handler

from model_handler import ColourHistograms


def init_context(context):
    context.user_data.model = ColourHistograms()
    context.logger.info("Colour-histogram ReID ready (OpenCV, no model files)")


handler = reid_handler(lambda context, crops: context.user_data.model.embed(crops))
