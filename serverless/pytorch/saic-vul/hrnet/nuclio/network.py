"""RITM's HRNet18 network (saic-vul/ritm_interactive_segmentation) in plain PyTorch, and its
checkpoint.

The checkpoint ``coco_lvis_h18_itermask.pth`` is what RITM's trainer saves: ``{"state_dict": ...,
"config": {"class": "isegm.model.is_hrnet_model.HRNetModel", "params": {name: {"type", "value",
"specified"}}}}``. As RITM's ``load_is_model`` does, the network is built from the stored parameters
(for this file: width 18, OCR width 64, not small, no RGB conv, disks of radius 5, previous-mask
input, leaky ReLU); module names are RITM's, so the state-dict keys are the checkpoint's. Unlike
RITM's loader (``strict=False``), a missing or unexpected key is refused.

The network (RITM's ``ISModel`` + ``HRNetModel``): RGB in [0, 1] normalised with ImageNet's mean
and std; the click maps are two disk maps (positive, negative: 1 within 5 px of a click, clicks as
(y, x)) after the previous-mask channel, turned into 64 features by ``maps_transform`` and added
after the first stride-2 conv of HRNet-W18; HRNet-W18 with an OCR head gives one logit map at 1/4
scale, upsampled to the input (bilinear, align corners).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from serverless.common.torch_blocks import Bottleneck
from serverless.common.torch_weights import load_exactly

MODEL_CLASS = "isegm.model.is_hrnet_model.HRNetModel"


# --- configuration ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """The HRNetModel parameters that shape the network or its inputs, with RITM's defaults."""

    width: int = 48
    ocr_width: int = 256
    small: bool = False
    with_prev_mask: bool = False
    norm_radius: float = 260
    use_leaky_relu: bool = False
    binary_prev_mask: bool = False
    norm_mean_std: tuple = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    # Parameters whose other values select network variants this file does not implement:
    # name -> (the value needed, RITM's default when the stored config lacks it).
    REQUIRED = {"use_disks": (True, False), "use_rgb_conv": (False, True), "clicks_groups": (None, None),
                "conv_extend": (False, False),
                "norm_layer": ("torch.nn.modules.batchnorm.BatchNorm2d", "torch.nn.modules.batchnorm.BatchNorm2d")}
    # Training-only (learning rates, auxiliary loss) or implementation choices with equal results.
    IGNORED = ("with_aux_output", "backbone_lr_mult", "cpu_dist_maps")

    @classmethod
    def from_checkpoint(cls, config: dict, path: Path) -> ModelConfig:
        if not isinstance(config, dict) or config.get("class") != MODEL_CLASS:
            found = config.get("class") if isinstance(config, dict) else config
            raise ValueError(f"{path}: 'config' must describe a {MODEL_CLASS}, got {found!r}")
        params = {name: param["value"] for name, param in config.get("params", {}).items()}
        for name, (needed, default) in cls.REQUIRED.items():
            if params.get(name, default) != needed:
                raise ValueError(f"{path}: {name}={params.get(name, default)!r} is not supported "
                                 f"(this implementation needs {needed!r})")
        values = {}
        for name, value in params.items():
            if name in cls.__dataclass_fields__:
                values[name] = tuple(tuple(v) for v in value) if name == "norm_mean_std" else value
            elif name not in cls.REQUIRED and name not in cls.IGNORED:
                raise ValueError(f"{path}: unknown HRNetModel parameter {name!r}")
        model_config = cls(**values)
        if model_config.ocr_width <= 0:
            raise ValueError(f"{path}: ocr_width={model_config.ocr_width} (no OCR head) is not supported")
        return model_config


# --- HRNet with an OCR head (isegm/model/modeling/hrnet_ocr.py, ocr.py, resnetv1b.py) --------------

