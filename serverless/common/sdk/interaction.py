"""Serving a cvat-sdk interaction function as a CVAT version-2 interactor: the request's clicks and
box become the SDK's prompts, within the function's spec (``min_neg_points``, ``min_bounding_boxes``),
and the union of the mask shapes it returns is the object.
"""

from __future__ import annotations

import hashlib
import math
import threading

import numpy as np
from cvat_sdk.auto_annotation import (
    BadFunctionError,
    InteractionFunctionContext,
    InteractionPrompts,
    InteractionResultAttributes,
)
from cvat_sdk.masks import decode_mask
from PIL import Image

from serverless.common.handler import BadRequest
from serverless.common.interactors import Interaction, Segmentation, interactor_handler
from serverless.common.sdk.spec import value


def serve_interaction(function):
    """The nuclio handler of an interaction function."""
    spec, context = function.spec, _NoContext()
    preprocessed = _PreprocessedImages(function, context)

    def segment(_, interaction: Interaction) -> Segmentation:
        negatives = len(interaction.neg_points)
        if spec.min_neg_points is None and negatives:
            raise BadRequest("'neg_points': this interactor takes no negative points")
        if spec.min_neg_points is not None and negatives < spec.min_neg_points:
            raise BadRequest(f"'neg_points' needs at least {spec.min_neg_points} points, got {negatives}")
        if spec.min_bounding_boxes is None and interaction.box is not None:
            raise BadRequest("'obj_bbox': this interactor takes no box")
        box = None if interaction.box is None else (tuple(interaction.box[:2]), tuple(interaction.box[2:]))
        prompts = _Prompts([tuple(p) for p in interaction.pos_points.tolist()],
                           [tuple(p) for p in interaction.neg_points.tolist()], box)
        height, width = interaction.shape
        shapes = function.detect(context, preprocessed(interaction.image), prompts)
        # CVAT's UI reads masks only; the union of the function's mask shapes is the object, its
        # confidence theirs weighted by their pixel counts.
        mask = np.zeros((height, width), dtype=bool)
        weighted, pixels = 0.0, 0
        for result in shapes:
            if value(result.type) == "mask":
                shape_mask = decode_mask(result.points, image_width=width, image_height=height)
                mask |= shape_mask
                count = np.count_nonzero(shape_mask)
                weighted, pixels = weighted + count * _interaction_confidence(result), pixels + count
        return Segmentation(mask, weighted / pixels if pixels else 0.0)

    return interactor_handler(segment, min_pos_points=spec.min_pos_points, box_required=spec.min_bounding_boxes == 1)


def _interaction_confidence(result) -> float:
    """A result shape's confidence: its ``InteractionResultAttributes.CONFIDENCE`` attribute, a real
    number between 0 and 1 by the SDK's rules."""
    values = [a.value for a in result.attributes if a.spec_id == InteractionResultAttributes.CONFIDENCE]
    if not values:
        return 1.0  # the function reports no confidence: it stands by its shape
    if len(values) > 1:
        raise BadFunctionError(f"an interaction result shape has {len(values)} confidence attributes, at most 1")
    try:
        confidence = float(values[0])
    except ValueError:
        confidence = math.nan
    if not 0 <= confidence <= 1:  # NaN included
        raise BadFunctionError(f"an interaction result shape's confidence must be a real number between 0 and 1, "
                               f"got {values[0]!r}")
    return confidence


class _Prompts(InteractionPrompts):
    def __init__(self, pos_points, neg_points, bounding_box):
        self._pos, self._neg, self._box = pos_points, neg_points, bounding_box

    pos_points = property(lambda self: self._pos)
    neg_points = property(lambda self: self._neg)
    bounding_box = property(lambda self: self._box)


class _NoContext(InteractionFunctionContext):
    pass


class _PreprocessedImages:
    """The last image's ``preprocess_image`` result: CVAT sends the same frame for every click."""

    def __init__(self, function, context):
        self.function, self.context = function, context
        self.digest, self.result = None, None
        self.lock = threading.Lock()

    def __call__(self, rgb: np.ndarray):
        if not hasattr(self.function, "preprocess_image"):
            return Image.fromarray(rgb)
        digest = hashlib.blake2b(rgb.tobytes(), digest_size=16).digest() + bytes(str(rgb.shape), "ascii")
        with self.lock:
            if digest != self.digest:
                self.digest, self.result = digest, self.function.preprocess_image(self.context, Image.fromarray(rgb))
            return self.result
