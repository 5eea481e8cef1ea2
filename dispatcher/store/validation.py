"""What the task store accepts: labels in CVAT's REST shape, image files, and annotations (CVAT's
LabeledData: tags, shapes, tracks), each checked with a message that starts with the field.

Labels are checked with the function spec's own parser (same rules, same messages); annotations
against the task's labels, attributes and frames, with CVAT's defaults filled in.
"""

from __future__ import annotations

import json

from sqlalchemy import select

from dispatcher.converter import BadFunctionOutput, checked_points, is_int, is_number
from dispatcher.store.errors import InvalidInput
from dispatcher.store.rows import batches, task_row, task_size
from dispatcher.store.tables import annotations, attributes, labels
from serverless.common.handler import BadRequest
from serverless.common.images import open_image
from serverless.common.metadata import SHAPE_TYPES, MetadataError, parse_label_spec

KINDS = ("tags", "shapes", "tracks")
SHAPE_AND_SKELETON_TYPES = (*SHAPE_TYPES, "skeleton")
_SPEC_FIELD = "metadata.annotations.spec"  # how parse_label_spec names the label list in its messages
# CVAT's column sizes, which cvat-sdk checks when it reads a label: longer ones would break every client.
MAX_NAME = 64  # label and attribute names
MAX_DEFAULT_VALUE = 128
# Ids are positive and fit PostgreSQL's INTEGER, as CVAT's (SQLite's would hold more): no task, job,
# label or item has a larger one, and the database is not asked about one.
MAX_ID = 2**31 - 1


def checked_labels(raw_labels) -> list[dict]:
    """Validate labels in CVAT's REST shape with the function spec's own parser (same rules, same
    messages, naming ``labels``), plus the task-only attribute fields; returns them normalised."""
    if not isinstance(raw_labels, list) or not raw_labels:
        raise InvalidInput("labels: a task needs a list of at least one label")
    try:
        specs = parse_label_spec(json.dumps(raw_labels))
    except MetadataError as error:
        raise InvalidInput(str(error).replace(_SPEC_FIELD, "labels", 1)) from None
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"labels: must be JSON data: {error}") from None

    def normalised(raw_list: list[dict], spec_list, where: str) -> list[dict]:
        result = []
        for index, (raw, spec) in enumerate(zip(raw_list, spec_list)):
            label_where = f"{where}[{index}] ({spec.name!r})"
            _check_length(spec.name, MAX_NAME, f"{label_where}.name")
            label_attributes = []
            for attribute_index, (raw_attribute, attribute) in enumerate(
                    zip(raw.get("attributes") or [], spec.attributes)):
                attribute_where = f"{label_where}.attributes[{attribute_index}] ({attribute.name!r})"
                _check_length(attribute.name, MAX_NAME, f"{attribute_where}.name")
                mutable = raw_attribute.get("mutable", False)
                if not isinstance(mutable, bool):
                    raise InvalidInput(f"{attribute_where}.mutable: must be true or false, got {mutable!r}")
                default = raw_attribute.get("default_value")
                if default is None:  # CVAT's default: the first value
                    default = attribute.values[0] if attribute.values else (
                        "false" if attribute.input_type == "checkbox" else "")
                if not isinstance(default, str):
                    raise InvalidInput(f"{attribute_where}.default_value: must be a string, got {default!r}")
                _check_length(default, MAX_DEFAULT_VALUE, f"{attribute_where}.default_value")
                allowed = (attribute.values if attribute.input_type in ("select", "radio")
                           else ("true", "false") if attribute.input_type == "checkbox" else None)
                if allowed is not None and default not in allowed:
                    raise InvalidInput(f"{attribute_where}.default_value: {default!r} is not one of "
                                       f"{', '.join(allowed)}")
                label_attributes.append({"name": attribute.name, "input_type": attribute.input_type,
                                         "mutable": mutable, "default_value": default,
                                         "values": list(attribute.values)})
            result.append({"name": spec.name, "type": spec.type, "svg": spec.svg, "attributes": label_attributes,
                           "sublabels": normalised(raw.get("sublabels") or [], spec.sublabels,
                                                   f"{label_where}.sublabels")})
        return result

    return normalised(raw_labels, specs, "labels")


