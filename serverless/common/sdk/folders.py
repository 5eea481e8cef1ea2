"""One of our detector function folders as a cvat-sdk detection function (the built-ins in
``serverless.sdk_functions``): the other way round from serving, the folder's own model called in
process and its result items turned back into SDK annotations."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import types
from pathlib import Path

import yaml
from cvat_sdk import models
from cvat_sdk.auto_annotation import (
    DetectionFunctionContext,
    DetectionFunctionSpec,
    attribute_spec,
    label_spec,
    mask,
    polygon,
    shape,
    tag,
)
from PIL import Image

from serverless.common import masks
from serverless.common.metadata import FunctionMeta

log = logging.getLogger(__name__)


class FolderDetectionFunction:
    """A detector function folder (function.yaml + main.py) behind the SDK's detection protocol:
    the spec comes from function.yaml (ids: the spec's class ids), ``detect`` calls the folder's
    model in process and turns its result items back into SDK annotations."""

    def __init__(self, folder: Path, default_threshold: float):
        self.meta = FunctionMeta.from_nuclio(yaml.safe_load((folder / "function.yaml").read_text()))
        self.default_threshold = default_threshold
        self.spec = DetectionFunctionSpec(labels=[
            label_spec(label.name, label.id if label.id is not None else number, type=label.type, attributes=[
                attribute_spec(a.name, a_number, a.input_type, list(a.values))
                for a_number, a in enumerate(label.attributes)])
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
    its own, so several folders' ``main``, ``model_handler`` and ``network`` modules live in one process."""
    own = [path.stem for path in folder.glob("*.py")]  # the siblings its imports may find in the folder
    shadowed = {module: sys.modules.pop(module) for module in own if module in sys.modules}
    unique = f"_function_{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]}_{name}"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(unique, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
        for module_name in own:
            sys.modules.pop(module_name, None)
        sys.modules.update(shadowed)
    return module
