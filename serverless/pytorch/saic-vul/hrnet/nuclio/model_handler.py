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

from pathlib import Path

import numpy as np
import torch

from serverless.common import model_files
from serverless.common.interactors import Interaction, Interactor, Segmentation

from network import HRNetModel, load_network
from zoom_in import Click, ZoomIn

CHECKPOINT = "coco_lvis_h18_itermask.pth"


# --- the predictor (isegm/inference/predictors/base.py, flip.py) ------------------------------------

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
