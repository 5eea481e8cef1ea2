"""Faces from face-detection-0205, then age/gender and emotion for each face from two OMZ classifiers.

All three are Open Model Zoo IRs that take BGR pixels 0..255 in NCHW with no mean or scale (the
IRs carry their own normalisation), so frames are flipped from RGB; CVAT feeds them RGB (its
§D17). The detector takes a plain resize to 416x416 and returns up to 200 rows
``x_min, y_min, x_max, y_max, confidence`` in input pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from serverless.common import detections, model_files
from serverless.common.handler import Detector
from serverless.common.openvino_model import OpenVINOModel

GENDERS = ("female", "male")
EMOTIONS = ("neutral", "happy", "sad", "surprise", "anger")
AGE_RANGE = (0, 150)  # the spec's number attribute


def _bgr_blob(rgb: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize an RGB array to an NCHW input shape, as float32 BGR."""
    height, width = shape[2], shape[3]
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized[:, :, ::-1].transpose(2, 0, 1)[np.newaxis].astype(np.float32)


class FaceDetector(Detector):
    def __init__(self):
        self.detector = OpenVINOModel(model_files.resolve("face-detection-0205").file(".xml"))
        self.age_gender = OpenVINOModel(model_files.resolve("age-gender-recognition-retail-0013").file(".xml"))
        self.emotions = OpenVINOModel(model_files.resolve("emotions-recognition-retail-0003").file(".xml"))

    def detect(self, image: Image.Image, threshold: float) -> list[dict]:
        rgb = np.asarray(image)
        height, width = rgb.shape[:2]
        rows = self.detector.infer(_bgr_blob(rgb, self.detector.input_shape))["boxes"]
        rows = rows[rows[:, 4] >= threshold]

        _, _, net_height, net_width = self.detector.input_shape
        scale = np.array([width / net_width, height / net_height] * 2, dtype=np.float32)
        boxes = detections.clip_boxes(rows[:, :4] * scale, width, height)
        # A box must cover at least one whole pixel to be cropped for its attributes.
        crops, kept = [], []
        for box, confidence in zip(boxes, rows[:, 4]):
            x0, y0 = int(box[0]), int(box[1])
            x1, y1 = min(math.ceil(box[2]), width), min(math.ceil(box[3]), height)
            if x1 - x0 >= 1 and y1 - y0 >= 1:
                crops.append(rgb[y0:y1, x0:x1])
                kept.append((box, confidence))

        age_gender = self.age_gender.infer_many([_bgr_blob(c, self.age_gender.input_shape) for c in crops])
        emotions = self.emotions.infer_many([_bgr_blob(c, self.emotions.input_shape) for c in crops])
        return [
            detections.rectangle("face", box, confidence, {
                "age": str(int(np.clip(ag["age_conv3"].item() * 100, *AGE_RANGE))),
                "gender": GENDERS[int(ag["prob"].argmax())],
                "emotion": EMOTIONS[int(em["prob_emotion"].argmax())],
            })
            for (box, confidence), ag, em in zip(kept, age_gender, emotions)
        ]
