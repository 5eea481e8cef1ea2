"""f-BRS (CVAT's "f-BRS"): DeepLabV3+ ResNet-101 with distance-map clicks, refined per request by
feature backpropagating refinement (f-BRS-B), in plain PyTorch on the official checkpoint.

The network is saic-vul/fbrs_interactive_segmentation's ``get_deeplab_model`` as
``load_deeplab_is_model`` builds it for ``resnet101_dh256_sbd.pth`` (a plain state dict converted
from MXNet: tensors only, no ``num_batches_tracked``):

- clicks become two distance maps (positive, negative), tanh(2 d / 260) to the nearest click, d in
  pixels; padding clicks (-1, -1) count as infinitely far;
- ``rgb_conv`` mixes the normalised RGB and the two maps into 3 channels;
- ResNet-101 v1s (deep stem of three 3x3 convs, stride in the 3x3 conv, layers 3 and 4 dilated:
  output stride 8), ASPP (rates 12/24/36, 256 channels) upsampled to the stride-4 skip projection
  (32 channels) and concatenated: the 288 "after ASPP" channels f-BRS-B refines;
- the DeepLab head (two separable convs and a 1x1 conv, 256 channels), then the instance head (two
  separable convs, 128 channels, one logit), resized to the input (bilinear, corners aligned).

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
request, so there is none. It is left out here for the same result. scipy's ``fmin_l_bfgs_b``
(m 20, maxfun 20, maxiter 40, pgtol 1e-8, factr 0) is replaced by ``torch.optim.LBFGS`` with the
same limits and a strong-Wolfe line search; both stop on a zero gradient, which is how the click
objective signals it is satisfied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from serverless.common import model_files
from serverless.common.torch_blocks import Bottleneck
from serverless.common.torch_weights import BATCHES_TRACKED, load_exactly
from serverless.common.interactors import Interaction, Segmentation

CHECKPOINT = "resnet101_dh256_sbd.pth"

# Network: get_deeplab_model(backbone='resnet101', deeplab_ch=256) with DistMaps(norm_radius=260).
RESNET_BLOCKS = (3, 4, 23, 3)
STEM_WIDTH = 64
DEEPLAB_CHANNELS = 256
SKIP_CHANNELS = 32
ASPP_RATES = (12, 24, 36)
HEAD_CHANNELS = DEEPLAB_CHANNELS // 2
NORM_RADIUS = 260
BRS_CHANNELS = DEEPLAB_CHANNELS + SKIP_CHANNELS  # f-BRS-B: ASPP output + skip projection
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)

# Predictor: CVAT's parameters and isegm's defaults.
MAX_SIZE = 800
NET_CLICKS_LIMIT = 8
OPTIMIZE_AFTER_N_CLICKS = 1
CLICK_RADIUS = 1
REG_WEIGHT = 1e-3
REG_BIAS_WEIGHT = 10.0
MIN_IOU_DIFF = 0.001
LBFGS_MAXFUN = 20
LBFGS_HISTORY = 20
LBFGS_PGTOL = 1e-8
LOSS_EPS = 1e-5

# Keys an official file may hold that the network has no use for at inference.
HRNET_MARKER = "feature_extractor.stage2.0.branches"  # isegm's test for the HRNet variant
IGNORED_KEYS = ("aspp_dropout",)  # a dropout rate some isegm checkpoints store; dropout is off here


class Click(NamedTuple):
    is_positive: bool
    y: float
    x: float


# --- network ------------------------------------------------------------------------------------

class SeparableConv2d(nn.Module):
    """Depthwise 3x3, pointwise 1x1 (no biases), batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU())

    def forward(self, x):
        return self.body(x)


