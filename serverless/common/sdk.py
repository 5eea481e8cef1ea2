"""cvat-sdk auto-annotation functions (cvat-compat.md section 7) in our world, one implementation for
both directions:

- ``load_function``: cvat-cli's loading rules (a module by name or a file; ``create(**parameters)``
  when the module has it, ``TypeError`` when it has not and parameters are given).
- ``function_kind``, ``spec_labels``, ``function_annotations``: what a function.yaml declares for a
  detection, interaction or tracking function.
- ``LabelIndex.check``: the output rules that need only the function's own spec
  (``BadFunctionError``); the driver adds the task-side rules (``dispatcher.auto_annotation``).
- ``detection_items``: SDK annotations -> CVAT function result items (1.6), for serving.
- ``detection_function_from_folder``: the other way, one of our detector folders as an SDK function.
- ``handler``: the nuclio handler that serves the function named by the ``SDK_FUNCTION_*`` settings.

The SDK's model objects (``cvat_sdk.models``) are read duck-typed: an unset optional field is an
``AttributeError`` on them, so ``hasattr`` means "set", as in the SDK's own driver.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
from importlib.metadata import version as package_version
import json
import logging
import math
import secrets
import shlex
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from cvat_sdk import models
from cvat_sdk.attributes import attribute_value_validator
from cvat_sdk.auto_annotation import (
    BadFunctionError,
    TrackingFunctionContext,
    DetectionFunctionContext,
    DetectionFunctionSpec,
    InteractionFunctionContext,
    InteractionFunctionSpec,
    InteractionPrompts,
    InteractionResultAttributes,
    TrackableShape,
    TrackingFunctionShapeContext,
    TrackingFunctionSpec,
    attribute_spec,
    label_spec,
    mask,
    polygon,
    shape,
    tag,
)
from cvat_sdk.masks import decode_mask
from PIL import Image

from serverless.common import masks, settings
from serverless.common.handler import BadRequest, detector_handler, json_handler
from serverless.common.interactors import Interaction, Segmentation, interactor_handler
from serverless.common.metadata import FunctionMeta

log = logging.getLogger(__name__)

TRACKER_STATE_SECONDS = 8 * 3600  # as cvat-cli's agent keeps tracking states


# Loading (cvat-compat.md 7.7)

def parse_parameter(text: str) -> tuple[str, Any]:
    """cvat-cli's ``-p NAME=TYPE:VALUE``, TYPE one of int, float, str, bool."""
    name, equals, typed = text.partition("=")
    kind, colon, value = typed.partition(":")
    if not equals or not name:
        raise ValueError(f"parameter {text!r}: expected NAME=TYPE:VALUE")
    if not colon:
        raise ValueError(f"parameter {text!r}: the type is missing (NAME=TYPE:VALUE, TYPE int, float, str or bool)")
    try:
        if kind == "int":
            return name, int(value)
        if kind == "float":
            return name, float(value)
        if kind == "bool":
            return name, _bool(value)
    except ValueError:
        raise ValueError(f"parameter {text!r}: {value!r} is not a valid {kind}") from None
    if kind == "str":
        return name, value
    raise ValueError(f"parameter {text!r}: unsupported type {kind!r} (int, float, str or bool)")


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "t", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "f", "no", "n", "off"):
        return False
    raise ValueError(value)


def load_function(module: str | None = None, file: Path | None = None, parameters: dict | None = None):
    """The function a module (by name) or a Python file defines; ``create(**parameters)`` if the
    module is a factory."""
    if (module is None) == (file is None):
        raise ValueError("name exactly one of a function module or a function file")
    parameters = parameters or {}
    if module is not None:
        function = importlib.import_module(module)
    else:
        spec = importlib.util.spec_from_file_location("__cvat_function__", file)
        if spec is None or not Path(file).is_file():
            raise FileNotFoundError(f"function file {file} does not exist or is not a Python file")
        function = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(function)
    if hasattr(function, "create"):
        function = function.create(**parameters)
    elif parameters:
        raise TypeError(f"function takes no parameters (it has no create()), got {', '.join(parameters)}")
    if not hasattr(function, "spec"):
        raise BadFunctionError("function has no 'spec' attribute")
    return function


def function_kind(function) -> str:
    """``detector``, ``interactor`` or ``tracker``; the spec is checked again here, so a spec object
    built without the SDK's validators is held to the same rules."""
    spec = function.spec
    if isinstance(spec, DetectionFunctionSpec):
        DetectionFunctionSpec(labels=spec.labels)  # runs the SDK's spec validation
        return "detector"
    if isinstance(spec, InteractionFunctionSpec):
        return "interactor"
    if isinstance(spec, TrackingFunctionSpec):
        return "tracker"
    raise BadFunctionError(f"function spec is a {type(spec).__name__}, not a DetectionFunctionSpec, "
                           "InteractionFunctionSpec or TrackingFunctionSpec")


