"""OpenVINO loading and inference with the current API (``openvino.Core``), configured from settings."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import openvino as ov

from serverless.common import settings as function_settings


@functools.cache
def _core() -> ov.Core:
    return ov.Core()


def _dimensions(shape: ov.PartialShape) -> tuple[int | None, ...]:
    return tuple(d.get_length() if d.is_static else None for d in shape)


class OpenVINOModel:
    """One compiled model: ``infer`` one input, or ``infer_many`` through parallel infer requests.

    Device and performance hint come from settings; the number of infer requests is what the
    compiled model reports as optimal for that hint (1 for LATENCY, one per stream for THROUGHPUT).
    """

    def __init__(self, xml_path: Path, settings: function_settings.FunctionSettings | None = None):
        settings = settings or function_settings.current()
        config = {"PERFORMANCE_HINT": settings.openvino_hint}
        if settings.openvino_threads:
            config["INFERENCE_NUM_THREADS"] = settings.openvino_threads
        if settings.openvino_precision:
            config["INFERENCE_PRECISION_HINT"] = settings.openvino_precision
        self.model = _core().read_model(xml_path)  # the graph as read, for handlers that inspect its ops
        self.compiled = _core().compile_model(self.model, settings.openvino_device, config)
        self.output_names = [port.any_name for port in self.compiled.outputs]
        self._request = self.compiled.create_infer_request()
        self._queue = ov.AsyncInferQueue(self.compiled, self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """Shape of the first input, e.g. (1, 3, 416, 416); None for a dynamic dimension."""
        return _dimensions(self.compiled.inputs[0].get_partial_shape())

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        """Shape of the first output; None for a dynamic dimension."""
        return _dimensions(self.compiled.outputs[0].get_partial_shape())

    def infer(self, inputs: np.ndarray | dict) -> dict[str, np.ndarray]:
        """Outputs by name, copied (the request reuses its output buffers)."""
        results = self._request.infer(inputs)
        return {name: np.array(results[port]) for name, port in zip(self.output_names, self.compiled.outputs)}

    def infer_many(self, batch: list[np.ndarray | dict]) -> list[dict[str, np.ndarray]]:
        """``infer`` for each input, in order, keeping every infer request busy."""
        outputs: list[dict[str, np.ndarray]] = [{} for _ in batch]

        def collect(request: ov.InferRequest, index: int) -> None:
            outputs[index] = {name: np.array(request.get_tensor(port).data)
                              for name, port in zip(self.output_names, self.compiled.outputs)}

        self._queue.set_callback(collect)
        for index, inputs in enumerate(batch):
            self._queue.start_async(inputs, index)
        self._queue.wait_all()
        return outputs