def _check_length(text: str, limit: int, where: str) -> None:
    if len(text) > limit:
        raise InvalidInput(f"{where}: at most {limit} characters (CVAT's limit), got {len(text)}")




def image_size(data: bytes, where: str, limit: int) -> tuple[int, int, str]:
    """Width and height as decode_image will see them (EXIF orientation applied), and the format.
    Decoded once here, with decode_image's own checks, so a bad file is refused now rather than
    at every run."""
    if not isinstance(data, bytes):
        raise InvalidInput(f"{where}: the file content must be bytes")
    try:
        image, image_format = open_image(data, limit)
    except BadRequest as problem:
        raise InvalidInput(f"{where}: {problem}") from None
    except Exception as error:  # Pillow's format plugins raise all kinds of errors on a malformed file
        raise InvalidInput(f"{where}: not an image Pillow can read ({type(error).__name__}: {error})") from None
    return image.width, image.height, image_format


class TaskContext:
    """What validating a task's annotations needs: its size and its labels."""

    def __init__(self, task_id: int, size: int, label_rows, attribute_rows):
        self.task_id = task_id
        self.size = size
        self.labels = {row.id: row for row in label_rows}
        self.attribute_ids: dict[int, set[int]] = {row.id: set() for row in label_rows}
        for row in attribute_rows:
            self.attribute_ids[row.label_id].add(row.id)

    @classmethod
    def load(cls, connection, task_id: int) -> TaskContext:
        task_row(connection, task_id)
        label_rows = connection.execute(select(labels.c.id, labels.c.type, labels.c.parent_id)
                                        .where(labels.c.task_id == task_id)).all()
        attribute_rows = connection.execute(select(attributes.c.id, attributes.c.label_id).join(labels)
                                            .where(labels.c.task_id == task_id)).all()
        return cls(task_id, task_size(connection, task_id), label_rows, attribute_rows)

    def check_frame(self, frame, where: str) -> int:
        if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < self.size:
            raise InvalidInput(f"{where}: {frame!r} is not a frame of task {self.task_id} "
                               f"(it has {self.size} frames)")
        return frame

    def label(self, label_id, where: str, skeleton: int | None = None):
        """The label ``label_id`` names: a top-level label of the task, or a sublabel of ``skeleton``."""
        label = self.labels.get(label_id) if isinstance(label_id, int) and not isinstance(label_id, bool) else None
        if label is None or label.parent_id != skeleton:
            what = "a label of task" if skeleton is None else f"a sublabel of skeleton {skeleton} in task"
            raise InvalidInput(f"{where}.label_id: {label_id!r} is not {what} {self.task_id}")
        return label


def _object(item, where: str) -> dict:
    if not isinstance(item, dict):
        raise InvalidInput(f"{where}: must be an object")
    return item


def _field(item: dict, key: str, default, valid, what: str, where: str):
    value = item.get(key, default)
    if not valid(value):
        raise InvalidInput(f"{where}.{key}: must be {what}, got {value!r}")
    return value


def _is_bool(value) -> bool:
    return isinstance(value, bool)


def _common_fields(item: dict, where: str, context: TaskContext, skeleton: int | None = None) -> dict:
    frame = context.check_frame(item.get("frame"), f"{where}.frame")
    label = context.label(item.get("label_id"), where, skeleton)
    return {"frame": frame, "label_id": label.id,
            "group": _field(item, "group", None, lambda v: v is None or (is_int(v) and v >= 0),
                            "a non-negative integer or null", where),
            "source": _field(item, "source", "manual", lambda v: isinstance(v, str) and v, "a non-empty string", where),
            "attributes": _checked_attributes(item, where, context, label.id)}


