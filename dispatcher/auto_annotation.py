"""cvat-sdk's ``annotate_task`` against our dispatcher (docs/wire-format.md §7.5), and ``python -m
dispatcher auto-annotate``, which takes cvat-cli's ``task auto-annotate`` flags (§7.7).

The function runs here, on this machine, once per frame in order; frames are fetched one step
ahead over the HTTP API. Labels, sublabels and attributes are matched by name; everything the
function returns is checked (``BadFunctionError``) before anything is written, and the whole
result is written at the end in one request, as the SDK does: a function that breaks its protocol
on frame 900 leaves the task as it was. ``clear_existing`` replaces the task's annotations (PUT),
otherwise the new ones are added (PATCH ``action=create``).
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cvat_sdk.auto_annotation import BadFunctionError, DetectionFunctionSpec
from cvat_sdk.core.helpers import DeferredTqdmProgressReporter
from cvat_sdk.core.progress import NullProgressReporter, ProgressReporter

from dispatcher.client import ApiError, Client
from serverless.common.handler import BadRequest
from serverless.common.images import open_image
from serverless.common.sdk import (
    LabelIndex,
    detection_context,
    label_type,
    load_function,
    parse_parameter,
    value,
)

log = logging.getLogger(__name__)
PREFETCH = 2  # frames fetched ahead of the function
MAX_FRAME_PIXELS = 1 << 40  # the task store already checked its frames when they were added


@dataclass(frozen=True)
class _Target:
    """Where a function label (or sublabel) goes in the task: ids, and None for what is dropped."""
    id: int
    attributes: dict[int, int | None]  # function attribute id -> task attribute id
    sublabels: dict[int, _Target | None]  # function sublabel id -> target
    expected_type: str
    element_count: int


class _Matcher:
    def __init__(self, function_labels, task_labels: list[dict], *, allow_unmatched_labels: bool,
                 conv_mask_to_poly: bool):
        self.allow_unmatched_labels = allow_unmatched_labels
        self.conv_mask_to_poly = conv_mask_to_poly
        by_name = {label["name"]: label for label in task_labels}
        self.labels = {label.id: self._match(label, by_name.get(label.name), f"label {label.name!r}", top=True)
                       for label in function_labels}

    def _unmatched(self, description: str) -> None:
        if not self.allow_unmatched_labels:
            raise BadFunctionError(f"{description} is not in dataset")
        log.info("%s is not in dataset; any annotations using it will be ignored", description)

    def _match(self, label, task_label: dict | None, description: str, *, top: bool) -> _Target | None:
        if task_label is None:
            return self._unmatched(description)
        task_attributes = {a["name"]: a for a in task_label["attributes"]}
        attributes = {}
        for attribute in getattr(label, "attributes", []):
            attribute_description = f"attribute {attribute.name!r} of {description}"
            task_attribute = task_attributes.get(attribute.name)
            attributes[attribute.id] = (self._unmatched(attribute_description) if task_attribute is None
                                        else _attribute_id(attribute, task_attribute, attribute_description))
        task_sublabels = {sublabel["name"]: sublabel for sublabel in task_label.get("sublabels", [])}
        sublabels = {sublabel.id: self._match(sublabel, task_sublabels.get(sublabel.name),
                                              f"sublabel {sublabel.name!r} of {description}", top=False)
                     for sublabel in getattr(label, "sublabels", [])}
        return _Target(task_label["id"], attributes, sublabels,
                       self._expected_type(label, task_label) if top else "points",
                       len(task_label.get("sublabels", [])))

    def _expected_type(self, label, task_label: dict) -> str:
        declared = label_type(label)
        if declared == "any":
            return task_label["type"]
        if self.conv_mask_to_poly and declared == "mask":
            declared = "polygon"
        if not _compatible(declared, task_label["type"]):
            raise BadFunctionError(f"label {label.name!r} has type {declared!r} in the function, "
                                   f"but {task_label['type']!r} in the dataset")
        return declared

    def remap(self, annotation, kind: str, frame: int) -> dict | None:
        """The annotation in the task's ids, or None when its label is not in the task."""
        target = self.labels[annotation.label_id]
        if target is None:
            return None
        result = {"frame": frame, "label_id": target.id, "source": "auto",
                  "attributes": _attributes(annotation, target), "group": getattr(annotation, "group", None)}
        if kind == "tag":
            if not _compatible("tag", target.expected_type):
                raise BadFunctionError(f"function output tag (expected shape of type {target.expected_type!r})")
            return result
        shape_type = value(annotation.type)
        if not _compatible(shape_type, target.expected_type):
            raise BadFunctionError(f"function output shape of type {shape_type!r} (expected {target.expected_type!r})")
        result.update(_geometry(annotation), type=shape_type)
        if shape_type == "skeleton":
            elements = []
            for element in annotation.elements:
                sublabel = target.sublabels[element.label_id]
                if sublabel is not None:
                    elements.append({"type": "points", "frame": frame, "label_id": sublabel.id, "source": "auto",
                                     "attributes": _attributes(element, sublabel), **_geometry(element)})
            if len(elements) != target.element_count:
                raise BadFunctionError("function output skeleton with fewer elements than expected "
                                       f"({len(elements)} vs {target.element_count})")
            result["elements"] = elements
        return result


