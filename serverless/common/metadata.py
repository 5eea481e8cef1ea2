"""CVAT function metadata: the ``metadata.annotations`` of a function.yaml and its label spec.

The nuclio dashboard returns every annotation as a string, so YAML values are first turned into the
same strings. Validation is stricter than CVAT's where CVAT is wrong (docs/wire-format.md §8):
booleans must really be booleans (``"false"`` is false) and select values are exact.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FUNCTION_KINDS = ("detector", "interactor", "reid", "tracker")
LABEL_TYPES = ("rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask", "skeleton", "tag", "any")
SHAPE_TYPES = tuple(t for t in LABEL_TYPES if t not in ("tag", "any", "skeleton"))
INPUT_TYPES = ("number", "select", "radio", "checkbox", "text")
FUNCTION_ID = re.compile(r"^[a-zA-Z0-9_.-]+$")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


class MetadataError(ValueError):
    """Invalid function metadata; the message starts with the field it is about."""


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    input_type: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class LabelSpec:
    name: str
    type: str = "any"
    id: int | None = None
    attributes: tuple[AttributeSpec, ...] = ()
    sublabels: tuple[LabelSpec, ...] = ()
    svg: str | None = None


@dataclass(frozen=True)
class FunctionMeta:
    id: str
    kind: str
    name: str
    description: str
    version: int = 1
    labels: tuple[LabelSpec, ...] = ()
    min_pos_points: int = 1
    min_neg_points: int = -1
    startswith_box: bool = False
    startswith_box_optional: bool = False
    help_message: str = ""
    animated_gif: str = ""
    supported_shape_types: tuple[str, ...] = field(default=())
    # Ours, which CVAT ignores: the most frames a detector takes in one call, {"images": [...]}
    # (docs/wire-format.md §D29); 1 (the default) is CVAT's one image per call.
    max_batch: int = 1

    @classmethod
    def from_nuclio(cls, config: dict) -> FunctionMeta:
        """Read a function config (a parsed function.yaml or a dashboard entry)."""
        metadata = _mapping(config.get("metadata"), "metadata")
        spec = _mapping(config.get("spec"), "spec")
        function_id = metadata.get("name")
        if not isinstance(function_id, str) or not FUNCTION_ID.match(function_id):
            raise MetadataError(f"metadata.name: must match {FUNCTION_ID.pattern}, got {function_id!r}")
        description = spec.get("description")
        if not isinstance(description, str):
            raise MetadataError("spec.description: required (CVAT reads it for every function)")
        annotations = annotation_strings(_mapping(metadata.get("annotations"), "metadata.annotations"))

        kind = annotations.get("type", "")
        if kind not in FUNCTION_KINDS:
            raise MetadataError(f"metadata.annotations.type: must be one of {', '.join(FUNCTION_KINDS)}, got {kind!r}")
        shape_types = tuple(t.strip() for t in annotations.get("supported_shape_types", "").split(",") if t.strip())
        for shape_type in shape_types:
            if shape_type not in SHAPE_TYPES:
                raise MetadataError(f"metadata.annotations.supported_shape_types: unknown shape type {shape_type!r}")
        return cls(
            id=function_id,
            kind=kind,
            name=annotations.get("name") or function_id,
            description=description,
            version=_int_annotation(annotations, "version", 1),
            labels=parse_label_spec(annotations.get("spec", "")),
            min_pos_points=_int_annotation(annotations, "min_pos_points", 1),
            min_neg_points=_int_annotation(annotations, "min_neg_points", -1),
            startswith_box=parse_bool(annotations.get("startswith_box", ""), "startswith_box"),
            startswith_box_optional=parse_bool(annotations.get("startswith_box_optional", ""),
                                               "startswith_box_optional"),
            help_message=annotations.get("help_message", ""),
            animated_gif=annotations.get("animated_gif", ""),
            supported_shape_types=shape_types,
            max_batch=_max_batch(annotations, kind),
        )


def label_names(function_yaml: Path) -> dict[int, str]:
    """Class id -> label name from a function's own spec, so a handler emits exactly those names."""
    meta = FunctionMeta.from_nuclio(yaml.safe_load(Path(function_yaml).read_text()))
    return {label.id: label.name for label in meta.labels if label.id is not None}


def annotation_strings(annotations: dict) -> dict[str, str]:
    """Annotations as the nuclio dashboard returns them: every value a string (YAML ``true`` -> ``"true"``)."""
    return {str(key): _annotation_string(value) for key, value in annotations.items()}


def _annotation_string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise MetadataError(f"metadata.annotations.{name}: must be true or false, got {value!r}")


