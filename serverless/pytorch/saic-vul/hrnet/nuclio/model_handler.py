"""RITM's HRNet18 interactor (saic-vul/ritm_interactive_segmentation) in plain PyTorch: the
predictor around the network and checkpoint of ``network.py``.

The predictor is RITM's ``BasePredictor`` as CVAT's function builds it (``get_predictor(net,
"NoBRS", prob_thresh=0.49)``: the 0.49 is only read by the BRS modes): each pass averages the
logits of the input and its horizontal flip, takes the sigmoid, and goes through ``ZoomIn`` with its
defaults (from the second click on, the object's box in the previous prediction, grown 1.4 times,
at least 200 px, resized to 400 px on its longer side).

How clicks are replayed differs from CVAT. CVAT makes a fresh predictor for every request and runs
it once with all clicks, so the previous-mask channel is always zero and ZoomIn never engages (it
needs a previous prediction). Here the clicks are replayed as RITM's demo and evaluation run them:
one pass per click (the positive points in order, then the negative ones, the order CVAT adds them
in), each fed the previous pass's prediction and zoomed on the object. With one click both give the
same result; with more the model sees what it was trained and evaluated on, and passes after the
first run on a crop of at most 400 px. The request carries no previous mask (CVAT never sends one).

Mask: probability > threshold (default 0.5) over the whole image, as CVAT's handler; confidence:
the mean probability over the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from serverless.common import model_files
from serverless.common.interactors import Interaction, Interactor, Segmentation

from network import HRNetModel, load_network

CHECKPOINT = "coco_lvis_h18_itermask.pth"

# ZoomIn's defaults (isegm/inference/transforms/zoom_in.py), which CVAT's get_predictor call keeps.
ZOOM_TARGET_SIZE = 400
ZOOM_SKIP_CLICKS = 1
ZOOM_EXPANSION_RATIO = 1.4
ZOOM_MIN_CROP_SIZE = 200
ZOOM_RECOMPUTE_IOU = 0.5
ZOOM_PROB_THRESH = 0.5


# --- the predictor (isegm/inference/predictors/base.py, transforms/zoom_in.py, flip.py) --------------

@dataclass(frozen=True)
class Click:
    y: float
    x: float
    positive: bool


RoI = tuple[int, int, int, int]  # rmin, rmax, cmin, cmax, all inclusive


def object_roi(object_mask: np.ndarray, clicks: list[Click]) -> RoI:
    """ZoomIn's box around the object: the mask plus the positive clicks' pixels, grown by
    ZOOM_EXPANSION_RATIO about its centre to at least ZOOM_MIN_CROP_SIZE, clipped to the image."""
    height, width = object_mask.shape
    mask = object_mask.copy()
    for click in clicks:
        if click.positive:  # a click on the right or bottom edge (x == W) marks the last column
            mask[min(int(click.y), height - 1), min(int(click.x), width - 1)] = True
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    rmin, rmax, cmin, cmax = rows[0], rows[-1], cols[0], cols[-1]
    centre_r, centre_c = 0.5 * (rmin + rmax), 0.5 * (cmin + cmax)
    box_h = max(ZOOM_EXPANSION_RATIO * (rmax - rmin + 1), ZOOM_MIN_CROP_SIZE)
    box_w = max(ZOOM_EXPANSION_RATIO * (cmax - cmin + 1), ZOOM_MIN_CROP_SIZE)
    # Python's round (half to even), as RITM's expand_bbox
    return (max(int(round(centre_r - 0.5 * box_h)), 0), min(int(round(centre_r + 0.5 * box_h)), height - 1),
            max(int(round(centre_c - 0.5 * box_w)), 0), min(int(round(centre_c + 0.5 * box_w)), width - 1))


def roi_iou(a: RoI, b: RoI) -> float:
    """RITM's get_bbox_iou: the product of the row and column overlaps (inclusive ends)."""
    def overlap(s, t):
        return max(0, min(s[1], t[1]) - max(s[0], t[0]) + 1) / max(1e-6, max(s[1], t[1]) - min(s[0], t[0]) + 1)
    return overlap(a[:2], b[:2]) * overlap(a[2:], b[2:])


def clicks_inside(roi: RoI, clicks: list[Click]) -> bool:
    """RITM's check_object_roi (the upper bounds are exclusive there)."""
    rmin, rmax, cmin, cmax = roi
    return all(rmin <= c.y < rmax and cmin <= c.x < cmax for c in clicks if c.positive)


def crop_size(roi: RoI) -> tuple[int, int]:
    """The zoomed input's (height, width): the RoI scaled to ZOOM_TARGET_SIZE on its longer side."""
    height, width = roi[1] - roi[0] + 1, roi[3] - roi[2] + 1
    scale = ZOOM_TARGET_SIZE / max(height, width)
    return int(round(height * scale)), int(round(width * scale))


