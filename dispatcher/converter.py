"""Label mapping and result conversion of CVAT's lambda manager (docs/wire-format.md §4).

``build_mapping`` turns a request's ``mapping`` (or the default by-name mapping) into model label ->
task label, attributes and skeleton sublabels; ``convert`` turns one frame of detector items into
CVAT's tags and shapes (the [new] online reply of §3.6 and what offline jobs store). Unlike CVAT,
select/radio values must match exactly (§D15), ``conv_mask_to_poly`` without a polygon gives
polygons traced from the mask (#16) and masks are binarised (#19). Thresholds are the function's
business (#1): nothing here filters on confidence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from serverless.common import masks
from serverless.common.metadata import SHAPE_TYPES, LabelSpec


class MappingError(ValueError):
    """A requested mapping CVAT refuses with 400; the message names the label or attribute."""


class BadFunctionOutput(ValueError):
    """A function returned items that cannot be converted; the caller fails that frame."""


@dataclass(frozen=True)
class TaskAttribute:
    id: int
    name: str
    input_type: str
    values: tuple[str, ...]  # number: (min, max, step), CVAT's "min\nmax\nstep" split by lines


@dataclass(frozen=True)
class TaskLabel:
    id: int
    name: str
    type: str = "any"
    attributes: tuple[TaskAttribute, ...] = ()
    sublabels: tuple[TaskLabel, ...] = ()


@dataclass(frozen=True)
class LabelMapping:
    """Where one model label's results go in the task."""

    task_label: TaskLabel
    attributes: dict[str, TaskAttribute] = field(default_factory=dict)  # model attribute name -> task attribute
    sublabels: dict[str, LabelMapping] = field(default_factory=dict)  # skeletons: model sublabel name -> mapping


class Conversion(NamedTuple):
    tags: list[dict]
    shapes: list[dict]
    # What was left out although its label was mapped: attribute values failing 4.5's checks (CVAT
    # drops them silently) and masks too small to trace into a polygon, one readable line each.
    dropped: list[str]


def _compatible_types(model_type: str, task_type: str) -> bool:
    """Section 4.3."""
    return (
        model_type == task_type
        or (task_type == "any" and model_type != "skeleton")
        or (model_type == "any" and task_type != "skeleton")
        or {model_type, task_type} <= {"mask", "polygon"}
    )


def build_mapping(function_labels: tuple[LabelSpec, ...], task_labels: tuple[TaskLabel, ...],
                  requested: dict | None) -> dict[str, LabelMapping]:
    """Model label name -> its mapping: by name when ``requested`` is missing or empty (§4.2), else
    the requested one, validated (§4.4). Raises MappingError."""
    if not requested:
        return _default_mapping(function_labels, task_labels)
    return _requested_mapping(requested, function_labels, task_labels, skeleton=None)


def _default_mapping(function_labels, task_labels) -> dict[str, LabelMapping]:
    task_by_name = {label.name: label for label in task_labels}
    mapping = {}
    for model_label in function_labels:
        task_label = task_by_name.get(model_label.name)
        if task_label is None or not _compatible_types(model_label.type, task_label.type):
            continue
        mapping[model_label.name] = LabelMapping(
            task_label,
            _attributes_by_name(model_label, task_label),
            _default_mapping(model_label.sublabels, task_label.sublabels) if model_label.type == "skeleton" else {},
        )
    return mapping


def _attributes_by_name(model_label: LabelSpec, task_label: TaskLabel) -> dict[str, TaskAttribute]:
    task_attributes = {attribute.name: attribute for attribute in task_label.attributes}
    return {a.name: task_attributes[a.name] for a in model_label.attributes if a.name in task_attributes}


