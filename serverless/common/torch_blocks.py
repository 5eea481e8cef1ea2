"""Network blocks several official checkpoints share, under the module names they all use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """ResNet's bottleneck: 1x1, 3x3 (dilated), 1x1 to ``planes * expansion`` channels, plus the
    input or its 1x1 projection (``downsample``). Keys conv1-3, bn1-3, downsample.0/.1, as in
    DEXTR, f-BRS, IOG and RITM's checkpoints. ``stride_on_1x1``: the original Caffe ResNet that
    DEXTR's DeepLab follows strides in the first 1x1 conv; the others stride in the 3x3."""

    def __init__(self, in_channels: int, planes: int, *, stride: int = 1, dilation: int = 1, expansion: int = 4,
                 downsample: bool = False, stride_on_1x1: bool = False):
        super().__init__()
        out_channels = planes * expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, stride=stride if stride_on_1x1 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1 if stride_on_1x1 else stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                        nn.BatchNorm2d(out_channels)) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))