# What a function.yaml declares

def value(field) -> Any:
    """The plain value of an SDK enum model (``ShapeType``, ``InputTypeEnum``) or of a plain field."""
    return getattr(field, "value", field)


def label_type(label) -> str:
    return value(getattr(label, "type", "any")) or "any"


def spec_labels(spec: DetectionFunctionSpec) -> list[dict]:
    """The function's labels as ``annotations.spec`` entries (cvat-compat.md 1.4)."""
    return [_label_entry(label) for label in spec.labels]


def _label_entry(label) -> dict:
    entry = {"id": label.id, "name": label.name, "type": label_type(label),
             "attributes": [{"name": a.name, "input_type": value(a.input_type), "values": list(a.values)}
                            for a in getattr(label, "attributes", [])]}
    sublabels = getattr(label, "sublabels", [])
    if sublabels:
        entry["sublabels"] = [_label_entry(sublabel) for sublabel in sublabels]
        entry["svg"] = getattr(label, "svg", None) or skeleton_svg([sublabel.name for sublabel in sublabels])
    return entry


def skeleton_svg(names: list[str]) -> str:
    """A layout for a skeleton that declares none (CVAT requires one): the points on a circle, in
    CVAT's skeleton SVG vocabulary, on its 100 x 100 canvas."""
    circles = []
    for index, name in enumerate(names, start=1):
        angle = 2 * math.pi * (index - 1) / len(names)
        x, y = 50 + 40 * math.sin(angle), 50 - 40 * math.cos(angle)
        circles.append(f'<circle r="1.5" cx="{x:.2f}" cy="{y:.2f}" data-type="element node" '
                       f'data-element-id="{index}" data-node-id="{index}" data-label-name="{name}"></circle>')
    return "".join(circles)


def function_annotations(function, *, name: str) -> dict:
    """``metadata.annotations`` for serving ``function`` (CVAT reads them; 1.3)."""
    kind = function_kind(function)
    spec = function.spec
    annotations: dict[str, Any] = {"name": name, "type": kind}
    if kind == "detector":
        # One label per line, as our function.yaml files write them.
        annotations["spec"] = "[\n" + ",\n".join(f"  {json.dumps(label)}" for label in spec_labels(spec)) + "\n]\n"
    elif kind == "interactor":
        annotations.update(version=2, spec="", min_pos_points=spec.min_pos_points,
                           min_neg_points=-1 if spec.min_neg_points is None else spec.min_neg_points)
        # Booleans only when true: CVAT reads any non-empty string, "false" included, as true.
        if spec.min_bounding_boxes == 1:
            annotations["startswith_box"] = True
        elif spec.min_bounding_boxes == 0:
            annotations["startswith_box_optional"] = True
    else:
        annotations.update(spec="", supported_shape_types=",".join(sorted(spec.supported_shape_types)))
    return annotations


def function_yaml(function, *, function_id: str, name: str, description: str, module: str | None = None,
                  file: str | None = None, parameters: dict | None = None, base_image: str) -> dict:
    """A complete function.yaml serving ``function`` with ``serverless.common.sdk:handler``, built by
    nuclio on ``base_image`` (one of our framework bases: they hold the handler and cvat-sdk).

    A tracking function keeps its states in the worker's memory, so it gets one worker."""
    kind = function_kind(function)
    env = [{"name": "SDK_FUNCTION_MODULE", "value": module} if module else {"name": "SDK_FUNCTION_FILE", "value": file}]
    if parameters:
        env.append({"name": "SDK_FUNCTION_PARAMETERS", "value": json.dumps(parameters)})
    return {
        "metadata": {"name": function_id, "namespace": "cvat",
                     "annotations": function_annotations(function, name=name)},
        "spec": {
            "description": description,
            "runtime": "python:3.11",
            "handler": "serverless.common.sdk:handler",
            "eventTimeout": "30s",
            "build": {"image": f"cvat.sdk.{function_id}", "baseImage": base_image},
            "env": env,
            "triggers": {"myHttpTrigger": {
                "kind": "http", "numWorkers": 1 if kind == "tracker" else 2,
                "workerAvailabilityTimeoutMilliseconds": 10000,
                "attributes": {"maxRequestBodySize": 33554432}}},
            "platform": {"attributes": {"restartPolicy": {"name": "always", "maximumRetryCount": 3},
                                        "mountMode": "volume"}},
        },
    }


# Detection output rules that need only the function's spec (7.2)

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


# Serving a detection function: SDK annotations -> CVAT function items (1.6)

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


