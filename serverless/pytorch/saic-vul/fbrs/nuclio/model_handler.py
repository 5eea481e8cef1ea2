"""f-BRS (CVAT's "f-BRS"): DeepLabV3+ ResNet-101 with distance-map clicks, refined per request by
feature backpropagating refinement (f-BRS-B), in plain PyTorch on the official checkpoint. The
network and its checkpoint are in ``network.py``.

The predictor is CVAT's ``get_predictor(net, 'f-BRS-B', prob_thresh=threshold,
brs_opt_func_params={'min_iou_diff': 0.001}, lbfgs_params={'maxfun': 20},
predictor_params={'max_size': 800, 'net_clicks_limit': 8}, zoom_in_params={...})`` with the
library's defaults for the rest (horizontal-flip averaging, optimisation from the second click,
regularisation 1e-3 with bias weight 10, click disks of radius 1), called once per request on a
fresh predictor, as CVAT's handler does:

1. an image longer than 800 px is resized so its longest side is 800 (clicks scaled with it);
2. the image and its mirror image form a batch of two, with mirrored clicks;
3. with two clicks or more, a per-channel scale (1 + s) and bias b on the 288 features are found by
   L-BFGS minimising the click loss (mean squared shortfall of the probability on the positive and
   negative click disks) plus 1e-3 (|s|^2 + 10 |b|^2); evaluations stop contributing a gradient
   once every click disk is on its side of the threshold or the mask changes by less than IoU 0.001,
   and the lowest-loss prediction seen is kept;
4. the two logit maps are averaged (the mirrored one flipped back), passed through a sigmoid and
   resized to the image; the mask is probability > threshold, the confidence the mean probability
   over the mask.

Zoom-in (expansion 1.4, skip_clicks 1, target 480) is configured in CVAT's call but never acts
there: it crops around the *previous* call's mask, and CVAT makes a new predictor for every
request, so there is none. It is left out here for the same result. Step 3, the refinement, is in
``brs.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from serverless.common import model_files
from serverless.common.interactors import Interaction, Interactor, Segmentation

from brs import optimise_scale_bias
from network import BRS_CHANNELS, CHECKPOINT, FbrsDeepLab, load_network

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)

# Predictor: CVAT's parameters and isegm's defaults.
MAX_SIZE = 800
NET_CLICKS_LIMIT = 8
OPTIMIZE_AFTER_N_CLICKS = 1
CLICK_RADIUS = 1


class Click(NamedTuple):
    is_positive: bool
    y: float
    x: float


# --- clicks ---------------------------------------------------------------------------------------

def click_points(click_lists: list[list[Click]]) -> torch.Tensor:
    """BasePredictor.get_points_nd: per list, its first 8 clicks as (y, x), positives then
    negatives, each group padded with (-1, -1) to the same length (the longest group, at most 8)."""
    longest = max(max(sum(c.is_positive for c in clicks), sum(not c.is_positive for c in clicks))
                  for clicks in click_lists)
    length = max(1, min(NET_CLICKS_LIMIT, longest))
    rows = []
    for clicks in click_lists:
        clicks = clicks[:NET_CLICKS_LIMIT]
        groups = [[(c.y, c.x) for c in clicks if c.is_positive == positive] for positive in (True, False)]
        rows.append([point for group in groups for point in group + [(-1.0, -1.0)] * (length - len(group))])
    return torch.tensor(rows, dtype=torch.float32)


def click_disks(click_lists: list[list[Click]], shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B, 1, H, W) positive and negative masks the BRS loss reads: a (2r+1)-square around each
    rounded click. Unlike isegm, a square crossing the top or left edge is clipped, not dropped."""
    positive, negative = (torch.zeros((len(click_lists), 1, *shape)) for _ in range(2))
    for index, clicks in enumerate(click_lists):
        for click in clicks:
            y, x = int(round(click.y)), int(round(click.x))
            target = positive if click.is_positive else negative
            target[index, 0, max(y - CLICK_RADIUS, 0):y + CLICK_RADIUS + 1,
                   max(x - CLICK_RADIUS, 0):x + CLICK_RADIUS + 1] = 1
    return positive, negative