def _requested_mapping(requested, function_labels, task_labels, *, skeleton: str | None) -> dict[str, LabelMapping]:
    """Validate one level of a requested mapping; ``skeleton`` names the model skeleton for sublabels."""
    model_kind, task_kind = ("model label", "task label") if skeleton is None else ("model sublabel", "task sublabel")
    of_skeleton = "" if skeleton is None else f" of skeleton {skeleton!r}"
    if not isinstance(requested, dict):
        what = "mapping" if skeleton is None else f"sublabels{of_skeleton}"
        raise MappingError(f"Invalid mapping. The {what} must be an object of {model_kind} -> {task_kind}")
    model_by_name = {label.name: label for label in function_labels}
    task_by_name = {label.name: label for label in task_labels}
    mapping: dict[str, LabelMapping] = {}
    mapped_from: dict[int, str] = {}  # task sublabel id -> model sublabel name
    for model_name, entry in requested.items():
        model_label = model_by_name.get(model_name)
        if model_label is None:
            raise MappingError(f"Invalid mapping. Unknown {model_kind} {model_name!r}{of_skeleton}")
        old_form = isinstance(entry, str)  # [old] {"car": "car"} (§4.1)
        if old_form:
            entry = {"name": entry}
        elif not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
            raise MappingError(f"Invalid mapping. The {model_kind} {model_name!r}{of_skeleton} must map to a "
                               f'{task_kind} name or an object with "name"')
        task_label = task_by_name.get(entry["name"])
        if task_label is None:
            raise MappingError(f"Invalid mapping. Unknown {task_kind} {entry['name']!r} "
                               f"(mapped from {model_kind} {model_name!r}{of_skeleton})")
        if not _compatible_types(model_label.type, task_label.type):
            raise MappingError(f"Invalid mapping. The {model_kind} {model_name!r} ({model_label.type}) and the "
                               f"{task_kind} {task_label.name!r} ({task_label.type}) are not compatible")
        if skeleton is not None:
            # A skeleton has one element per sublabel: two model points cannot share one.
            if task_label.id in mapped_from:
                raise MappingError(f"Invalid mapping. The task sublabel {task_label.name!r}{of_skeleton} is mapped "
                                   f"from both {mapped_from[task_label.id]!r} and {model_name!r}")
            mapped_from[task_label.id] = model_name
        # The [old] form predates attribute mapping; old CVAT kept attributes by name.
        attributes = (_attributes_by_name(model_label, task_label) if old_form
                      else _requested_attributes(entry.get("attributes") or {}, model_label, task_label))
        sublabels = {}
        if model_label.type == "skeleton":  # 4.3: only ever compatible with a task skeleton
            if not entry.get("sublabels"):
                raise MappingError(f"Invalid mapping. The skeleton {model_name!r} is mapped without sublabels")
            sublabels = _requested_mapping(entry["sublabels"], model_label.sublabels, task_label.sublabels,
                                           skeleton=model_name)
        mapping[model_name] = LabelMapping(task_label, attributes, sublabels)
    return mapping


def _requested_attributes(requested, model_label: LabelSpec, task_label: TaskLabel) -> dict[str, TaskAttribute]:
    if not isinstance(requested, dict) or not all(isinstance(v, str) for v in requested.values()):
        raise MappingError(f"Invalid mapping. The attributes of {model_label.name!r} must be an object of "
                           "model attribute -> task attribute name")
    model_names = {attribute.name for attribute in model_label.attributes}
    task_by_name = {attribute.name: attribute for attribute in task_label.attributes}
    attributes: dict[str, TaskAttribute] = {}
    for model_name, task_name in requested.items():
        if model_name not in model_names:
            raise MappingError(f"Invalid mapping. Unknown model attribute {model_name!r} of {model_label.name!r}")
        if task_name not in task_by_name:
            raise MappingError(f"Invalid mapping. Unknown task attribute {task_name!r} of {task_label.name!r}")
        # One value per attribute in a shape: two model attributes cannot feed one task attribute.
        already = next((m for m, t in attributes.items() if t.name == task_name), None)
        if already is not None:
            raise MappingError(f"Invalid mapping. The task attribute {task_name!r} of {task_label.name!r} is mapped "
                               f"from both {already!r} and {model_name!r}")
        attributes[model_name] = task_by_name[task_name]
    return attributes


# Point counts per shape type: exact, or at least (CVAT's minimum vertices).
_EXACT_COORDINATES = {"rectangle": 4, "ellipse": 4, "cuboid": 16}
_MIN_COORDINATES = {"polygon": 6, "polyline": 4, "points": 2}
_INTEGER = re.compile(r"-?[0-9]+")


def convert(items: list, mapping: dict[str, LabelMapping], frame: int, conv_mask_to_poly: bool) -> Conversion:
    """One frame of detector items -> CVAT tags and shapes (§4.5, §4.6). Items of unmapped labels are
    dropped; raises BadFunctionOutput for a malformed item, so nothing of a bad frame is kept."""
    if not isinstance(items, list):
        raise BadFunctionOutput(f"a detector must return a list of items, got {type(items).__name__}")
    tags: list[dict] = []
    shapes: list[dict] = []
    dropped: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("label"), str):
            raise BadFunctionOutput(f"item {index}: expected an object with a string 'label'")
        label_mapping = mapping.get(item["label"])
        if label_mapping is None:  # 4.5.1
            continue
        where = f"item {index} ({item['label']!r})"
        shape_type = item.get("type")
        if not isinstance(shape_type, str):
            raise BadFunctionOutput(f"{where}: 'type' must be a string")
        attributes = _attributes(item, label_mapping, where, dropped)
        if shape_type.lower() == "tag":  # tags in any case (§1.6)
            tags.append({"frame": frame, "label_id": label_mapping.task_label.id, "source": "auto",
                         "group": None, "attributes": attributes})
        elif shape_type == "mask":
            shapes.extend(_mask_shapes(item, label_mapping, attributes, frame, conv_mask_to_poly, where, dropped))
        elif shape_type == "skeleton":
            skeleton = _skeleton(item, label_mapping, attributes, frame, where, dropped)
            if skeleton is not None:
                shapes.append(skeleton)
        elif shape_type in SHAPE_TYPES:
            shapes.append(_shape(item, label_mapping, attributes, frame, where, shape_type,
                                 checked_points(item.get("points"), shape_type, where)))
        else:
            raise BadFunctionOutput(f"{where}: unknown type {shape_type!r}")
    return Conversion(tags, shapes, dropped)


