"""The environment a function reads. Nothing else in ``serverless/common`` touches ``os.environ``."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

# The directory that holds serverless/: the repository root here, /opt/nuclio in function images.
CODE_ROOT = Path(__file__).resolve().parents[2]

PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
# "": OpenVINO's choice, which is bf16 on CPUs that have it (faster; probabilities move by a few
# hundredths, which matters next to a hard cut such as DEXTR's 0.8).
INFERENCE_PRECISIONS = ("", "f32", "bf16", "f16")
ONNX_BACKENDS = ("openvino", "onnxruntime")


@dataclass(frozen=True)
class FunctionSettings:
    models_dir: Path
    openvino_device: str
    openvino_hint: str
    openvino_threads: int
    openvino_precision: str
    onnx_backend: str
    max_image_pixels: int
    # Pixels a batch body ({"images": [...]}) may hold in all: one request's work stays within what
    # the largest single frame allowed costs.
    max_batch_pixels: int
    model_path_overrides: dict[str, str]
    # A cvat-sdk function served by serverless.common.sdk:handler: a module or a file (relative to
    # the function folder), and create()'s parameters as a JSON object.
    sdk_function_module: str | None = None
    sdk_function_file: Path | None = None
    sdk_function_parameters: dict | None = None
    # Callers must send ``Authorization: Bearer <token>``; None: no check.
    function_token: str | None = None

    def model_path_override(self, variable: str) -> Path | None:
        value = self.model_path_overrides.get(variable)
        return Path(value) if value else None


def _positive_int(environ: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def load(environ: dict[str, str] | None = None) -> FunctionSettings:
    environ = dict(os.environ if environ is None else environ)
    hint = environ.get("OPENVINO_PERFORMANCE_HINT", "LATENCY").upper()
    if hint not in PERFORMANCE_HINTS:
        raise ValueError(f"OPENVINO_PERFORMANCE_HINT={hint!r} is not one of {', '.join(PERFORMANCE_HINTS)}")
    precision = environ.get("OPENVINO_INFERENCE_PRECISION", "").lower()
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"OPENVINO_INFERENCE_PRECISION={precision!r} is not one of f32, bf16, f16 (or empty)")
    onnx_backend = environ.get("ONNX_BACKEND", "openvino").lower()
    if onnx_backend not in ONNX_BACKENDS:
        raise ValueError(f"ONNX_BACKEND={onnx_backend!r} is not one of {', '.join(ONNX_BACKENDS)}")
    max_image_pixels = _positive_int(environ, "MAX_IMAGE_PIXELS", 100_000_000)
    return FunctionSettings(
        models_dir=Path(environ.get("MODELS_DIR") or CODE_ROOT / "models"),
        openvino_device=environ.get("OPENVINO_DEVICE", "CPU"),
        openvino_hint=hint,
        openvino_threads=_positive_int(environ, "OPENVINO_NUM_THREADS", 0, minimum=0),
        openvino_precision=precision,
        onnx_backend=onnx_backend,
        max_image_pixels=max_image_pixels,
        max_batch_pixels=_positive_int(environ, "MAX_BATCH_PIXELS", max_image_pixels),
        model_path_overrides={k: v for k, v in environ.items() if k.endswith("_MODEL_PATH") or k == "MODEL_PATH"},
        sdk_function_module=environ.get("SDK_FUNCTION_MODULE") or None,
        sdk_function_file=Path(environ["SDK_FUNCTION_FILE"]) if environ.get("SDK_FUNCTION_FILE") else None,
        sdk_function_parameters=_json_object(environ, "SDK_FUNCTION_PARAMETERS"),
        function_token=function_token(environ),
    )


def function_token(environ: dict[str, str] | None = None) -> str | None:
    """``FUNCTION_TOKEN`` (default: of this process), which our processor and platform check too."""
    environ = os.environ if environ is None else environ
    return environ.get("FUNCTION_TOKEN") or None


def _json_object(environ: dict[str, str], name: str) -> dict:
    raw = environ.get(name, "")
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{name} must be a JSON object of parameter names and values, got {raw!r}")
    return parsed


@functools.cache
def current() -> FunctionSettings:
    """The settings of this process, read once."""
    return load()