def detection_context(frame_name: str, conf_threshold: float | None, conv_mask_to_poly: bool) -> DetectionFunctionContext:
    return _DetectionContext(frame_name, conf_threshold, conv_mask_to_poly)


# One of our detector folders as an SDK detection function (the built-ins in serverless.sdk_functions)

class FolderDetectionFunction:
    """A detector function folder (function.yaml + main.py) behind the SDK's detection protocol:
    the spec comes from function.yaml (ids: the spec's class ids), ``detect`` calls the folder's
    model in process and turns its result items back into SDK annotations."""

    def __init__(self, folder: Path, default_threshold: float):
        self.meta = FunctionMeta.from_nuclio(yaml.safe_load((folder / "function.yaml").read_text()))
        self.default_threshold = default_threshold
        self.spec = DetectionFunctionSpec(labels=[
            label_spec(label.name, label.id if label.id is not None else number, type=label.type, attributes=[
                attribute_spec(a.name, a_number, a.input_type, list(a.values)) for a_number, a in enumerate(label.attributes)])
            for number, label in enumerate(self.meta.labels)])
        self._labels = {entry.name: entry for entry in self.spec.labels}
        main = import_folder_module(folder, "main")
        self._context = types.SimpleNamespace(logger=log, user_data=types.SimpleNamespace())
        main.init_context(self._context)
        self._detect = main.handler.detect

    def detect(self, context: DetectionFunctionContext, image: Image.Image) -> list:
        threshold = self.default_threshold if context.conf_threshold is None else context.conf_threshold
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        results = []
        for item in self._detect(self._context, rgb, threshold, {}):
            label = self._labels[item["label"]]
            by_name = {a.name: a.id for a in getattr(label, "attributes", [])}
            extra = {"attributes": [models.AttributeValRequest(spec_id=by_name[a["name"]], value=a["value"])
                                    for a in item.get("attributes", [])]}
            if item["type"] == "tag":
                results.append(tag(label.id, **extra))
                continue
            if "confidence" in item:
                extra["score"] = float(item["confidence"])
            if item["type"] != "mask":
                results.append(shape(label.id, type=item["type"], points=item["points"], **extra))
                continue
            crop, (xtl, ytl, xbr, ybr) = masks.from_function_mask(item["mask"])
            if context.conv_mask_to_poly:
                outline = item["points"] or max(masks.mask_to_polygons(crop, offset=(xtl, ytl)), key=len)
                results.append(polygon(label.id, outline, **extra))
            else:
                results.append(mask(label.id, masks.rle_encode(crop) + [xtl, ytl, xbr, ybr], **extra))
        return results