def limited_size(height: int, width: int, max_size: int = MAX_SIZE) -> tuple[int, int]:
    """LimitLongestSide: the size the image is resized to (unchanged when it already fits)."""
    if max(height, width) <= max_size:
        return height, width
    scale = max_size / max(height, width)
    return int(round(height * scale)), int(round(width * scale))


def scale_clicks(clicks: list[Click], size: tuple[int, int], new_size: tuple[int, int]) -> list[Click]:
    """ZoomIn._transform_clicks on the whole image: y * new_height / height, x * new_width / width."""
    (height, width), (new_height, new_width) = size, new_size
    return [Click(c.is_positive, new_height * c.y / height, new_width * c.x / width) for c in clicks]


def mirror_clicks(clicks: list[Click], width: int) -> list[Click]:
    """AddHorizontalFlip: x -> width - 1 - x."""
    return [Click(c.is_positive, c.y, width - 1 - c.x) for c in clicks]


def clicks_of(interaction: Interaction) -> list[Click]:
    """CVAT's [x, y] points as (y, x) clicks, positive first, then negative, as CVAT's handler adds
    them (the order decides which clicks are among the 8 the network sees)."""
    return ([Click(True, float(y), float(x)) for x, y in interaction.pos_points]
            + [Click(False, float(y), float(x)) for x, y in interaction.neg_points])


# --- the predictor --------------------------------------------------------------------------------

def predict_probabilities(network: FbrsDeepLab, image: torch.Tensor, clicks: list[Click],
                          prob_thresh: float) -> np.ndarray:
    """One get_prediction of a fresh f-BRS-B predictor: ``image`` (1, 3, H, W) normalised, clicks in
    image pixels -> H x W object probabilities."""
    size = image.shape[2:]
    input_size = limited_size(*size)
    if input_size != size:
        image = F.interpolate(image, size=input_size, mode="bilinear", align_corners=True)
        clicks = scale_clicks(clicks, size, input_size)
    images = torch.cat((image, image.flip(3)), dim=0)
    click_lists = [clicks, mirror_clicks(clicks, input_size[1])]
    with torch.no_grad():
        features = network.head_input(images, click_points(click_lists).to(image.device))

    def logits_of(scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # One (s, b) for both mirror images, as isegm repeats it over the flipped half.
        return network.logits(features * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), input_size)

    if len(clicks) > OPTIMIZE_AFTER_N_CLICKS:
        positive, negative = (m.to(image.device) for m in click_disks(click_lists, input_size))
        logits = optimise_scale_bias(logits_of, positive, negative, prob_thresh)
    else:
        with torch.no_grad():
            logits = logits_of(torch.ones(BRS_CHANNELS, device=image.device),
                               torch.zeros(BRS_CHANNELS, device=image.device))
    probabilities = torch.sigmoid(0.5 * (logits[:1] + logits[1:].flip(3)))
    if input_size != size:
        probabilities = F.interpolate(probabilities, size=size, mode="bilinear", align_corners=True)
    return probabilities[0, 0].cpu().numpy()


class FBRS(Interactor):
    def __init__(self, checkpoint: Path | None = None):
        checkpoint = checkpoint or model_files.resolve("fbrs").files[CHECKPOINT]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network = load_network(checkpoint, self.device)
        self.mean = torch.tensor(PIXEL_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(PIXEL_STD, device=self.device).view(1, 3, 1, 1)

    def normalise(self, rgb: np.ndarray) -> torch.Tensor:
        """H x W x 3 uint8 -> (1, 3, H, W): ToTensor (0..1) and ImageNet mean and std."""
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255
        return (image - self.mean) / self.std

    def segment(self, interaction: Interaction) -> Segmentation:
        """H x W mask: probability > threshold; the confidence is the mean probability over it."""
        probabilities = predict_probabilities(self.network, self.normalise(interaction.image),
                                              clicks_of(interaction), interaction.threshold)
        return Segmentation.above(probabilities, interaction.threshold)