def _checked_attributes(item: dict, where: str, context: TaskContext, label_id: int) -> list[dict]:
    raw = item.get("attributes") or []
    if not isinstance(raw, list):
        raise InvalidInput(f"{where}.attributes: must be a list of {{spec_id, value}}")
    checked, seen = [], set()
    for index, attribute in enumerate(raw):
        attribute_where = f"{where}.attributes[{index}]"
        if not isinstance(attribute, dict) or not isinstance(attribute.get("value"), str):
            raise InvalidInput(f"{attribute_where}: must be {{\"spec_id\": integer, \"value\": string}}")
        spec_id = attribute.get("spec_id")
        if not is_int(spec_id) or spec_id not in context.attribute_ids[label_id]:
            raise InvalidInput(f"{attribute_where}.spec_id: {spec_id!r} is not an attribute of label {label_id}")
        if spec_id in seen:
            raise InvalidInput(f"{attribute_where}.spec_id: attribute {spec_id} appears twice")
        seen.add(spec_id)
        checked.append({"spec_id": spec_id, "value": attribute["value"]})
    return checked


def _checked_tag(item, where: str, context: TaskContext) -> dict:
    item = _object(item, where)
    tag = _common_fields(item, where, context)
    if context.labels[tag["label_id"]].type == "skeleton":
        raise InvalidInput(f"{where}.label_id: {tag['label_id']} is a skeleton label, not one for tags")
    return tag


def _checked_shape(item, where: str, context: TaskContext, skeleton: int | None = None,
                   frame: int | None = None) -> dict:
    """A shape with CVAT's defaults filled in; ``skeleton``: an element of that skeleton label on ``frame``."""
    item = _object(item, where)
    if skeleton is not None:
        item = {"type": "points", **item, "frame": frame}
    common = _common_fields(item, where, context, skeleton)
    shape_type = item.get("type")
    allowed = ("points",) if skeleton is not None else SHAPE_AND_SKELETON_TYPES
    if shape_type not in allowed:
        raise InvalidInput(f"{where}.type: must be one of {', '.join(allowed)}, got {shape_type!r}")
    if (shape_type == "skeleton") != (context.labels[common["label_id"]].type == "skeleton"):
        raise InvalidInput(f"{where}.type: skeleton shapes and skeleton labels go together, got a {shape_type} "
                           f"of a {context.labels[common['label_id']].type} label")
    if shape_type == "mask":
        points = _checked_mask(item.get("points"), where)
    else:
        try:
            points = checked_points(item.get("points"), shape_type, where)
        except BadFunctionOutput as error:
            raise InvalidInput(str(error)) from None
    shape = {"type": shape_type, **common, "points": points,
             "rotation": _field(item, "rotation", 0, is_number, "a number of degrees", where),
             "occluded": _field(item, "occluded", False, _is_bool, "true or false", where),
             "outside": _field(item, "outside", False, _is_bool, "true or false", where),
             "z_order": _field(item, "z_order", 0, is_int, "an integer", where)}
    if item.get("score") is not None:  # our extension: the detector's confidence
        shape["score"] = _field(item, "score", None, is_number, "a number or null", where)
    if shape_type == "skeleton":
        elements = item.get("elements") or []
        if not isinstance(elements, list) or not elements:
            raise InvalidInput(f"{where}.elements: a skeleton needs a list of elements")
        shape["elements"] = [_checked_shape(element, f"{where}.elements[{index}]", context, common["label_id"],
                                            common["frame"]) for index, element in enumerate(elements)]
        sublabel_ids = [element["label_id"] for element in shape["elements"]]
        if len(set(sublabel_ids)) != len(sublabel_ids):
            raise InvalidInput(f"{where}.elements: each sublabel may have one element only")
    return shape


def _checked_mask(points, where: str) -> list[int]:
    """CVAT's mask RLE (§4.7): run lengths from a background run, then the inclusive box. Whole
    floats are taken as the integers they are: CVAT keeps points as floats, and cvat-sdk sends 72.0."""
    def whole(v) -> bool:
        return is_int(v) or (isinstance(v, float) and v.is_integer())

    if not isinstance(points, list) or len(points) < 5 or not all(whole(v) and v >= 0 for v in points):
        raise InvalidInput(f"{where}.points: a mask is run lengths followed by xtl, ytl, xbr, ybr, "
                           "all non-negative integers")
    points = [int(v) for v in points]
    *runs, xtl, ytl, xbr, ybr = points
    if xbr < xtl or ybr < ytl or sum(runs) != (xbr - xtl + 1) * (ybr - ytl + 1):
        raise InvalidInput(f"{where}.points: the runs cover {sum(runs)} pixels but the box "
                           f"({xtl}, {ytl}, {xbr}, {ybr}) has {max(xbr - xtl + 1, 0) * max(ybr - ytl + 1, 0)}")
    return points


