"""IOG's network in plain PyTorch, loading the official ``IOG_PASCAL_SBD.pth`` key for key.

The network is shiyinzhang/Inside-Outside-Guidance's ``Network(nInputChannels=5, num_classes=1,
backbone="resnet101", output_stride=16)`` (networks/mainnetwork.py, backbone/resnet.py,
CoarseNet.py, FineNet.py):

- backbone: DeepLab's ResNet-101 (stride in the 3x3 conv), 5 input channels, output stride 16:
  layer4 keeps stride 16 and is a multi-grid unit of dilations 2, 4, 8; it returns layer4..layer1;
- ``psp4``: a PSP module on layer4 (pools 1, 2, 3, 6; 2048 + 4 x 512 channels -> 512);
- ``Coarse_net``: a CPN-style pyramid over (psp4, layer3, layer2, layer1) with 256 channels; layer3
  is at layer4's stride, so the top level is added to it without upsampling (its ``upsamples.0``
  exists in the checkpoint but is never used); each level also has a prediction head;
- ``Fine_net``: 3, 2, 1 and 0 bottlenecks on the four levels, all at 128 x 128, concatenated and
  predicted to 1 channel, upsampled to 512 x 512 (bilinear, corners aligned).

The official forward returns the four coarse predictions and the fine one; CVAT (and IOG's test
script) take the fine one, index 4, and only that one is computed here. Module names are the
official ones, so ``state_dict`` keys are the checkpoint's (a plain state dict saved by
``torch.save(net.state_dict())``, which the official code and CVAT load with ``load_state_dict``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from serverless.common.torch_blocks import Bottleneck
from serverless.common.torch_weights import load_exactly

INPUT_SIZE = 512  # the side of the network's square input and output
RESNET_BLOCKS = (3, 4, 23, 3)
INPUT_CHANNELS = 5  # RGB, inside map, outside map
PYRAMID_CHANNELS = (512, 1024, 512, 256)  # psp4, layer3, layer2, layer1 (CoarseNet's channel_settings)
PSP_POOL_SIZES = (1, 2, 3, 6)
FINE_SIZE = 128  # CoarseNet/FineNet output_shape


def conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels)]


class ResNet(nn.Module):
    """DeepLab's ResNet-101 at output stride 16; returns layer4, layer3, layer2, layer1."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(INPUT_CHANNELS, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._layer(64, 64, RESNET_BLOCKS[0], stride=1, dilations=[1] * RESNET_BLOCKS[0])
        self.layer2 = self._layer(256, 128, RESNET_BLOCKS[1], stride=2, dilations=[1] * RESNET_BLOCKS[1])
        self.layer3 = self._layer(512, 256, RESNET_BLOCKS[2], stride=2, dilations=[1] * RESNET_BLOCKS[2])
        # The multi-grid unit: blocks (1, 2, 4) x rate 2, stride 1 (output stride 16).
        self.layer4 = self._layer(1024, 512, RESNET_BLOCKS[3], stride=1, dilations=[2, 4, 8])

    @staticmethod
    def _layer(in_channels: int, width: int, blocks: int, stride: int, dilations: list[int]) -> nn.Sequential:
        return nn.Sequential(*(
            Bottleneck(in_channels if i == 0 else width * 4, width, stride=stride if i == 0 else 1,
                       dilation=dilations[i], downsample=i == 0)
            for i in range(blocks)))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        layer1 = self.layer1(x)
        layer2 = self.layer2(layer1)
        layer3 = self.layer3(layer2)
        return self.layer4(layer3), layer3, layer2, layer1


class PSPModule(nn.Module):
    def __init__(self, in_channels: int = 2048, out_channels: int = 512):
        super().__init__()
        # Sequential(pool, conv, bn, relu): the checkpoint names the conv 1 and the norm 2.
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(size), *conv_bn(in_channels, in_channels // 4), nn.ReLU())
            for size in PSP_POOL_SIZES)
        concatenated = in_channels + len(PSP_POOL_SIZES) * (in_channels // 4)
        self.bottleneck = nn.Sequential(*conv_bn(concatenated, out_channels), nn.ReLU())

    def forward(self, x):
        size = x.shape[2:]
        priors = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=True) for stage in self.stages]
        return self.bottleneck(torch.cat([*priors, x], dim=1))


class CoarseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Sequential(*conv_bn(c, 256), nn.ReLU()) for c in PYRAMID_CHANNELS)
        self.upsamples = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *conv_bn(256, 256))
            for _ in PYRAMID_CHANNELS[:-1])
        # The coarse prediction heads: in the checkpoint, unused by the fine output.
        self.predict = nn.ModuleList(
            nn.Sequential(*conv_bn(256, 256), nn.ReLU(), nn.Conv2d(256, 1, kernel_size=3, padding=1, bias=False),
                          nn.Upsample(size=FINE_SIZE, mode="bilinear", align_corners=True), nn.BatchNorm2d(1))
            for _ in PYRAMID_CHANNELS)

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The pyramid's feature maps, top (stride 16) first."""
        features = [self.laterals[0](levels[0])]
        top_down = features[0]  # level 1 is at level 0's stride: added as is, upsamples[0] unused
        for index in range(1, len(levels)):
            features.append(self.laterals[index](levels[index]) + top_down)
            if index < len(levels) - 1:
                top_down = self.upsamples[index](features[-1])
        return features


class FineNet(nn.Module):
    def __init__(self):
        super().__init__()
        # Level i gets 3 - i bottlenecks (256 -> 256), then every level is brought to 128 x 128.
        self.cascade = nn.ModuleList(
            nn.Sequential(*(Bottleneck(256, 128, expansion=2, downsample=True) for _ in range(3 - level)),
                          nn.Upsample(size=FINE_SIZE, mode="bilinear", align_corners=True))
            for level in range(4))
        self.final_predict = nn.Sequential(Bottleneck(4 * 256, 128, expansion=2, downsample=True),
                                           nn.Conv2d(256, 1, kernel_size=3, padding=1, bias=False),
                                           nn.BatchNorm2d(1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.final_predict(torch.cat([stage(f) for stage, f in zip(self.cascade, features)], dim=1))


class IOGNetwork(nn.Module):
    """``(1, 5, 512, 512)`` input (RGB 0-255, inside and outside maps 0-255) -> ``(1, 1, 512, 512)``
    raw fine output (the official forward's index 4)."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNet()
        self.psp4 = PSPModule()
        self.Coarse_net = CoarseNet()
        self.Fine_net = FineNet()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        layer4, layer3, layer2, layer1 = self.backbone(inputs)
        fine = self.Fine_net(self.Coarse_net([self.psp4(layer4), layer3, layer2, layer1]))
        return F.interpolate(fine, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=True)


def load_network(path: Path, device: torch.device | str = "cpu") -> IOGNetwork:
    """Build the network from the official state dict; every parameter and running statistic must be
    there under its official name and shape, and nothing else may be."""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{path}: not an IOG checkpoint (expected a state dict of tensors, "
                         "as torch.save(net.state_dict()) writes it)")
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        network = IOGNetwork()
    network = load_exactly(network, weights, path, "IOG ResNet-101")
    # channels_last: oneDNN's convolutions take less CPU time in that layout.
    return network.to(device, memory_format=torch.channels_last).eval()