def import_folder_module(folder: Path, name: str) -> types.ModuleType:
    """Import ``folder/<name>.py`` as nuclio would (the folder first on ``sys.path``) under a name of
    its own, so several folders' ``main`` and ``model_handler`` modules live in one process."""
    shadowed = {module: sys.modules.pop(module) for module in ("main", "model_handler") if module in sys.modules}
    unique = f"_function_{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]}_{name}"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(unique, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
        for module_name in ("main", "model_handler"):
            sys.modules.pop(module_name, None)
        sys.modules.update(shadowed)
    return module


# Serving under nuclio: handler = serverless.common.sdk:handler

def init_context(context):
    function_settings = settings.current()
    function = load_function(function_settings.sdk_function_module, function_settings.sdk_function_file,
                             function_settings.sdk_function_parameters)
    kind = function_kind(function)
    context.logger.info(f"Serving cvat-sdk {kind} function "
                        f"{function_settings.sdk_function_module or function_settings.sdk_function_file}")
    context.user_data.handler = {"detector": _detector, "interactor": _interactor, "tracker": _tracker}[kind](function)


def handler(context, event):
    try:
        return context.user_data.handler(context, event)
    except BadFunctionError as error:
        # The function broke the SDK's protocol: the function's fault (500), said in words.
        return context.Response(body=f"the cvat-sdk function broke its protocol: {error}",
                                status_code=500, content_type="text/plain")


def _detector(function):
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


def _interactor(function):
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


class _TrackingContext(TrackingFunctionContext):
    pass


class _ShapeContext(TrackingFunctionShapeContext):
    def __init__(self, original_shape_type: str):
        self._type = original_shape_type

    original_shape_type = property(lambda self: self._type)


def _tracker(function):
    from serverless.common.images import decode_image

    supported = set(function.spec.supported_shape_types)
    states: dict[str, tuple[float, tuple[int, int], str, Any]] = {}  # id -> (created, image size, type, state)
    lock = threading.Lock()

    def preprocess(image: Image.Image):
        if hasattr(function, "preprocess_image"):
            return function.preprocess_image(_TrackingContext(), image)
        return image

    def process(body: dict) -> dict:
        image = decode_image(body.get("image"))
        shapes, given_states = body.get("shapes"), body.get("states") or []
        if not isinstance(shapes, list) or not isinstance(given_states, list):
            raise BadRequest("'shapes' and 'states' must be lists (CVAT's tracker protocol)")
        if given_states and len(given_states) != len(shapes):
            raise BadRequest(f"'shapes' has {len(shapes)} entries and 'states' {len(given_states)}; they go in pairs")
        pp_image = preprocess(image)
        now = time.monotonic()
        with lock:
            for key in [key for key, entry in states.items() if now - entry[0] > TRACKER_STATE_SECONDS]:
                del states[key]
        reply_shapes, reply_states = [], []
        for index, shape in enumerate(shapes):
            state_id = given_states[index] if given_states else None
            if state_id is None:
                trackable = _trackable(shape, index, supported)
                state = function.init_tracking_state(_ShapeContext(trackable.type), pp_image, trackable)
                state_id = secrets.token_urlsafe(18)
                with lock:
                    states[state_id] = (now, image.size, trackable.type, state)
                reply_shapes.append({"type": trackable.type, "points": list(trackable.points)})
            else:
                with lock:
                    entry = states.get(state_id) if isinstance(state_id, str) else None
                if entry is None:
                    raise BadRequest(f"'states[{index}]': unknown or expired tracker state")
                _, size, original_type, state = entry
                if size != image.size:
                    raise BadRequest(f"'image' is {image.size[0]}x{image.size[1]}, but states[{index}] was made "
                                     f"on a {size[0]}x{size[1]} image")
                tracked = function.track(_ShapeContext(original_type), pp_image, state)
                if tracked is not None and tracked.type != original_type:
                    raise BadFunctionError(f"function tracked a {original_type!r} shape as a {tracked.type!r}")
                reply_shapes.append(None if tracked is None else {"type": tracked.type, "points": list(tracked.points)})
            reply_states.append(state_id)
        return {"shapes": reply_shapes, "states": reply_states}

    return json_handler(lambda context, body: process(body))


def _trackable(shape, index: int, supported: set[str]) -> TrackableShape:
    """A shape to start tracking: CVAT's shape object, or a legacy bare ``[x1, y1, x2, y2]``."""
    if isinstance(shape, list):
        shape = {"type": "rectangle", "points": shape}
    if not isinstance(shape, dict) or not isinstance(shape.get("points"), list):
        raise BadRequest(f"'shapes[{index}]' must be a shape {{\"type\", \"points\"}} to start tracking")
    if shape.get("type") not in supported:
        raise BadRequest(f"'shapes[{index}].type' must be one of {', '.join(sorted(supported))}, got {shape.get('type')!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in shape["points"]):
        raise BadRequest(f"'shapes[{index}].points' must be numbers")
    return TrackableShape(type=shape["type"], points=[float(v) for v in shape["points"]])


# python -m serverless.common.sdk --function-module M --id ID ...

class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the label spec) as ``|`` blocks, readable in the file."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serverless.common.sdk",
                                     description="Write the function.yaml that serves a cvat-sdk function")
    parser.add_argument("--function-module", metavar="MODULE")
    parser.add_argument("--function-file", metavar="PATH", help="relative to the function folder when served")
    parser.add_argument("-p", "--function-parameter", metavar="NAME=TYPE:VALUE", action="append", default=[])
    parser.add_argument("--id", required=True, help="the function id (metadata.name)")
    parser.add_argument("--name", help="the display name (default: the id)")
    parser.add_argument("--description", default="", help="spec.description")
    parser.add_argument("--base-image", default=f"cvat.autoannotate.openvino:{package_version('cvat-autoannotate')}",
                        help="nuclio's spec.build.baseImage: one of our framework bases, e.g. cvat.autoannotate.pytorch:"
                             "<version> for a function that needs torch (default: %(default)s)")
    args = parser.parse_args(argv)
    if (args.function_module is None) == (args.function_file is None):
        parser.error("give exactly one of --function-module and --function-file")
    try:
        parameters = dict(parse_parameter(text) for text in args.function_parameter)
        function = load_function(args.function_module, Path(args.function_file) if args.function_file else None,
                                 parameters)
        document = function_yaml(function, function_id=args.id, name=args.name or args.id,
                                 description=args.description or f"cvat-sdk function {args.function_module or args.function_file}",
                                 module=args.function_module, file=args.function_file, parameters=parameters,
                                 base_image=args.base_image)
    except (ValueError, TypeError, BadFunctionError, ImportError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "-m", "serverless.common.sdk", *(sys.argv[1:] if argv is None else argv)])
    print(f"# Serves a cvat-sdk function. Written by (in this folder):\n#   {command}\n"
          + yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=120), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
