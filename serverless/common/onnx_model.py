"""ONNX models on the engine settings choose: OpenVINO (default; it reads ONNX) or ONNX Runtime.

Both give the same surface: ``input_shape``, ``output_shape`` (None for dynamic dimensions) and
``infer(array) -> {output name: array}``. ONNX Runtime uses CUDA when onnxruntime-gpu finds a GPU
(the GPU images), else the CPU. On this project's 2-core CPU, OpenVINO serves more images per
second with a function's two workers busy (YOLO v7 numbers in the README).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serverless.common import settings as function_settings
from serverless.common.openvino_model import OpenVINOModel


class OnnxRuntimeModel:
    def __init__(self, path: Path):
        import onnxruntime  # only this backend needs it

        available = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" in available:
            onnxruntime.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels onnxruntime-gpu[cuda,cudnn] brings
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        self._input = self.session.get_inputs()[0]
        self.output_names = [output.name for output in self.session.get_outputs()]

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return tuple(d if isinstance(d, int) else None for d in self._input.shape)

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        return tuple(d if isinstance(d, int) else None for d in self.session.get_outputs()[0].shape)

    def infer(self, array: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, {self._input.name: array})))


def load(path: Path, settings: function_settings.FunctionSettings | None = None) -> OpenVINOModel | OnnxRuntimeModel:
    settings = settings or function_settings.current()
    return OpenVINOModel(path, settings) if settings.onnx_backend == "openvino" else OnnxRuntimeModel(path)