class ZoomIn:
    """RITM's ZoomIn for one object: remembers the last prediction and the current RoI."""

    def __init__(self):
        self.roi: RoI | None = None
        self.zoomed = False  # whether this pass ran on the RoI
        self.prev_probs: torch.Tensor | None = None  # the last full-image prediction, 1 x 1 x H x W

    def transform(self, net_input: torch.Tensor, clicks: list[Click]) -> tuple[torch.Tensor, list[Click]]:
        self.zoomed = False
        if len(clicks) <= ZOOM_SKIP_CLICKS or self.prev_probs is None:
            return net_input, clicks
        object_mask = (self.prev_probs[0, 0] > ZOOM_PROB_THRESH).cpu().numpy()
        if not object_mask.any():
            return net_input, clicks
        candidate = object_roi(object_mask, clicks)
        if self.roi is None or not clicks_inside(self.roi, clicks) or roi_iou(candidate, self.roi) < ZOOM_RECOMPUTE_IOU:
            self.roi = candidate
        self.zoomed = True
        rmin, rmax, cmin, cmax = self.roi
        size = crop_size(self.roi)
        crop = F.interpolate(net_input[:, :, rmin:rmax + 1, cmin:cmax + 1], size=size, mode="bilinear",
                             align_corners=True)
        roi_h, roi_w = rmax - rmin + 1, cmax - cmin + 1
        return crop, [Click(size[0] * (c.y - rmin) / roi_h, size[1] * (c.x - cmin) / roi_w, c.positive) for c in clicks]

    def inv_transform(self, probs: torch.Tensor) -> torch.Tensor:
        """The pass's probabilities on the whole image (zero outside the RoI when zoomed)."""
        if self.zoomed:
            rmin, rmax, cmin, cmax = self.roi
            full = torch.zeros_like(self.prev_probs)
            full[:, :, rmin:rmax + 1, cmin:cmax + 1] = F.interpolate(
                probs, size=(rmax - rmin + 1, cmax - cmin + 1), mode="bilinear", align_corners=True)
            probs = full
        # RITM keeps a stale RoI after a pass that did not zoom and pastes into it; here such a pass
        # simply stands for the whole image.
        self.prev_probs = probs
        return probs


def points_tensor(click_lists: list[list[Click]]) -> torch.Tensor:
    """BasePredictor.get_points_nd: per list, the positive clicks then the negative ones as
    (y, x, click index), each group padded with (-1, -1, -1) to the longest group (at least 1)."""
    longest = max([1] + [sum(c.positive == sign for c in clicks) for clicks in click_lists for sign in (True, False)])
    rows = []
    for clicks in click_lists:
        indexed = list(enumerate(clicks))
        groups = [[(c.y, c.x, i) for i, c in indexed if c.positive == sign] for sign in (True, False)]
        rows.append([point for group in groups for point in group + [(-1, -1, -1)] * (longest - len(group))])
    return torch.tensor(rows, dtype=torch.float32)


def predict_pass(network: HRNetModel, net_input: torch.Tensor, clicks: list[Click], zoom: ZoomIn) -> torch.Tensor:
    """One BasePredictor.get_prediction: zoom, add the horizontal flip, run, average, sigmoid, unzoom."""
    net_input, clicks = zoom.transform(net_input, clicks)
    width = net_input.shape[3]
    flipped = [Click(c.y, width - c.x - 1, c.positive) for c in clicks]
    batch = torch.cat([net_input, torch.flip(net_input, dims=[3])])
    logits = network(batch, points_tensor([clicks, flipped]).to(net_input.device))
    probs = torch.sigmoid(0.5 * (logits[:1] + torch.flip(logits[1:], dims=[3])))
    return zoom.inv_transform(probs)


@torch.inference_mode()
def predict(network: HRNetModel, image: np.ndarray, clicks: list[Click]) -> np.ndarray:
    """Object probabilities (H x W) for an RGB uint8 image, the clicks replayed one pass each."""
    device = next(network.parameters()).device
    rgb = torch.tensor(image, device=device).permute(2, 0, 1)[None].float() / 255
    zoom = ZoomIn()
    probs = torch.zeros_like(rgb[:, :1])  # the previous mask before the first click
    for count in range(1, len(clicks) + 1):
        net_input = torch.cat([rgb, probs], 1) if network.config.with_prev_mask else rgb
        probs = predict_pass(network, net_input, clicks[:count], zoom)
    return probs[0, 0].cpu().numpy()


def interaction_clicks(interaction: Interaction) -> list[Click]:
    """CVAT's points (x, y) as RITM's clicks (y, x): positives first, as CVAT's handler adds them."""
    return ([Click(float(y), float(x), True) for x, y in interaction.pos_points]
            + [Click(float(y), float(x), False) for x, y in interaction.neg_points])


class HRNetRITM(Interactor):
    def __init__(self, checkpoint: Path | None = None):
        checkpoint = checkpoint or model_files.resolve("hrnet-ritm").files[CHECKPOINT]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network = load_network(checkpoint, self.device)

    def segment(self, interaction: Interaction) -> Segmentation:
        """The object mask (H x W bool): probability > the request's threshold; the confidence is
        the mean probability over it."""
        probabilities = predict(self.network, interaction.image, interaction_clicks(interaction))
        return Segmentation.above(probabilities, interaction.threshold)
