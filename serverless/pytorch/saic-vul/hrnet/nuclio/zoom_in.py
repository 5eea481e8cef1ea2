"""RITM's ZoomIn (isegm/inference/transforms/zoom_in.py) with the defaults CVAT's ``get_predictor``
call keeps: from the second click on, each pass runs on the object's box in the previous
prediction, grown 1.4 times, at least 200 px, resized to 400 px on its longer side, and its
probabilities are pasted back into the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# ZoomIn's defaults (isegm/inference/transforms/zoom_in.py), which CVAT's get_predictor call keeps.
ZOOM_TARGET_SIZE = 400
ZOOM_SKIP_CLICKS = 1
ZOOM_EXPANSION_RATIO = 1.4
ZOOM_MIN_CROP_SIZE = 200
ZOOM_RECOMPUTE_IOU = 0.5
ZOOM_PROB_THRESH = 0.5


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
