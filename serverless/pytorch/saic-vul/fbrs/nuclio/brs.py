"""f-BRS-B, the refinement f-BRS adds to its network (isegm's ``ScaleBiasOptimizer`` with
``BRSMaskLoss``): a per-channel scale (1 + s) and bias b on the network's 288 "after ASPP"
features, found per request by L-BFGS so that the prediction agrees with the clicks.

scipy's ``fmin_l_bfgs_b`` (m 20, maxfun 20, maxiter 40, pgtol 1e-8, factr 0) is replaced by
``torch.optim.LBFGS`` with the same limits and a strong-Wolfe line search; both stop on a zero
gradient, which is how the click objective signals it is satisfied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from network import BRS_CHANNELS

# CVAT's parameters (min_iou_diff, maxfun) and isegm's defaults.
REG_WEIGHT = 1e-3
REG_BIAS_WEIGHT = 10.0
MIN_IOU_DIFF = 0.001
LBFGS_MAXFUN = 20
LBFGS_HISTORY = 20
LBFGS_PGTOL = 1e-8
LOSS_EPS = 1e-5


class ScaleBiasObjective:
    """isegm's ScaleBiasOptimizer with BRSMaskLoss: the value and gradient L-BFGS sees for the
    parameters (s, b) of the feature transform (1 + s) * f + b."""

    def __init__(self, logits_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 positive: torch.Tensor, negative: torch.Tensor, prob_thresh: float):
        self.logits_of = logits_of
        self.positive, self.negative = positive, negative
        self.prob_thresh = prob_thresh
        self.best_logits: torch.Tensor | None = None
        self.best_loss = float("inf")
        self.last_mask: torch.Tensor | None = None

    def __call__(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = params.detach().requires_grad_(True)
        with torch.enable_grad():
            scale, bias = params.chunk(2)
            regularisation = REG_WEIGHT * (scale.pow(2).sum() + REG_BIAS_WEIGHT * bias.pow(2).sum())
            logits = self.logits_of(1 + scale, bias)
            probabilities = torch.sigmoid(logits)
            positive_gap = (1 - probabilities) * self.positive
            negative_gap = probabilities * self.negative
            loss = (positive_gap.pow(2).sum() / (self.positive.sum() + LOSS_EPS)
                    + negative_gap.pow(2).sum() / (self.negative.sum() + LOSS_EPS) + regularisation)
        value = loss.detach()
        if float(value) < self.best_loss:
            self.best_logits, self.best_loss = logits.detach(), float(value)
        no_gradient = torch.zeros_like(params)
        # Every click disk on its side of the threshold: nothing left to fix.
        if (float(positive_gap.detach().max()) < 1 - self.prob_thresh
                and float(negative_gap.detach().max()) < self.prob_thresh):
            return value, no_gradient
        mask = probabilities.detach() > self.prob_thresh
        if self.last_mask is not None:
            iou = mask_ious(mask, self.last_mask)
            if len(iou) and iou.mean() > 1 - MIN_IOU_DIFF:  # the mask has settled
                return value, no_gradient
        self.last_mask = mask
        (gradient,) = torch.autograd.grad(loss, params)
        return value, gradient


def mask_ious(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of two (B, ...) boolean masks, for the samples whose union is not empty."""
    union = (first | second).flatten(1).float().mean(dim=1)
    intersection = (first & second).flatten(1).float().mean(dim=1)
    nonempty = union > 0
    return intersection[nonempty] / union[nonempty]


def optimise_scale_bias(logits_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], positive: torch.Tensor,
                        negative: torch.Tensor, prob_thresh: float) -> torch.Tensor:
    """f-BRS: L-BFGS over (s, b) from zero; returns the lowest-loss logits any evaluation produced."""
    objective = ScaleBiasObjective(logits_of, positive, negative, prob_thresh)
    params = torch.zeros(2 * BRS_CHANNELS, device=positive.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=1, max_iter=2 * LBFGS_MAXFUN, max_eval=LBFGS_MAXFUN,
                                  tolerance_grad=LBFGS_PGTOL, tolerance_change=0, history_size=LBFGS_HISTORY,
                                  line_search_fn="strong_wolfe")

    def closure():
        loss, params.grad = objective(params)
        return loss

    optimizer.step(closure)
    return objective.best_logits
