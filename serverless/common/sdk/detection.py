"""Serving a cvat-sdk detection function as a CVAT detector: each request's image goes to
``function.detect`` with the request's threshold, and the SDK annotations it returns, once checked
against the function's spec, come back as CVAT function result items (docs/wire-format.md §1.6).
"""

from __future__ import annotations

from cvat_sdk import models
from cvat_sdk.auto_annotation import DetectionFunctionContext
from cvat_sdk.masks import decode_mask
from PIL import Image

from serverless.common import masks
from serverless.common.handler import BadRequest, detector_handler
from serverless.common.sdk.rules import LabelIndex
from serverless.common.sdk.spec import value


def serve_detection(function):
    """The nuclio handler of a detection function."""
    index = LabelIndex(function.spec.labels)

    def detect(context, image: Image.Image, threshold: float | None, body: dict) -> list[dict]:
        conv_mask_to_poly = body.get("conv_mask_to_poly", False)
        if not isinstance(conv_mask_to_poly, bool):
            raise BadRequest(f"'conv_mask_to_poly' must be true or false, got {conv_mask_to_poly!r}")
        sdk_context = detection_context("", threshold, conv_mask_to_poly)  # CVAT sends no frame name
        return detection_items(index, function.detect(sdk_context, image), image.size,
                               conv_mask_to_poly=conv_mask_to_poly)

    # No threshold in the request: None, the function's own default (the SDK's conf_threshold).
    return detector_handler(detect, default_threshold=None)


def detection_items(index: LabelIndex, annotations, image_size: tuple[int, int], *,
                    conv_mask_to_poly: bool) -> list[dict]:
    """Check every annotation, then write it as a result item with label and attribute names."""
    for annotation in annotations:
        index.check(annotation, conv_mask_to_poly=conv_mask_to_poly)
    items = [_item(index, annotation, image_size) for annotation in annotations]
    return [item for item in items if item is not None]


def _named_attributes(annotation, declared: dict) -> list[dict]:
    return [{"name": declared[a.spec_id][0].name, "value": a.value} for a in getattr(annotation, "attributes", [])]


def _item(index: LabelIndex, annotation, image_size: tuple[int, int]) -> dict | None:
    label = index.labels[annotation.label_id]
    item = {"label": label.name, "attributes": _named_attributes(annotation, index.attributes[label.id])}
    if isinstance(annotation, models.LabeledImageRequest):
        return {**item, "type": "tag"}
    shape_type = value(annotation.type)
    item.update(type=shape_type, points=[float(v) for v in getattr(annotation, "points", [])])
    if hasattr(annotation, "score"):
        item["confidence"] = f"{float(annotation.score):.4f}"
    for field, key in (("group", "group_id"), ("outside", "outside"), ("rotation", "rotation")):
        if getattr(annotation, field, None) is not None:
            item[key] = getattr(annotation, field)
    if shape_type == "mask":
        width, height = image_size
        bitmap = decode_mask(annotation.points, image_width=width, image_height=height)
        if not bitmap.any():
            return None  # an empty mask is no object (and CVAT cannot store one)
        # The function format, plus a polygon for CVAT's server-side conv_mask_to_poly (which never
        # tells the function): the largest outline.
        polygons = masks.mask_to_polygons(bitmap)
        item.update(mask=masks.to_function_mask(bitmap), points=max(polygons, key=len) if polygons else [])
    elif shape_type == "skeleton":
        sublabels = index.sublabels[label.id]
        item["elements"] = [
            {"label": sublabels[e.label_id].name, "type": "points", "points": [float(v) for v in e.points],
             "outside": bool(getattr(e, "outside", False)),
             "attributes": _named_attributes(e, index.sublabel_attributes[(label.id, e.label_id)])}
            for e in annotation.elements]
    return item


class _DetectionContext(DetectionFunctionContext):
    def __init__(self, frame_name: str, conf_threshold: float | None, conv_mask_to_poly: bool):
        self._frame_name, self._conf_threshold, self._conv_mask_to_poly = frame_name, conf_threshold, conv_mask_to_poly

    frame_name = property(lambda self: self._frame_name)
    conf_threshold = property(lambda self: self._conf_threshold)
    conv_mask_to_poly = property(lambda self: self._conv_mask_to_poly)


def detection_context(frame_name: str, conf_threshold: float | None,
                      conv_mask_to_poly: bool) -> DetectionFunctionContext:
    return _DetectionContext(frame_name, conf_threshold, conv_mask_to_poly)
