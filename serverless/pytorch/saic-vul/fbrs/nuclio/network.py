"""f-BRS's network in plain PyTorch, and its checkpoint: saic-vul/fbrs_interactive_segmentation's
``get_deeplab_model`` as ``load_deeplab_is_model`` builds it for ``resnet101_dh256_sbd.pth`` (a
plain state dict converted from MXNet: tensors only, no ``num_batches_tracked``):

- clicks become two distance maps (positive, negative), tanh(2 d / 260) to the nearest click, d in
  pixels; padding clicks (-1, -1) count as infinitely far;
- ``rgb_conv`` mixes the normalised RGB and the two maps into 3 channels;
- ResNet-101 v1s (deep stem of three 3x3 convs, stride in the 3x3 conv, layers 3 and 4 dilated:
  output stride 8), ASPP (rates 12/24/36, 256 channels) upsampled to the stride-4 skip projection
  (32 channels) and concatenated: the 288 "after ASPP" channels f-BRS-B refines;
- the DeepLab head (two separable convs and a 1x1 conv, 256 channels), then the instance head (two
  separable convs, 128 channels, one logit), resized to the input (bilinear, corners aligned).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from serverless.common.torch_blocks import Bottleneck
from serverless.common.torch_weights import BATCHES_TRACKED, load_exactly

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

# Keys an official file may hold that the network has no use for at inference.
HRNET_MARKER = "feature_extractor.stage2.0.branches"  # isegm's test for the HRNet variant
IGNORED_KEYS = ("aspp_dropout",)  # a dropout rate some isegm checkpoints store; dropout is off here


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
