"""DEXTR (Deep Extreme Cut): a mask from four or more extreme points, on OpenVINO.

The network is DEXTR-PyTorch's ResNet-101/PSP trained on PASCAL + SBD (dextr_pascal-sbd.pth),
exported at image build time by export_dextr.py to the IR ``dextr.xml``/``.bin``: input (1, 4, 512,
512), RGB 0..255 and the heatmap; output (1, 1, 512, 512) foreground probabilities.

One request, as CVAT's function does it (docs/wire-format.md §1.8.1):

1. the points (``pos_points``; at least 4), truncated to integers, give the crop box: their bounds
   grown by 50 pixels and clipped to the image's last row and column, cropped as [x1, x2) x [y1, y2);
2. the crop is resized to 512x512 bicubic, RGB 0..255, no mean or scale;
3. the points, moved into the crop and scaled to 512 (truncated), become Gaussians with a 10-pixel
   full width at half maximum, the max taken over points, min-max normalised to 0..255;
4. foreground is where the probability is above the threshold, 0.8 by default;
5. that mask is resized to the crop's size (nearest) and pasted into an image-sized zero mask.

Confidence: the mean of the 512x512 probabilities over that foreground, before it is resized.

``neg_points`` and ``obj_bbox`` are not used (DEXTR has no input for them). Unlike CVAT, which
ignores it, a request ``threshold`` replaces the 0.8 (0 gives the whole crop box).

Only the IR runs here: when the model directory holds just the checkpoint, loading fails with the
export command to run (exporting inside a worker would need torch in the function image and take
tens of seconds per worker).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from serverless.common import model_files
from serverless.common import settings as function_settings
from serverless.common.boxes import Box
from serverless.common.handler import BadRequest
from serverless.common.interactors import (
    Interaction,
    Interactor,
    Segmentation,
    gaussian_heatmap,
    mean_probability,
    normalise_255,
    padded_box,
    paste,
)
from serverless.common.openvino_model import OpenVINOModel

MODEL = "dextr"  # the catalogue entry
EXPORT_SCRIPT = Path(__file__).with_name("export_dextr.py")
MIN_POS_POINTS = 4
PADDING = 50  # pixels around the points' bounds
INPUT_SIZE = 512
SIGMA = 10  # heatmap Gaussians' full width at half maximum, in network-input pixels
THRESHOLD = 0.8


def crop_box(points: np.ndarray, shape: tuple[int, int]) -> Box[int]:
    """The crop around the points; x2 and y2 are exclusive here, as the reference crops."""
    x1, y1, x2, y2 = padded_box(points, PADDING, shape)
    if x2 <= x1 or y2 <= y1:  # only for a one-pixel-wide or -high image
        raise BadRequest(f"the {shape[1]}x{shape[0]} image is too small to crop around the points")
    return x1, y1, x2, y2


def network_input(image: np.ndarray, points: np.ndarray, box: Box[int]) -> np.ndarray:
    """(1, 4, 512, 512) float32: the crop resized bicubic (RGB 0..255) and the point heatmap."""
    x1, y1, x2, y2 = box
    crop = cv2.resize(image[y1:y2, x1:x2], (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_CUBIC)
    scale = np.array([INPUT_SIZE / (x2 - x1), INPUT_SIZE / (y2 - y1)])
    # Truncated twice, as the reference does: in the image, then in the network input.
    heatmap_points = ((points.astype(int) - [x1, y1]) * scale).astype(int)
    heatmap = normalise_255(gaussian_heatmap(heatmap_points, (INPUT_SIZE, INPUT_SIZE), SIGMA))
    channels = np.concatenate([crop.astype(np.float32), heatmap[:, :, None]], axis=2)
    return channels.transpose(2, 0, 1)[None]


def image_mask(probabilities: np.ndarray, box: Box[int], shape: tuple[int, int], threshold: float) -> np.ndarray:
    """The 512x512 probabilities -> an image-sized 0/1 mask, foreground above ``threshold``."""
    x1, y1, x2, y2 = box
    foreground = (probabilities > threshold).astype(np.uint8)
    return paste(cv2.resize(foreground, (x2 - x1, y2 - y1), interpolation=cv2.INTER_NEAREST), box, shape)


class Dextr(Interactor):
    def __init__(self, settings: function_settings.FunctionSettings | None = None):
        resolved = model_files.resolve(MODEL, settings)
        if not any(name.endswith(".xml") for name in resolved.files):
            checkpoint = next(iter(resolved.files.values()))
            raise RuntimeError(f"only the checkpoint {checkpoint} is there; this function runs its OpenVINO export: "
                               f"python {EXPORT_SCRIPT} {checkpoint} (writes dextr.xml and dextr.bin beside it)")
        self.model = OpenVINOModel(resolved.file(".xml"), settings)
        expected = (1, 4, INPUT_SIZE, INPUT_SIZE)
        if self.model.input_shape != expected or self.model.output_shape != (1, 1, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"{resolved.file('.xml')}: expected input {expected} and output (1, 1, 512, 512), "
                             f"got {self.model.input_shape} and {self.model.output_shape}")

    def segment(self, interaction: Interaction) -> Segmentation:
        box = crop_box(interaction.pos_points, interaction.shape)
        (probabilities,) = self.model.infer(network_input(interaction.image, interaction.pos_points, box)).values()
        probabilities = probabilities[0, 0]
        return Segmentation(image_mask(probabilities, box, interaction.shape, interaction.threshold),
                            mean_probability(probabilities, probabilities > interaction.threshold))
