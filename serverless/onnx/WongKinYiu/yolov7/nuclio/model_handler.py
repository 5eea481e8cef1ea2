"""YOLO v7 from WongKinYiu/yolov7's official ONNX exports, either of the two, told apart by the output shape:

- **NMS in the graph** (``yolov7-nms-640.onnx``, CVAT's file; ``export.py --grid --end2end --max-wh
  640``): one output ``[K, 7]`` of rows ``batch, x0, y0, x1, y1, class, score`` in input pixels, K
  dynamic. The graph's own score threshold, IoU and top-k were fixed at export (yolov7's README
  exports with conf 0.35, IoU 0.65, top 100), so thresholds below the export's return no more.
- **Raw** (``yolov7-640.onnx``; ``export.py --grid``): one output ``[1, N, 5 + classes]`` of
  ``cx, cy, w, h`` in input pixels, objectness and class scores, sigmoid applied. NMS is done here
  as yolov7's ``non_max_suppression`` does it for detect.py: confidence = objectness x class score,
  the best class per box only (as the end-to-end export and detect.py; multi-label is test.py's
  mAP setting and would give overlapping boxes of several classes on one object), class-wise NMS
  over the 3000 best candidates, at most 300 boxes. IoU is 0.65, the value yolov7's README exports
  the NMS graph with and test.py uses (detect.py's default is 0.45), so both exports suppress alike.

Input as yolov7's pipeline: RGB, letterboxed (centred, grey 114) to the model's own input size,
float32 0..1, NCHW. Boxes are mapped back to the image, clipped, kept when ``confidence >=
threshold``, and named by class id from the function's spec (classes not in it are dropped).

The ONNX file runs on OpenVINO (device and hint from settings) unless ``ONNX_BACKEND=onnxruntime``
(the GPU build: CUDA, else CPU); see serverless/common/onnx_model.py.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from serverless.common import detections, model_files, onnx_model
from serverless.common import settings as function_settings
from serverless.common.handler import Detector

NMS_IOU = 0.65
MAX_DETECTIONS = 300  # yolov7's max_det
# Into NMS (yolov7 allows 30000): at threshold 0 every anchor is a candidate (25200 at 640) and
# greedy NMS over them takes seconds; YOLOX-Nano at the 0.005 of a COCO evaluation has under 900.
MAX_CANDIDATES = 3000
LETTERBOX_PAD = 114
NMS_ROW_SIZE = 7  # batch, x0, y0, x1, y1, class, score


class YoloV7(Detector):
    def __init__(self, labels: dict[int, str]):
        self.labels = labels
        self.path = model_files.resolve("yolov7").file(".onnx")  # whichever export is in place
        self.backend = function_settings.current().onnx_backend
        self.model = onnx_model.load(self.path)
        _, _, self.input_height, self.input_width = self.model.input_shape
        shape = self.model.output_shape
        if len(shape) == 2 and shape[1] == NMS_ROW_SIZE:
            self.layout, self._decode = "nms", self._nms_rows
        elif len(shape) == 3 and shape[2] is not None and shape[2] > 5:
            missing = sorted(set(range(shape[2] - 5)) - labels.keys())
            if missing:
                raise ValueError(f"{self.path}: the model has {shape[2] - 5} classes, "
                                 f"the spec has no label for ids {missing}")
            self.layout, self._decode = "raw", self._raw_rows
        else:
            raise ValueError(f"{self.path}: output shape {shape} is neither yolov7's NMS export [K, 7] "
                             "nor its raw export [1, N, 5 + classes]")

    @property
    def description(self) -> str:
        return (f"{self.path.name} ({self.layout} output, input {self.input_width}x{self.input_height}) "
                f"on {self.backend}")

    def detect(self, image: Image.Image, threshold: float) -> list[dict]:
        rgb = np.asarray(image)
        height, width = rgb.shape[:2]
        canvas, ratio, pad = detections.letterbox(rgb, (self.input_height, self.input_width),
                                                  pad_value=LETTERBOX_PAD, center=True)
        blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[np.newaxis], dtype=np.float32) / 255
        (output,) = self.model.infer(blob).values()
        boxes, scores, classes = self._decode(output, threshold)

        boxes = detections.clip_boxes(detections.unletterbox(boxes, ratio, pad), width, height)
        # A box that lies wholly in the letterbox padding has no area left in the image.
        visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        order = np.argsort(-scores, kind="stable")
        return [detections.rectangle(self.labels[int(classes[i])], boxes[i], scores[i])
                for i in order if visible[i] and int(classes[i]) in self.labels]

    @staticmethod
    def _nms_rows(output: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = output[output[:, 6] >= threshold]
        return rows[:, 1:5], rows[:, 6], np.rint(rows[:, 5])

    @staticmethod
    def _raw_rows(output: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = output[0]
        rows = rows[rows[:, 4] >= threshold]  # objectness bounds the confidence: a cheap first cut
        class_scores = rows[:, 5:] * rows[:, 4:5]
        classes = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), classes]
        keep = scores >= threshold
        centre, size, scores, classes = rows[keep, 0:2], rows[keep, 2:4], scores[keep], classes[keep]
        boxes = np.concatenate((centre - size / 2, centre + size / 2), axis=1)
        kept = detections.batched_nms(boxes, scores, classes, NMS_IOU, MAX_CANDIDATES)[:MAX_DETECTIONS]
        return boxes[kept], scores[kept], classes[kept]
