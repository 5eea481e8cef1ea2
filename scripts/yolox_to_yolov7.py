"""Turn the COCO YOLOX-Nano ONNX export into yolov7's raw export layout, a local stand-in for yolov7-640.onnx.

    .venv/bin/python scripts/yolox_to_yolov7.py [OUTPUT]    # default: $MODELS_DIR/yolov7/yolov7-640.onnx

The official yolov7 weights are out of reach here, so the YOLO v7 function is verified on a real
trained detector wearing yolov7's interface (``export.py --grid``, no NMS in the graph):

- input ``images``: float32 ``[1, 3, H, W]``, RGB in 0..1. YOLOX wants BGR 0..255, so the graph
  flips the channels and scales by 255 before the original network;
- output ``output``: float32 ``[1, N, 85]`` = ``cx, cy, w, h`` in input pixels, objectness, 80 class
  scores. YOLOX emits grid offsets and log sizes, so the grid decoding is added inside the graph:
  ``xy = (xy + grid) * stride``, ``wh = exp(wh) * stride`` over strides 8, 16, 32, cells row by row.
  Objectness and class scores already have their sigmoid in YOLOX.

The input stays 416x416 (the handler reads the size from the model). The file is generated, never
committed; the default path is where the function's model catalogue (``yolov7``) looks for it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serverless.common import model_files, settings

STRIDES = (8, 16, 32)
OUTPUT_FILE = "yolov7-640.onnx"  # the catalogue's name for the raw export, whatever the input size


def grid_and_strides(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output row, its cell (x, y) ``[1, N, 2]`` and its stride ``[1, N, 1]``, in YOLOX's row order."""
    grids, strides = [], []
    for stride in STRIDES:
        rows, cols = height // stride, width // stride
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        grids.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
        strides.append(np.full((rows * cols, 1), stride))
    return (np.concatenate(grids)[np.newaxis].astype(np.float32),
            np.concatenate(strides)[np.newaxis].astype(np.float32))


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for info in graph.value_info:
        if info.name == old:
            info.name = new


def convert(yolox: onnx.ModelProto) -> onnx.ModelProto:
    """yolov7's raw layout around the YOLOX graph (modified in place and returned)."""
    graph = yolox.graph
    (image,), (raw,) = graph.input, graph.output
    batch, channels, height, width = (d.dim_value for d in image.type.tensor_type.shape.dim)
    rows, columns = (d.dim_value for d in raw.type.tensor_type.shape.dim[1:])
    grid, stride = grid_and_strides(height, width)
    if (batch, channels, columns, rows) != (1, 3, 85, grid.shape[1]):
        raise ValueError(f"not the 80-class YOLOX export this script expects: input {image.type.tensor_type.shape}, "
                         f"output {raw.type.tensor_type.shape}")

    # The original tensors keep flowing inside the graph under new names; the graph's own
    # input and output get yolov7's names and conventions.
    yolox_input, yolox_output = "yolox_bgr_255", "yolox_raw"
    _rename(graph, image.name, yolox_input)
    _rename(graph, raw.name, yolox_output)
    graph.initializer.extend([
        numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "rgb_to_bgr"),
        numpy_helper.from_array(np.array(255, dtype=np.float32), "pixel_scale"),
        numpy_helper.from_array(grid, "cell_xy"),
        numpy_helper.from_array(stride, "cell_stride"),
    ])
    preprocess = [
        helper.make_node("Gather", ["images", "rgb_to_bgr"], ["images_bgr"], axis=1),
        helper.make_node("Mul", ["images_bgr", "pixel_scale"], [yolox_input]),
    ]
    decode = [
        helper.make_node("Split", [yolox_output], ["offset_xy", "log_wh", "scores"], axis=2, split=[2, 2, 81]),
        helper.make_node("Add", ["offset_xy", "cell_xy"], ["cell_units_xy"]),
        helper.make_node("Mul", ["cell_units_xy", "cell_stride"], ["center_xy"]),
        helper.make_node("Exp", ["log_wh"], ["cell_units_wh"]),
        helper.make_node("Mul", ["cell_units_wh", "cell_stride"], ["size_wh"]),
        helper.make_node("Concat", ["center_xy", "size_wh", "scores"], ["output"], axis=2),
    ]
    nodes = preprocess + list(graph.node) + decode
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:], graph.output[:]
    graph.input.append(helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width]))
    graph.output.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, rows, columns]))
    graph.doc_string = ("YOLOX-Nano (COCO) in yolov7's raw export layout: input RGB 0..1, output cx, cy, w, h "
                        "in input pixels, objectness, 80 class scores; made by scripts/yolox_to_yolov7.py")
    onnx.checker.check_model(yolox, full_check=True)
    return yolox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", type=Path,
                        default=settings.current().models_dir / "yolov7" / OUTPUT_FILE,
                        help=f"where to write the converted model (default: $MODELS_DIR/yolov7/{OUTPUT_FILE})")
    args = parser.parse_args(argv)

    source = model_files.resolve("yolox-nano").file(".onnx")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(convert(onnx.load(source)), args.output)
    print(f"{source} -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
