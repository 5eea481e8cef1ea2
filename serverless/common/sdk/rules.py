"""The detection output rules that need only the function's own spec (docs/wire-format.md §7.2): what
breaks one is a ``BadFunctionError``. The driver adds the task-side rules
(``dispatcher.auto_annotation``).
"""

from __future__ import annotations

from cvat_sdk import models
from cvat_sdk.attributes import attribute_value_validator
from cvat_sdk.auto_annotation import BadFunctionError

from serverless.common.sdk.spec import label_type, value


class LabelIndex:
    """The function's labels by id, with their attributes and sublabels by id and a value check per
    attribute."""

    def __init__(self, labels):
        self.labels = {label.id: label for label in labels}
        self.attributes = {label.id: _attributes_by_id(label) for label in labels}
        self.sublabels = {label.id: {sublabel.id: sublabel for sublabel in getattr(label, "sublabels", [])}
                          for label in labels}
        self.sublabel_attributes = {(label.id, sublabel.id): _attributes_by_id(sublabel)
                                    for label in labels for sublabel in getattr(label, "sublabels", [])}

    def check(self, annotation, *, conv_mask_to_poly: bool) -> str:
        """Raise ``BadFunctionError`` if ``annotation`` breaks a rule of the function's own spec;
        return ``"tag"`` or ``"shape"``."""
        if isinstance(annotation, models.LabeledImageRequest):
            kind = "tag"
        elif isinstance(annotation, models.LabeledShapeRequest):
            kind = "shape"
        else:
            raise BadFunctionError(f"function output an object of type {type(annotation).__name__!r} "
                                   "(expected 'LabeledImageRequest' or 'LabeledShapeRequest')")
        _check_header(annotation, f"function output {kind}")
        label = self.labels.get(annotation.label_id)
        if label is None:
            raise BadFunctionError(f"function output {kind} with unknown label ID ({annotation.label_id})")
        _check_attributes(annotation, self.attributes[label.id])
        declared = label_type(label)
        if kind == "tag":
            if declared not in ("any", "tag"):
                raise BadFunctionError(f"function output tag (expected shape of type {declared!r})")
            return kind
        shape_type = value(annotation.type)
        expected = "polygon" if conv_mask_to_poly and declared == "mask" else declared
        if expected != "any" and shape_type != expected:
            raise BadFunctionError(f"function output shape of type {shape_type!r} (expected {expected!r})")
        if shape_type == "mask" and conv_mask_to_poly:
            raise BadFunctionError("function output mask shape despite conv_mask_to_poly=True")
        elements = getattr(annotation, "elements", None) or []
        if shape_type != "skeleton":
            if elements:
                raise BadFunctionError("function output non-skeleton shape with elements")
            return kind
        seen = set()
        for element in elements:
            _check_header(element, "function output shape element")
            if value(element.type) != "points":
                raise BadFunctionError("function output skeleton with element type other than 'points' "
                                       f"({value(element.type)})")
            if element.label_id not in self.sublabels[label.id]:
                raise BadFunctionError(f"function output shape with unknown sublabel ID ({element.label_id})")
            if element.label_id in seen:
                raise BadFunctionError("function output skeleton with multiple elements with same sublabel")
            seen.add(element.label_id)
            _check_attributes(element, self.sublabel_attributes[(label.id, element.label_id)])
        return kind


def _attributes_by_id(label) -> dict:
    return {attribute.id: (attribute, attribute_value_validator(attribute))
            for attribute in getattr(label, "attributes", [])}


def _check_header(annotation, what: str) -> None:
    if hasattr(annotation, "id"):
        raise BadFunctionError(f"{what} with preset id")
    if hasattr(annotation, "source"):
        raise BadFunctionError(f"{what} with preset source")
    if annotation.frame != 0:
        raise BadFunctionError(f"{what} with unexpected frame number ({annotation.frame})")


def _check_attributes(annotation, declared: dict) -> None:
    seen = set()
    for attribute in getattr(annotation, "attributes", []):
        if attribute.spec_id not in declared:
            raise BadFunctionError(f"function output attribute with unknown ID ({attribute.spec_id})")
        if attribute.spec_id in seen:
            raise BadFunctionError("function output shape with multiple attributes with same ID")
        seen.add(attribute.spec_id)
        if not declared[attribute.spec_id][1](attribute.value):
            raise BadFunctionError(f"function output attribute value ({attribute.value!r}) "
                                   f"that is unsuitable for its attribute ({attribute.spec_id})")