def checked_track(item, where: str, context: TaskContext) -> dict:
    """A track: its label, attributes and keyframe shapes (one per frame, in frame order, of one
    type), each checked as a shape of the track's label; ``frame`` is its first keyframe's."""
    item = _object(item, where)
    shapes = item.get("shapes")
    if not isinstance(shapes, list) or not shapes:
        raise InvalidInput(f"{where}.shapes: a track needs a list of at least one shape")
    first = shapes[0].get("frame") if isinstance(shapes[0], dict) else None
    common = _common_fields({**item, "frame": item.get("frame", first)}, where, context)
    if context.labels[common["label_id"]].type == "skeleton":
        raise InvalidInput(f"{where}.label_id: tracks of skeleton labels are not supported by this store")
    checked = []
    for index, shape in enumerate(shapes):
        shape_where = f"{where}.shapes[{index}]"
        shape = _checked_shape({**_object(shape, shape_where), "label_id": common["label_id"]}, shape_where, context)
        if checked and shape["frame"] <= checked[-1]["frame"]:
            raise InvalidInput(f"{shape_where}.frame: shapes of a track go in frame order, one per frame")
        if checked and shape["type"] != checked[0]["type"]:
            raise InvalidInput(f"{shape_where}.type: a track keeps one shape type, {checked[0]['type']}")
        checked.append({key: shape[key] for key in ("type", "frame", "points", "rotation", "occluded", "outside",
                                                    "z_order", "attributes")})
    if common["frame"] != checked[0]["frame"]:
        raise InvalidInput(f"{where}.frame: {common['frame']} is not the frame of its first shape, "
                           f"{checked[0]['frame']}")
    return {**common, "shapes": checked}


CHECKS = {"tags": _checked_tag, "shapes": _checked_shape, "tracks": checked_track}


def labeled_items(data):
    """(kind, where, item) for each item of a LabeledData body, its structure checked."""
    if not isinstance(data, dict):
        raise InvalidInput("annotations: must be an object with tags, shapes and tracks")
    for kind in KINDS:
        kind_items = data.get(kind) or []
        if not isinstance(kind_items, list):
            raise InvalidInput(f"{kind}: must be a list")
        for index, item in enumerate(kind_items):
            yield kind, f"{kind}[{index}]", item


def checked_data(data, context: TaskContext) -> list[tuple[str, dict]]:
    """LabeledData's items, checked and normalised, with no ids."""
    items = []
    for kind, where, item in labeled_items(data):
        checked = CHECKS[kind](item, where, context)
        checked.pop("id", None)  # a track's own, as given
        items.append((kind, checked))
    return items


def item_ids(connection, task_id: int, data) -> list[tuple[str, int]]:
    """The (kind, id) of each item of ``data``, every one an existing item of the task."""
    wanted = []
    for kind, where, item in labeled_items(data):
        item_id = item.get("id") if isinstance(item, dict) else None
        if not is_int(item_id):
            raise InvalidInput(f"{where}.id: required, an integer")
        if not 1 <= item_id <= MAX_ID:
            raise InvalidInput(f"{where}.id: task {task_id} has no {kind[:-1]} {item_id}")
        wanted.append((kind, item_id, where))
    existing = {}
    for batch in batches(sorted({item_id for _, item_id, _ in wanted})):
        existing.update(connection.execute(select(annotations.c.id, annotations.c.kind).where(
            annotations.c.task_id == task_id, annotations.c.id.in_(batch))).all())
    for kind, item_id, where in wanted:
        if existing.get(item_id) != kind:
            raise InvalidInput(f"{where}.id: task {task_id} has no {kind[:-1]} {item_id}")
    return [(kind, item_id) for kind, item_id, _ in wanted]