def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
              nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then every branch fused into every other: higher
    resolutions reach lower ones through stride-2 convs, lower ones are upsampled (1x1 conv first)."""

    def __init__(self, channels: list[int], num_blocks: int):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, c) for _ in range(num_blocks)]) for c in channels)
        self.fuse_layers = nn.ModuleList()
        for i, target in enumerate(channels):
            row = []
            for j, source in enumerate(channels):
                if j > i:
                    row.append(conv_bn(source, target, 1, relu=False))
                elif j == i:
                    row.append(None)
                else:  # i - j stride-2 convs; only the last changes the channels, and has no ReLU
                    steps = [conv_bn(source, target if k == i - j - 1 else source, 3, stride=2, relu=k < i - j - 1)
                             for k in range(i - j)]
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(nn.ModuleList(row))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    y = y + F.interpolate(row[j](xs[j]), size=xs[i].shape[2:], mode="bilinear", align_corners=True)
                else:
                    y = y + row[j](xs[j])
            fused.append(self.relu(y))
        return fused


class SpatialGather(nn.Module):
    """OCR's object regions: features pooled with the spatial softmax of each class's logits."""

    def forward(self, feats, logits):
        batch, classes = logits.shape[:2]
        weights = F.softmax(logits.view(batch, classes, -1), dim=2)
        context = torch.matmul(weights, feats.view(batch, feats.shape[1], -1).permute(0, 2, 1))
        return context.permute(0, 2, 1).unsqueeze(3)  # batch x channels x classes x 1


class ObjectAttentionBlock(nn.Module):
    def __init__(self, in_channels: int, key_channels: int):
        super().__init__()
        self.key_channels = key_channels

        def projection(source: int, target: int) -> list[nn.Module]:
            # conv, then (BN, ReLU) nested in a Sequential, as RITM's ocr.py names them
            return [nn.Conv2d(source, target, 1, bias=False),
                    nn.Sequential(nn.BatchNorm2d(target), nn.ReLU(inplace=True))]

        self.f_pixel = nn.Sequential(*projection(in_channels, key_channels), *projection(key_channels, key_channels))
        self.f_object = nn.Sequential(*projection(in_channels, key_channels), *projection(key_channels, key_channels))
        self.f_down = nn.Sequential(*projection(in_channels, key_channels))
        self.f_up = nn.Sequential(*projection(key_channels, in_channels))

    def forward(self, x, proxy):
        batch, _, height, width = x.shape
        query = self.f_pixel(x).view(batch, self.key_channels, -1).permute(0, 2, 1)
        key = self.f_object(proxy).view(batch, self.key_channels, -1)
        value = self.f_down(proxy).view(batch, self.key_channels, -1).permute(0, 2, 1)
        similarity = F.softmax(torch.matmul(query, key) * self.key_channels ** -0.5, dim=-1)
        context = torch.matmul(similarity, value).permute(0, 2, 1).reshape(batch, self.key_channels, height, width)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    def __init__(self, channels: int, key_channels: int):
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1, bias=False),
            nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True)),
            nn.Dropout2d(0.05))

    def forward(self, feats, proxy):
        return self.conv_bn_dropout(torch.cat([self.object_context_block(feats, proxy), feats], 1))


class HighResolutionNet(nn.Module):
    """HRNet-W<width> with OCR; returns (logits, auxiliary logits) at 1/4 of the input size."""

    def __init__(self, width: int, ocr_width: int, small: bool):
        super().__init__()
        num_blocks = 2 if small else 4
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(*[Bottleneck(64 if i == 0 else 256, 64, downsample=i == 0)
                                      for i in range(num_blocks)])

        previous = [64 * 4]  # layer1's bottlenecks expand 4x
        for stage, num_modules in ((2, 1), (3, 3 if small else 4), (4, 2 if small else 3)):
            channels = [width * 2 ** branch for branch in range(stage)]
            self.add_module(f"transition{stage - 1}", self._transition(previous, channels))
            self.add_module(f"stage{stage}", nn.Sequential(
                *[HighResolutionModule(channels, num_blocks) for _ in range(num_modules)]))
            previous = channels

        features = sum(previous)
        mid_channels, key_channels = 2 * ocr_width, ocr_width
        self.conv3x3_ocr = nn.Sequential(nn.Conv2d(features, mid_channels, 3, padding=1),
                                         nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True))
        self.ocr_gather_head = SpatialGather()
        self.ocr_distri_head = SpatialOCR(mid_channels, key_channels)
        self.cls_head = nn.Conv2d(mid_channels, 1, 1)
        self.aux_head = nn.Sequential(nn.Conv2d(features, features, 1), nn.BatchNorm2d(features),
                                      nn.ReLU(inplace=True), nn.Conv2d(features, 1, 1))

    @staticmethod
    def _transition(previous: list[int], channels: list[int]) -> nn.ModuleList:
        """Kept branches get a 3x3 conv when their width changes; the new, lowest-resolution branch
        is a stride-2 conv from the previous lowest one (nested one level deeper, as RITM's)."""
        layers = []
        for i, target in enumerate(channels):
            if i < len(previous):
                layers.append(conv_bn(previous[i], target, 3) if previous[i] != target else None)
            else:
                layers.append(nn.Sequential(conv_bn(previous[-1], target, 3, stride=2)))
        return nn.ModuleList(layers)

    def forward(self, x, additional_features):
        x = self.relu(self.bn1(self.conv1(x))) + additional_features
        x = self.layer1(self.relu(self.bn2(self.conv2(x))))
        xs = [x]
        for stage in (2, 3, 4):
            transition = getattr(self, f"transition{stage - 1}")
            xs = [xs[min(i, len(xs) - 1)] if layer is None else layer(xs[min(i, len(xs) - 1)])
                  for i, layer in enumerate(transition)]
            xs = getattr(self, f"stage{stage}")(xs)
        feats = torch.cat([xs[0]] + [F.interpolate(x, size=xs[0].shape[2:], mode="bilinear", align_corners=True)
                                     for x in xs[1:]], 1)
        aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        feats = self.ocr_distri_head(feats, self.ocr_gather_head(feats, aux))
        return self.cls_head(feats), aux


# --- the interactive model (isegm/model/is_model.py, is_hrnet_model.py, ops.py) ----------------------

class DiskMaps(nn.Module):
    """RITM's DistMaps with ``use_disks``: for each click group (positive, negative) a map that is 1
    where (row - y)^2 + (col - x)^2 <= radius^2 for some click of the group. ``points`` is
    (batch, 2N, 3): N positive then N negative (y, x, index) rows; padding rows are all -1."""

    def __init__(self, radius: float):
        super().__init__()
        self.radius = radius

    def forward(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, rows = points.shape[:2]
        grid_y = torch.arange(height, dtype=torch.float32, device=points.device).view(1, height, 1)
        grid_x = torch.arange(width, dtype=torch.float32, device=points.device).view(1, 1, width)
        maps = []
        for group in points.view(batch, 2, rows // 2, 3).unbind(1):
            nearest = torch.full((batch, height, width), 1e6, device=points.device)
            for point in group.unbind(1):  # one click of each batch item at a time: H x W memory
                y, x = point[:, 0], point[:, 1]
                distance = (grid_y - y.view(-1, 1, 1)) ** 2 + (grid_x - x.view(-1, 1, 1)) ** 2
                padding = (torch.maximum(y, x) < 0).view(-1, 1, 1)
                nearest = torch.minimum(nearest, distance.masked_fill(padding, 1e6))
            maps.append(nearest <= self.radius ** 2)
        return torch.stack(maps, 1).float()


class ScaleLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), 0.05))

    def forward(self, x):
        return x * self.scale.abs()


