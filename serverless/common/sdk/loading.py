"""Loading a cvat-sdk function as cvat-cli does (docs/wire-format.md §7.7): a module by name or a Python
file, ``create(**parameters)`` when the module is a factory, and which of the SDK's three kinds it is."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from cvat_sdk.auto_annotation import (
    BadFunctionError,
    DetectionFunctionSpec,
    InteractionFunctionSpec,
    TrackingFunctionSpec,
)


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