def _shape(item: dict, label_mapping: LabelMapping, attributes: list[dict], frame: int, where: str,
           shape_type: str, points: list) -> dict:
    group = item.get("group_id")
    if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 0):
        raise BadFunctionOutput(f"{where}: 'group_id' must be a non-negative integer, got {group!r}")
    outside = item.get("outside", False)
    if not isinstance(outside, bool):
        raise BadFunctionOutput(f"{where}: 'outside' must be true or false, got {outside!r}")
    shape = {"frame": frame, "label_id": label_mapping.task_label.id, "source": "auto", "type": shape_type,
             "points": points}
    if shape_type in ("rectangle", "ellipse"):
        rotation = item.get("rotation", 0)
        if not is_number(rotation):
            raise BadFunctionOutput(f"{where}: 'rotation' must be a number of degrees, got {rotation!r}")
        shape["rotation"] = rotation
    shape.update({"occluded": False, "outside": outside, "z_order": 0, "group": group,
                  "attributes": [dict(attribute) for attribute in attributes]})
    score = _score(item.get("confidence"))
    if score is not None:
        shape["score"] = score
    return shape


def _score(confidence) -> float | None:
    """The item's confidence as a number (CVAT functions send strings such as "0.99"), kept as our
    ``score`` extension so viewers can show it; absent or unreadable: none, never an error (§1.6)."""
    try:
        value = float(confidence)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and not isinstance(confidence, bool) else None


def checked_points(value, shape_type: str, where: str) -> list:
    points = [] if value is None else value
    if not isinstance(points, list) or not all(is_number(v) for v in points):
        raise BadFunctionOutput(f"{where}: 'points' must be a flat list of finite numbers")
    if shape_type in _EXACT_COORDINATES and len(points) != _EXACT_COORDINATES[shape_type]:
        raise BadFunctionOutput(f"{where}: {shape_type} points need exactly {_EXACT_COORDINATES[shape_type]} "
                                f"coordinates, got {len(points)}")
    if shape_type in _MIN_COORDINATES and len(points) < _MIN_COORDINATES[shape_type]:
        raise BadFunctionOutput(f"{where}: {shape_type} points need at least {_MIN_COORDINATES[shape_type]} "
                                f"coordinates, got {len(points)}")
    if len(points) % 2:
        raise BadFunctionOutput(f"{where}: 'points' must hold x, y pairs, got {len(points)} numbers")
    return list(points)