class HRNetModel(nn.Module):
    """``forward(image_and_prev_mask, points) -> logits`` at the input's size."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        mean, std = config.norm_mean_std
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.dist_maps = DiskMaps(config.norm_radius)
        coord_channels = 2 + int(config.with_prev_mask)
        self.maps_transform = nn.Sequential(
            nn.Conv2d(coord_channels, 16, 1),
            nn.LeakyReLU(0.2) if config.use_leaky_relu else nn.ReLU(inplace=True),
            nn.Conv2d(16, 64, 3, stride=2, padding=1),
            ScaleLayer())
        self.feature_extractor = HighResolutionNet(config.width, config.ocr_width, config.small)

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[2:]
        maps = self.dist_maps(points, height, width)
        if self.config.with_prev_mask:
            prev_mask = image[:, 3:]
            maps = torch.cat([(prev_mask > 0.5).float() if self.config.binary_prev_mask else prev_mask, maps], 1)
        rgb = (image[:, :3] - self.mean) / self.std
        logits, _ = self.feature_extractor(rgb, self.maps_transform(maps))
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)


def load_network(path: Path, device: torch.device | str = "cpu") -> HRNetModel:
    """RITM's checkpoint -> the network in eval mode; every key must match exactly."""
    # weights_only: the file holds tensors, strings, numbers and containers; nothing to execute.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not {"state_dict", "config"} <= checkpoint.keys():
        raise ValueError(f"{path}: not a RITM checkpoint (expected a dict with 'state_dict' and 'config')")
    config = ModelConfig.from_checkpoint(checkpoint["config"], path)
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        network = HRNetModel(config)
    network = load_exactly(network, checkpoint["state_dict"], path, "RITM's HRNetModel")
    # The normalisation buffers are not in the checkpoint; make them real tensors again.
    mean, std = config.norm_mean_std
    network.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    network.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return network.to(device)