def parse_label_spec(text: str) -> tuple[LabelSpec, ...]:
    """Parse ``annotations.spec`` (JSON text; empty means no labels)."""
    where = "metadata.annotations.spec"
    if not text.strip():
        return ()
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise MetadataError(f"{where}: not valid JSON: {error}") from None
    if not isinstance(entries, list):
        raise MetadataError(f"{where}: must be a JSON list of labels")
    return _labels(entries, where, sublabels=False)


def _labels(entries: list, where: str, *, sublabels: bool) -> tuple[LabelSpec, ...]:
    labels = tuple(_label(entry, f"{where}[{index}]", sublabel=sublabels) for index, entry in enumerate(entries))
    _no_duplicates([label.name for label in labels], where, "label")
    return labels


def _label(entry: Any, where: str, *, sublabel: bool) -> LabelSpec:
    entry = _mapping(entry, where)
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise MetadataError(f"{where}.name: required, a non-empty string")
    where = f"{where} ({name!r})"
    label_type = entry.get("type") or "any"
    if label_type == "unknown":  # pre-2022 spelling of "any"
        label_type = "any"
    if label_type not in LABEL_TYPES:
        raise MetadataError(f"{where}.type: must be one of {', '.join(LABEL_TYPES)}, got {label_type!r}")
    if sublabel and label_type != "points":
        raise MetadataError(f"{where}.type: skeleton sublabels must be points, got {label_type!r}")
    label_id = entry.get("id")
    if label_id is not None and (isinstance(label_id, bool) or not isinstance(label_id, int)):
        raise MetadataError(f"{where}.id: must be an integer, got {label_id!r}")

    raw_attributes = entry.get("attributes") or []
    if not isinstance(raw_attributes, list):
        raise MetadataError(f"{where}.attributes: must be a list")
    attributes = tuple(_attribute(a, f"{where}.attributes[{i}]") for i, a in enumerate(raw_attributes))
    _no_duplicates([a.name for a in attributes], f"{where}.attributes", "attribute")

    children: tuple[LabelSpec, ...] = ()
    svg = entry.get("svg")
    if label_type == "skeleton":
        if not isinstance(entry.get("sublabels"), list) or not entry["sublabels"]:
            raise MetadataError(f"{where}.sublabels: required for a skeleton")
        if not isinstance(svg, str) or not svg:
            raise MetadataError(f"{where}.svg: required for a skeleton")
        children = _labels(entry["sublabels"], f"{where}.sublabels", sublabels=True)
    elif entry.get("sublabels"):
        raise MetadataError(f"{where}.sublabels: only skeleton labels have sublabels")
    return LabelSpec(name=name, type=label_type, id=label_id, attributes=attributes, sublabels=children,
                     svg=svg if label_type == "skeleton" else None)


def _attribute(entry: Any, where: str) -> AttributeSpec:
    entry = _mapping(entry, where)
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise MetadataError(f"{where}.name: required, a non-empty string")
    where = f"{where} ({name!r})"
    input_type = entry.get("input_type")
    if input_type not in INPUT_TYPES:
        raise MetadataError(f"{where}.input_type: must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}")
    values = entry.get("values", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise MetadataError(f"{where}.values: must be a list of strings")
    if input_type == "number":
        try:
            low, high, step = (float(v) for v in values)
        except ValueError:
            raise MetadataError(f"{where}.values: a number attribute needs [min, max, step], got {values!r}") from None
        if low > high or step <= 0:
            raise MetadataError(f"{where}.values: need min <= max and step > 0, got {values!r}")
    elif input_type in ("select", "radio") and not values:
        raise MetadataError(f"{where}.values: a {input_type} attribute needs at least one value")
    return AttributeSpec(name=name, input_type=input_type, values=tuple(values))


def _int_annotation(annotations: dict[str, str], name: str, default: int) -> int:
    raw = annotations.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise MetadataError(f"metadata.annotations.{name}: must be an integer, got {raw!r}") from None


def _max_batch(annotations: dict[str, str], kind: str) -> int:
    value = _int_annotation(annotations, "max_batch", 1)
    if value < 1:
        raise MetadataError(f"metadata.annotations.max_batch: must be 1 or more, got {value}")
    if value > 1 and kind != "detector":
        raise MetadataError(f"metadata.annotations.max_batch: only detectors take batches, not {kind}s")
    return value


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MetadataError(f"{where}: must be a mapping, got {type(value).__name__}")
    return value


def _no_duplicates(names: list[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise MetadataError(f"{where}: {what} {name!r} appears twice")
        seen.add(name)
