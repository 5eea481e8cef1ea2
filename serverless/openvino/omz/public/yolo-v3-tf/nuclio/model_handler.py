"""YOLO v3 on OpenVINO: the official yolo-v3-tf IR (three scales) or yolo-v3-tiny (two scales).

Both IRs take BGR pixels 0..255 (the IRs scale them) after a plain resize to the input size, and
end in RegionYolo-style outputs ``[1, 3 * (5 + 80), S, S]``: per anchor ``tx, ty, tw, th, obj``
and 80 class scores, with the logistic already applied to everything but ``tw, th``. Which anchors
belong to which output is read from the model: from the RegionYolo ops' ``anchors`` and ``mask``
when the IR has them (the official one), else from the number of outputs (yolo-v3-tiny's
converted IR has plain ops; its 26x26 output uses anchors 1, 2, 3, not the 0, 1, 2 some
published configs say).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from serverless.common import detections
from serverless.common.handler import Detector
from serverless.common.openvino_model import OpenVINOModel

NMS_IOU = 0.45  # per class: COCO-128 mAP 0.224 with tiny, vs 0.210 with CVAT's class-agnostic NMS at 0.4
MAX_CANDIDATES = 3000  # into NMS; at the 0.005 threshold of a COCO evaluation there are under 700
MAX_DETECTIONS = 300
# (anchor sizes in input pixels, anchor indices per output from the coarsest grid to the finest)
KNOWN_LAYOUTS = {
    3: ([10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326],
        [[6, 7, 8], [3, 4, 5], [0, 1, 2]]),
    2: ([10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319], [[3, 4, 5], [1, 2, 3]]),
}


@dataclass(frozen=True)
class RegionOutput:
    name: str
    anchors: np.ndarray  # [3, 2] width, height in input pixels


def region_outputs(model: OpenVINOModel) -> list[RegionOutput]:
    """Each output with its anchors, read from the graph when it has RegionYolo ops."""
    outputs, missing = [], []
    for result in model.model.get_results():
        producer = result.input(0).get_source_output().get_node()
        name = result.output(0).get_any_name()
        if producer.get_type_name() == "RegionYolo":
            attributes = producer.get_attributes()
            pairs = np.asarray(attributes["anchors"], dtype=np.float32).reshape(-1, 2)
            outputs.append(RegionOutput(name, pairs[list(attributes["mask"])]))
        else:
            missing.append((int(result.get_output_partial_shape(0)[2].get_length()), name))
    if missing:
        if len(missing) not in KNOWN_LAYOUTS:
            raise ValueError(f"a YOLO v3 IR with {len(missing)} outputs and no RegionYolo ops is not supported")
        sizes, masks = KNOWN_LAYOUTS[len(missing)]
        pairs = np.asarray(sizes, dtype=np.float32).reshape(-1, 2)
        for (_, name), mask in zip(sorted(missing), masks):  # coarsest grid first
            outputs.append(RegionOutput(name, pairs[mask]))
    return outputs


def decode(raw: np.ndarray, anchors: np.ndarray, input_size: tuple[int, int], threshold: float):
    """Boxes (normalised x_min, y_min, x_max, y_max), scores and class ids above ``threshold``."""
    grid = raw.shape[-1]
    cells = raw.reshape(len(anchors), -1, grid, grid).transpose(0, 2, 3, 1)  # [A, S, S, 5 + C]
    scores = cells[..., 4:5] * cells[..., 5:]
    anchor_idx, rows, cols, classes = np.nonzero(scores >= threshold)
    if anchor_idx.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    picked = cells[anchor_idx, rows, cols]
    with np.errstate(over="ignore"):
        size = np.exp(picked[:, 2:4]) * anchors[anchor_idx] / np.array(input_size[::-1], dtype=np.float32)
    centre = (np.stack([cols, rows], axis=1) + picked[:, 0:2]) / grid
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    finite = np.isfinite(boxes).all(axis=1)
    return boxes[finite], scores[anchor_idx, rows, cols, classes][finite], classes[finite]


class YoloV3(Detector):
    def __init__(self, xml_path, label_names: dict[int, str]):
        self.model = OpenVINOModel(xml_path)
        self.labels = label_names
        self.outputs = region_outputs(self.model)
        shape = self.model.input_shape
        self.channels_first = shape[1] == 3
        self.input_size = (shape[2], shape[3]) if self.channels_first else (shape[1], shape[2])  # (h, w)

    def detect(self, image: Image.Image, threshold: float) -> list[dict]:
        rgb = np.asarray(image)
        height, width = rgb.shape[:2]
        resized = cv2.resize(rgb, self.input_size[::-1], interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
        blob = (resized.transpose(2, 0, 1) if self.channels_first else resized)[np.newaxis].astype(np.float32)
        raw = self.model.infer(blob)

        decoded = [decode(raw[o.name][0], o.anchors, self.input_size, threshold) for o in self.outputs]
        boxes = np.concatenate([d[0] for d in decoded]) * np.array([width, height, width, height], dtype=np.float32)
        scores = np.concatenate([d[1] for d in decoded])
        classes = np.concatenate([d[2] for d in decoded])
        keep = detections.batched_nms(boxes, scores, classes, NMS_IOU, MAX_CANDIDATES)[:MAX_DETECTIONS]
        boxes = detections.clip_boxes(boxes[keep], width, height)
        return [
            detections.rectangle(self.labels[int(c)], box, score)
            for box, score, c in zip(boxes, scores[keep], classes[keep])
            if box[2] > box[0] and box[3] > box[1]
        ]