def _compatible(source_type: str, destination_type: str) -> bool:
    return destination_type in ("any", source_type)


def _attribute_id(attribute, task_attribute: dict, description: str) -> int:
    function_type, task_type = value(attribute.input_type), task_attribute["input_type"]
    if function_type != task_type:
        raise BadFunctionError(f"{description} has input type {function_type!r} in the function, "
                               f"but {task_type!r} in the dataset")
    function_values, task_values = list(attribute.values), list(task_attribute["values"])
    if task_type in ("select", "radio"):
        function_values, task_values = sorted(function_values), sorted(task_values)
    if task_type not in ("text", "checkbox") and function_values != task_values:
        raise BadFunctionError(f"{description} has values {list(attribute.values)!r} in the function, "
                               f"but {list(task_attribute['values'])!r} in the dataset")
    return task_attribute["id"]


def _attributes(annotation, target: _Target) -> list[dict]:
    return [{"spec_id": target.attributes[a.spec_id], "value": a.value}
            for a in getattr(annotation, "attributes", []) if target.attributes[a.spec_id] is not None]


def _geometry(shape) -> dict:
    geometry = {"points": [float(v) for v in getattr(shape, "points", [])],
                "occluded": bool(getattr(shape, "occluded", False)),
                "outside": bool(getattr(shape, "outside", False)), "z_order": int(getattr(shape, "z_order", 0)),
                "rotation": float(getattr(shape, "rotation", 0.0))}
    if hasattr(shape, "score"):
        geometry["score"] = float(shape.score)
    return geometry


