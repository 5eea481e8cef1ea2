"""A cvat-sdk interaction function: a disc of radius 8 around each positive point, minus a disc
of radius 4 around each negative point, inside the box when one is given."""

import cvat_sdk.auto_annotation as cvataa
import numpy as np
from cvat_sdk.masks import encode_mask

spec = cvataa.InteractionFunctionSpec(min_pos_points=1, min_neg_points=0, min_bounding_boxes=0)


def preprocess_image(context, image):
    return np.asarray(image.convert("L"))


def detect(context, pp_image, prompts):
    height, width = pp_image.shape
    ys, xs = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), dtype=bool)
    for x, y in prompts.pos_points:
        mask |= (xs - x) ** 2 + (ys - y) ** 2 <= 8 ** 2
    for x, y in prompts.neg_points:
        mask &= ~((xs - x) ** 2 + (ys - y) ** 2 <= 4 ** 2)
    if prompts.bounding_box is not None:
        (x1, y1), (x2, y2) = prompts.bounding_box
        mask &= (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
    if not mask.any():
        return []
    return [cvataa.InteractionResultShape(type="mask", points=encode_mask(mask))]
