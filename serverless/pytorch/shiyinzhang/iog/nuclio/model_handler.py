"""IOG (Inside-Outside Guidance, Zhang et al., CVPR 2020) in plain PyTorch, loading the official
``IOG_PASCAL_SBD.pth`` key for key (``network.py``), with CVAT's pre- and post-processing.

Request handling follows CVAT's handler (docs/wire-format.md §1.8.4):

1. The box (required) grown by 30 px, clipped to the image; the crop includes its right column and
   bottom row, as IOG's own ``crop_from_bbox`` does. (CVAT counts the crop's size that way but cuts
   it with PIL, which leaves out the last column and row, so its clicks and mask were scaled for a
   crop one pixel larger than the one it fed. IOG's test script does not clip: it zero-pads the
   crop where it leaves the image, and resizes it bilinearly.)
2. The crop resized to 512 x 512 with OpenCV's nearest neighbour, RGB 0-255, no mean or std.
3. Clicks moved into the crop and scaled by 512 / crop size: the inside map is the max of
   Gaussians (sigma 10) at the positive clicks, the outside map the same at the negative clicks;
   both are min-max normalised together to 0-255. IOG itself was trained and tested with one
   inside click (the object's most interior point) and, outside, the four corners of the object's
   tight box grown by 10 px in the 512 crop; CVAT sends neither corners nor a centre, only the
   clicks, and the box only defines the crop. That wire meaning is kept here.
4. Foreground is the raw network output above the threshold (default 0.8), as CVAT compares it:
   IOG's test script applies a sigmoid first, so 0.8 is a probability of about 0.69.
   The output is a logit (the fine head ends in a batch norm; IOG's tests and training loss apply
   the sigmoid outside the network), so the confidence is the mean of its sigmoid over the 512 x
   512 foreground.
5. The 512 x 512 mask resized to the crop's size (OpenCV bicubic on 0/1, non-zero kept) and pasted
   into an image-sized mask.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from serverless.common import model_files
from serverless.common.boxes import Box
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

from network import INPUT_SIZE, load_network

CHECKPOINT = "IOG_PASCAL_SBD.pth"
CROP_PADDING = 30  # pixels around the box, as CVAT and IOG's test (CropFromMask relax=30)
GUIDANCE_SIGMA = 10.0  # IOG's make_gaussian default (and IOGPoints(sigma=10))
DEFAULT_THRESHOLD = 0.8  # CVAT's, on the raw output


def crop_box(box: Box[float], shape: tuple[int, int]) -> Box[int]:
    """The crop around ``box`` (x1, y1, x2, y2): corners truncated to pixels, grown by 30, clipped to
    the image's last column and row; inclusive, so the crop is x2 - x1 + 1 pixels wide."""
    x1, y1, x2, y2 = box
    return padded_box(np.array([[x1, y1], [x2, y2]]), CROP_PADDING, shape)


def crop_and_resize(image: np.ndarray, crop: Box[int]) -> np.ndarray:
    """The inclusive crop of an H x W x 3 image at 512 x 512 (OpenCV nearest: source pixel
    floor(i * size / 512)), float32 0-255."""
    x1, y1, x2, y2 = crop
    pixels = np.ascontiguousarray(image[y1:y2 + 1, x1:x2 + 1]).astype(np.float32)
    return cv2.resize(pixels, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_NEAREST)


def guidance_maps(pos_points: np.ndarray, neg_points: np.ndarray, crop: Box[int]) -> np.ndarray:
    """512 x 512 x 2 float32: the inside map (positive clicks) and the outside map (negative clicks),
    clicks in crop coordinates scaled by 512 / crop size, normalised together to 0-255."""
    x1, y1, x2, y2 = crop
    origin = np.array([x1, y1], dtype=np.float64)
    scale = INPUT_SIZE / np.array([x2 - x1 + 1, y2 - y1 + 1], dtype=np.float64)
    maps = [gaussian_heatmap((points - origin) * scale, (INPUT_SIZE, INPUT_SIZE), GUIDANCE_SIGMA)
            for points in (pos_points, neg_points)]
    return normalise_255(np.stack(maps, axis=2))


def network_input(image: np.ndarray, pos_points: np.ndarray, neg_points: np.ndarray,
                  crop: Box[int]) -> torch.Tensor:
    """``(1, 5, 512, 512)``: the resized crop's RGB, then the inside and outside maps."""
    planes = np.concatenate([crop_and_resize(image, crop), guidance_maps(pos_points, neg_points, crop)], axis=2)
    return torch.from_numpy(planes.transpose(2, 0, 1).copy())[None]


def output_to_mask(output: np.ndarray, threshold: float, crop: Box[int],
                   shape: tuple[int, int]) -> np.ndarray:
    """The 512 x 512 raw output to an H x W 0/1 mask: foreground where it is above ``threshold``,
    resized to the crop's size (OpenCV bicubic on 0/1; any non-zero value is foreground, as CVAT's
    normalisation to 0/255 makes it) and pasted at the crop."""
    x1, y1, x2, y2 = crop
    foreground = (output > threshold).astype(np.uint8)
    resized = cv2.resize(foreground, (x2 - x1 + 1, y2 - y1 + 1), interpolation=cv2.INTER_CUBIC)
    return paste(resized, (x1, y1, x2 + 1, y2 + 1), shape)


class IOG(Interactor):
    def __init__(self, checkpoint: Path | None = None):
        checkpoint = checkpoint or model_files.resolve("iog").files[CHECKPOINT]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network = load_network(checkpoint, self.device)

    @torch.inference_mode()
    def segment(self, interaction: Interaction) -> Segmentation:
        """The object's H x W 0/1 mask from its box (required) and clicks, with its confidence."""
        crop = crop_box(interaction.box, interaction.shape)
        inputs = network_input(interaction.image, interaction.pos_points, interaction.neg_points, crop)
        output = self.network(inputs.to(self.device).contiguous(memory_format=torch.channels_last))[0, 0]
        logits, probabilities = output.cpu().numpy(), torch.sigmoid(output).cpu().numpy()
        return Segmentation(output_to_mask(logits, interaction.threshold, crop, interaction.shape),
                            mean_probability(probabilities, logits > interaction.threshold))