def annotate_task(client: Client, task_id: int, function, *, pbar: ProgressReporter | None = None,
                  clear_existing: bool = False, allow_unmatched_labels: bool = False,
                  conf_threshold: float | None = None, conv_mask_to_poly: bool = False) -> None:
    """Apply a cvat-sdk detection function to every frame of the task and write what it found."""
    pbar = pbar or NullProgressReporter()
    if conf_threshold is not None and not 0 <= conf_threshold <= 1:
        raise ValueError("conf_threshold must be None or a number between 0 and 1")
    if not isinstance(function.spec, DetectionFunctionSpec):
        raise BadFunctionError(f"annotate_task runs detection functions; this function's spec is a "
                               f"{type(function.spec).__name__}")
    labels = DetectionFunctionSpec(labels=function.spec.labels).labels  # the SDK's spec validation, again
    index = LabelIndex(labels)
    client.task(task_id)  # a missing task is named as such
    matcher = _Matcher(labels, client.labels(task_id), allow_unmatched_labels=allow_unmatched_labels,
                       conv_mask_to_poly=conv_mask_to_poly)
    frames = client.frames_meta(task_id)["frames"]

    tags, shapes = [], []
    with pbar.task(total=len(frames), unit="samples"), ThreadPoolExecutor(1) as fetcher:
        ahead = collections.deque(fetcher.submit(client.frame, task_id, number)
                                  for number in range(min(PREFETCH, len(frames))))
        for number in pbar.iter(range(len(frames))):
            data = ahead.popleft().result()
            if number + PREFETCH < len(frames):
                ahead.append(fetcher.submit(client.frame, task_id, number + PREFETCH))
            try:
                image, _ = open_image(data, MAX_FRAME_PIXELS)
            except BadRequest as error:
                raise ValueError(f"task {task_id} frame {number} ({frames[number]['name']}): {error}") from None
            context = detection_context(frames[number]["name"], conf_threshold, conv_mask_to_poly)
            for annotation in function.detect(context, image):
                kind = index.check(annotation, conv_mask_to_poly=conv_mask_to_poly)
                remapped = matcher.remap(annotation, kind, number)
                if remapped is not None:
                    (tags if kind == "tag" else shapes).append(remapped)

    log.info("Uploading %d tags and %d shapes to task %d", len(tags), len(shapes), task_id)
    if clear_existing:
        client.replace_annotations(task_id, {"version": 0, "tags": tags, "shapes": shapes, "tracks": []})
    else:
        client.add_annotations(task_id, {"tags": tags, "shapes": shapes, "tracks": []})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """cvat-cli's ``task auto-annotate`` arguments, plus ``--api``."""
    parser.add_argument("task_id", type=int, help="task ID")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--function-module", metavar="MODULE", help="qualified name of a module to use as the function")
    source.add_argument("--function-file", metavar="PATH", type=Path,
                        help="path to a Python source file to use as the function")
    parser.add_argument("-p", "--function-parameter", metavar="NAME=TYPE:VALUE", dest="function_parameters",
                        type=_parameter, action="append", default=[],
                        help="parameter for the function's create(); TYPE is int, float, str or bool")
    parser.add_argument("--clear-existing", action="store_true", help="Remove existing annotations from the task")
    parser.add_argument("--allow-unmatched-labels", action="store_true",
                        help="Allow the function to declare labels/sublabels/attributes not configured in the task")
    parser.add_argument("--conf-threshold", type=_threshold, default=None,
                        help="Confidence threshold for filtering detections (0..1)")
    parser.add_argument("--conv-mask-to-poly", action="store_true", help="Convert mask shapes to polygon shapes")
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="the dispatcher's URL (default: %(default)s)")


def _parameter(text: str):
    try:
        return parse_parameter(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _threshold(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number") from None
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return number


def run(args: argparse.Namespace, api_token: str | None) -> int:
    """The command: exit 0 when the task was annotated, 1 with one readable line otherwise."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per frame request otherwise
    try:
        function = load_function(args.function_module, args.function_file, dict(args.function_parameters))
        with Client(args.api, api_token) as client:
            annotate_task(client, args.task_id, function, pbar=DeferredTqdmProgressReporter(),
                          clear_existing=args.clear_existing, allow_unmatched_labels=args.allow_unmatched_labels,
                          conf_threshold=args.conf_threshold, conv_mask_to_poly=args.conv_mask_to_poly)
    except BadFunctionError as error:
        print(f"error: the function broke the cvat-sdk protocol: {error}", file=sys.stderr)
        return 1
    except (ApiError, ImportError, FileNotFoundError, TypeError, ValueError) as error:
        print(f"error: {type(error).__name__}: {error}" if not isinstance(error, ApiError) else f"error: {error}",
              file=sys.stderr)
        return 1
    return 0
