"""person-reidentification-retail-0277: one embedding per person crop, compared by cosine distance.

What this relies on, from the Open Model Zoo documentation of the model (the official IR cannot be
fetched on the machines this was written on, so it never ran here): input ``data``
``[1, 3, 256, 128]`` (B, C, H, W), **BGR**, pixels 0..255 with no mean or scale (OMZ's Intel IRs
carry their own normalisation); output ``reid_embedding`` ``[1, 256]``, meant to be compared by
cosine distance. Each crop is resized plainly to the input size the IR declares (no letterbox, as
CVAT's loader and OMZ's demos do) and flipped to BGR; CVAT feeds it RGB (§D17).
"""

from __future__ import annotations

import cv2
import numpy as np

from serverless.common import model_files
from serverless.common.openvino_model import OpenVINOModel

MODEL = "person-reidentification-retail-0277"


class PersonReidentification:
    def __init__(self):
        self.model = OpenVINOModel(model_files.resolve(MODEL).file(".xml"))
        _, _, self.input_height, self.input_width = self.model.input_shape

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """One embedding row per RGB crop; the crops go through the model's parallel infer requests."""
        blobs = [self._blob(crop) for crop in crops]
        return np.stack([self._embedding(outputs) for outputs in self.model.infer_many(blobs)])

    def _blob(self, rgb: np.ndarray) -> np.ndarray:
        resized = cv2.resize(rgb, (self.input_width, self.input_height), interpolation=cv2.INTER_LINEAR)
        return resized[:, :, ::-1].transpose(2, 0, 1)[np.newaxis].astype(np.float32)

    @staticmethod
    def _embedding(outputs: dict[str, np.ndarray]) -> np.ndarray:
        (embedding,) = outputs.values()  # the model has one output, whatever its name
        return embedding.reshape(-1)
