"""What a function.yaml declares for a cvat-sdk function (docs/wire-format.md §1.3, §1.4): its labels as
``annotations.spec``, its kind's annotations, and the whole document that serves it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from cvat_sdk.auto_annotation import DetectionFunctionSpec

from serverless.common.sdk.loading import function_kind


def value(field) -> Any:
    """The plain value of an SDK enum model (``ShapeType``, ``InputTypeEnum``) or of a plain field."""
    return getattr(field, "value", field)


def label_type(label) -> str:
    return value(getattr(label, "type", "any")) or "any"


def spec_labels(spec: DetectionFunctionSpec) -> list[dict]:
    """The function's labels as ``annotations.spec`` entries (docs/wire-format.md §1.4)."""
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
    """``metadata.annotations`` for serving ``function`` (CVAT reads them; §1.3)."""
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