class ResNetBackbone(nn.Module):
    """ResNet-101 v1s, dilated: returns layer1 (stride 4) and layer4 (stride 8) features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, STEM_WIDTH, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(STEM_WIDTH), nn.ReLU(),
            nn.Conv2d(STEM_WIDTH, STEM_WIDTH, 3, padding=1, bias=False), nn.BatchNorm2d(STEM_WIDTH), nn.ReLU(),
            nn.Conv2d(STEM_WIDTH, 2 * STEM_WIDTH, 3, padding=1, bias=False))
        self.bn1 = nn.BatchNorm2d(2 * STEM_WIDTH)
        in_channels = 2 * STEM_WIDTH
        # (stride, dilation) per layer; a dilated layer's first block uses half the dilation (1 for 2).
        for index, (blocks, (stride, dilation)) in enumerate(zip(RESNET_BLOCKS, ((1, 1), (2, 1), (1, 2), (1, 4)))):
            planes = 64 * 2 ** index
            first_dilation = 1 if dilation in (1, 2) else dilation // 2
            layer = [Bottleneck(in_channels, planes, stride=stride, dilation=first_dilation,
                                downsample=stride != 1 or in_channels != planes * 4)]
            layer += [Bottleneck(planes * 4, planes, dilation=dilation) for _ in range(blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layer))
            in_channels = planes * 4

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(F.max_pool2d(x, 3, stride=2, padding=1))
        return c1, self.layer4(self.layer3(self.layer2(c1)))


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation if kernel == 3 else 0
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class AsppPooling(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(in_channels, out_channels))

    def forward(self, x):
        # isegm upsamples the 1x1 map bilinearly with aligned corners: a constant map.
        return self.gap(x).expand(-1, -1, *x.shape[2:])


class ASPP(nn.Module):
    def __init__(self, in_channels: int = 2048, out_channels: int = DEEPLAB_CHANNELS):
        super().__init__()
        self.concurent = nn.ModuleList([conv_bn_relu(in_channels, out_channels)]
                                       + [conv_bn_relu(in_channels, out_channels, 3, rate) for rate in ASPP_RATES]
                                       + [AsppPooling(in_channels, out_channels)])
        # isegm appends Dropout(0.5) here, which does nothing at inference.
        self.project = conv_bn_relu(5 * out_channels, out_channels)

    def forward(self, x):
        return self.project(torch.cat([branch(x) for branch in self.concurent], dim=1))


class SkipProject(nn.Module):
    def __init__(self, in_channels: int = 256, out_channels: int = SKIP_CHANNELS):
        super().__init__()
        self.skip_project = conv_bn_relu(in_channels, out_channels)

    def forward(self, x):
        return self.skip_project(x)


class DeepLabHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(SeparableConv2d(BRS_CHANNELS, DEEPLAB_CHANNELS),
                                   SeparableConv2d(DEEPLAB_CHANNELS, DEEPLAB_CHANNELS),
                                   nn.Conv2d(DEEPLAB_CHANNELS, DEEPLAB_CHANNELS, 1))

    def forward(self, x):
        return self.block(x)


class DeepLabV3Plus(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ResNetBackbone()
        self.head = DeepLabHead()
        self.skip_project = SkipProject()
        self.aspp = ASPP()

    def after_aspp(self, x):
        """The features f-BRS-B refines: ASPP upsampled to the skip projection, concatenated with it."""
        c1, c4 = self.backbone(x)
        c1 = self.skip_project(c1)
        aspp = F.interpolate(self.aspp(c4), size=c1.shape[2:], mode="bilinear", align_corners=True)
        return torch.cat((aspp, c1), dim=1)


class SepConvHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(SeparableConv2d(DEEPLAB_CHANNELS, HEAD_CHANNELS),
                                    SeparableConv2d(HEAD_CHANNELS, HEAD_CHANNELS),
                                    nn.Conv2d(HEAD_CHANNELS, 1, 1))

    def forward(self, x):
        return self.layers(x)


class FbrsDeepLab(nn.Module):
    """isegm's DistMapsModel with DeepLabV3+ (its module names, so its state-dict keys), split where
    f-BRS-B cuts it: ``head_input`` runs once per request, ``logits`` once per L-BFGS evaluation."""

    def __init__(self):
        super().__init__()
        self.rgb_conv = nn.Sequential(nn.Conv2d(5, 8, 1), nn.LeakyReLU(0.2), nn.BatchNorm2d(8), nn.Conv2d(8, 3, 1))
        self.feature_extractor = DeepLabV3Plus()
        self.head = SepConvHead()

    def head_input(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        maps = dist_maps(points, images.shape[2], images.shape[3])
        return self.feature_extractor.after_aspp(self.rgb_conv(torch.cat((images, maps), dim=1)))

    def logits(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = self.head(self.feature_extractor.head(features))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def dist_maps(points: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """isegm's DistMaps: ``points`` (B, 2N, 2) as (y, x), N positive then N negative, (-1, -1) for
    none -> (B, 2, rows, cols), channel 0 positive: tanh(2 * distance to the nearest click / 260)."""
    batch, total, _ = points.shape
    ys = torch.arange(rows, dtype=torch.float32, device=points.device).view(1, 1, rows, 1)
    xs = torch.arange(cols, dtype=torch.float32, device=points.device).view(1, 1, 1, cols)
    point_y, point_x = (points[..., i].view(batch, total, 1, 1) for i in (0, 1))
    squared = ((ys - point_y) / NORM_RADIUS) ** 2 + ((xs - point_x) / NORM_RADIUS) ** 2
    squared = squared.masked_fill((points.max(dim=2).values < 0).view(batch, total, 1, 1), 1e6)
    nearest = squared.view(batch, 2, total // 2, rows, cols).min(dim=2).values
    return torch.tanh(2 * nearest.sqrt())


def load_network(path: Path, device: torch.device | str = "cpu") -> FbrsDeepLab:
    """The network from an isegm state dict; every tensor must be there under isegm's name (BN
    batch counters aside, which MXNet-converted files lack) and nothing unknown may be."""
    state = torch.load(path, map_location="cpu", weights_only=True)  # the official file was saved on cuda:0
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not an f-BRS checkpoint (expected a state dict, got {type(state).__name__})")
    if any(HRNET_MARKER in name for name in state):
        raise ValueError(f"{path}: an f-BRS HRNet checkpoint; this function runs the DeepLab ResNet-101 one "
                         f"({CHECKPOINT})")
    # Counters are dropped (they start at zero): MXNet-converted files have none to agree with.
    state = {name: value for name, value in state.items()
             if name not in IGNORED_KEYS and not name.endswith(BATCHES_TRACKED)}
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        network = FbrsDeepLab()
    return load_exactly(network, state, path, "f-BRS DeepLabV3+ ResNet-101 (dh256)").to(device)


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


# --- f-BRS-B --------------------------------------------------------------------------------------

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


class FBRS:
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