def is_int(value) -> bool:
    """An integer, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An integer or a finite float, and not a bool."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _mask_shapes(item: dict, label_mapping: LabelMapping, attributes: list[dict], frame: int,
                 conv_mask_to_poly: bool, where: str, dropped: list[str]) -> list[dict]:
    crop, box = _function_mask(item.get("mask"), where)
    # Optional polygon for conv_mask_to_poly (§1.6); our functions send [] when they have none.
    polygon = checked_points(item["points"], "polygon", where) if item.get("points") else []
    if not conv_mask_to_poly:
        return [_shape(item, label_mapping, attributes, frame, where, "mask", masks.rle_encode(crop) + list(box))]
    if polygon:
        polygons = [polygon]
    else:  # §D16: CVAT stores the mask; trace it instead, one shape per outer contour
        xtl, ytl, _, _ = box
        polygons = masks.mask_to_polygons(crop, offset=(xtl, ytl))
        if not polygons:
            dropped.append(f"{where}: the mask has no outline of 3 or more points to make a polygon")
    return [_shape(item, label_mapping, attributes, frame, where, "polygon", points) for points in polygons]


def _function_mask(value, where: str) -> tuple[np.ndarray, masks.Box]:
    """Decode (and binarise, §D19) the function mask format of §1.6."""
    values = np.asarray(value) if isinstance(value, list) else None
    if values is None or values.ndim != 1 or values.dtype.kind not in "iuf" or not np.isfinite(values).all():
        raise BadFunctionOutput(f"{where}: 'mask' must be a flat list of numbers (pixels, then xtl, ytl, xbr, ybr)")
    box = values[-4:]
    if (box != np.floor(box)).any() or (box < 0).any():
        raise BadFunctionOutput(f"{where}: the mask box must be 4 non-negative integers, got {box.tolist()}")
    try:
        return masks.from_function_mask(values)
    except ValueError as error:
        raise BadFunctionOutput(f"{where}: {error}") from None


def _skeleton(item: dict, label_mapping: LabelMapping, attributes: list[dict], frame: int, where: str,
              dropped: list[str]) -> dict | None:
    skeleton = _shape(item, label_mapping, attributes, frame, where, "skeleton",
                      checked_points(item.get("points"), "skeleton", where))
    elements = item.get("elements") or []
    if not isinstance(elements, list):
        raise BadFunctionOutput(f"{where}: 'elements' must be a list")
    by_sublabel: dict[int, dict] = {}  # task sublabel id -> element shape
    for index, element in enumerate(elements):
        element_where = f"{where} element {index}"
        if not isinstance(element, dict) or not isinstance(element.get("label"), str):
            raise BadFunctionOutput(f"{element_where}: expected an object with a string 'label'")
        sublabel_mapping = label_mapping.sublabels.get(element["label"])
        if sublabel_mapping is None:  # 4.5.3
            continue
        element_where = f"{element_where} ({element['label']!r})"
        if element.get("type") != "points":
            raise BadFunctionOutput(f"{element_where}: skeleton elements must be of type points, "
                                    f"got {element.get('type')!r}")
        points = checked_points(element.get("points"), "points", element_where)
        if len(points) != 2:
            raise BadFunctionOutput(f"{element_where}: a skeleton element is one point, got {len(points)} numbers")
        sublabel_id = sublabel_mapping.task_label.id
        if sublabel_id in by_sublabel:
            raise BadFunctionOutput(f"{element_where}: the skeleton has this element twice")
        element_attributes = _attributes(element, sublabel_mapping, element_where, dropped)
        by_sublabel[sublabel_id] = _shape(element, sublabel_mapping, element_attributes, frame, element_where,
                                          "points", points)
    # 4.5.4: a task sublabel without an element becomes an outside point at the present elements'
    # centroid, and a skeleton with every element outside is dropped.
    if not by_sublabel:
        return None
    centroid = np.mean([element["points"] for element in by_sublabel.values()], axis=0).tolist()
    skeleton["elements"] = [
        by_sublabel.get(sublabel.id) or {
            "frame": frame, "label_id": sublabel.id, "source": "auto", "type": "points", "points": list(centroid),
            "occluded": False, "outside": True, "z_order": 0, "group": None, "attributes": []}
        for sublabel in label_mapping.task_label.sublabels
    ]
    return None if all(element["outside"] for element in skeleton["elements"]) else skeleton


def _attributes(item: dict, label_mapping: LabelMapping, where: str, dropped: list[str]) -> list[dict]:
    """Mapped attributes whose values pass the task attribute's check (§4.5.2), as CVAT's ``spec_id``s."""
    raw = item.get("attributes") or []
    if not isinstance(raw, list):
        raise BadFunctionOutput(f"{where}: 'attributes' must be a list of {{name, value}}")
    attributes = []
    seen: set[str] = set()
    for attribute in raw:
        if not (isinstance(attribute, dict) and isinstance(attribute.get("name"), str)
                and isinstance(attribute.get("value"), str)):
            raise BadFunctionOutput(f"{where}: each attribute must be {{\"name\": string, \"value\": string}}, "
                                    f"got {attribute!r}")
        name, value = attribute["name"], attribute["value"]
        if name in seen:
            raise BadFunctionOutput(f"{where}: attribute {name!r} appears twice")
        seen.add(name)
        task_attribute = label_mapping.attributes.get(name)
        if task_attribute is None:
            continue
        problem = _value_problem(value, task_attribute)
        if problem:
            dropped.append(f"{where}: attribute {name!r} value {value!r} dropped: {problem}")
            continue
        attributes.append({"spec_id": task_attribute.id, "value": value})
    return attributes


def _value_problem(value: str, attribute: TaskAttribute) -> str | None:
    """Why ``value`` is not valid for ``attribute`` (the table of §4.5), or None when it is."""
    if attribute.input_type == "number":
        low, high, step = attribute.values
        if (not _INTEGER.fullmatch(value) or not Fraction(low) <= int(value) <= Fraction(high)
                or (int(value) - Fraction(low)) % Fraction(step)):
            return f"not an integer in [{low}, {high}] in steps of {step}"
    elif attribute.input_type == "checkbox":
        if value not in ("true", "false"):
            return "not true or false"
    elif attribute.input_type in ("select", "radio"):
        if value not in attribute.values:  # exact membership, not CVAT's substring test (§D15)
            return f"not one of {', '.join(attribute.values)}"
    elif attribute.input_type != "text":
        return f"unknown input type {attribute.input_type!r}"
    return None
