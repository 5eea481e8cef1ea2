"""IOG (Inside-Outside Guidance, Zhang et al., CVPR 2020) in plain PyTorch, loading the official
``IOG_PASCAL_SBD.pth`` key for key, with CVAT's pre- and post-processing.

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

Request handling follows CVAT's handler (cvat-compat.md 1.8.4):

1. The box (required) grown by 30 px, clipped to the image; the crop includes its right column and
   bottom row, as IOG's own ``crop_from_bbox`` does. (CVAT counts the crop's size that way but cuts
   it with PIL, which leaves out the last column and row, so its clicks and mask were scaled for a
   crop one pixel larger than the one it fed. IOG's test script does not clip: it zero-pads the
   crop where it leaves the image, and resizes it bilinearly.)
2. The crop resized to 512 x 512 with OpenCV's nearest neighbour, RGB 0-255, no mean or std.
3. Clicks moved into the crop and scaled by 512 / crop size: the inside map is the max of
   Gaussians (sigma 10) at the positive clicks, the outside map the same at the negative clicks;
   both are min-max normalised together to 0-255. IOG itself was trained and tested with one
   inside click (the object's most interior point) and, outside, the four corners of the object's
   tight box grown by 10 px in the 512 crop; CVAT sends neither corners nor a centre, only the
   clicks, and the box only defines the crop. That wire meaning is kept here.
4. Foreground is the raw network output above the threshold (default 0.8), as CVAT compares it:
   IOG's test script applies a sigmoid first, so 0.8 is a probability of about 0.69.
   The output is a logit (the fine head ends in a batch norm; IOG's tests and training loss apply
   the sigmoid outside the network), so the confidence is the mean of its sigmoid over the 512 x
   512 foreground.
5. The 512 x 512 mask resized to the crop's size (OpenCV bicubic on 0/1, non-zero kept) and pasted
   into an image-sized mask.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from serverless.common import model_files
from serverless.common.torch_blocks import Bottleneck
from serverless.common.torch_weights import load_exactly
from serverless.common.interactors import (Interaction, Segmentation, gaussian_heatmap, mean_probability,
                                           normalise_255, padded_box, paste)

CHECKPOINT = "IOG_PASCAL_SBD.pth"
INPUT_SIZE = 512
CROP_PADDING = 30  # pixels around the box, as CVAT and IOG's test (CropFromMask relax=30)
GUIDANCE_SIGMA = 10.0  # IOG's make_gaussian default (and IOGPoints(sigma=10))
DEFAULT_THRESHOLD = 0.8  # CVAT's, on the raw output

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


def crop_box(box: tuple[float, float, float, float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The crop around ``box`` (x1, y1, x2, y2): corners truncated to pixels, grown by 30, clipped to
    the image's last column and row; inclusive, so the crop is x2 - x1 + 1 pixels wide."""
    x1, y1, x2, y2 = box
    return padded_box(np.array([[x1, y1], [x2, y2]]), CROP_PADDING, shape)


def crop_and_resize(image: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    """The inclusive crop of an H x W x 3 image at 512 x 512 (OpenCV nearest: source pixel
    floor(i * size / 512)), float32 0-255."""
    x1, y1, x2, y2 = crop
    pixels = np.ascontiguousarray(image[y1:y2 + 1, x1:x2 + 1]).astype(np.float32)
    return cv2.resize(pixels, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_NEAREST)


def guidance_maps(pos_points: np.ndarray, neg_points: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    """512 x 512 x 2 float32: the inside map (positive clicks) and the outside map (negative clicks),
    clicks in crop coordinates scaled by 512 / crop size, normalised together to 0-255."""
    x1, y1, x2, y2 = crop
    origin = np.array([x1, y1], dtype=np.float64)
    scale = INPUT_SIZE / np.array([x2 - x1 + 1, y2 - y1 + 1], dtype=np.float64)
    maps = [gaussian_heatmap((points - origin) * scale, (INPUT_SIZE, INPUT_SIZE), GUIDANCE_SIGMA)
            for points in (pos_points, neg_points)]
    return normalise_255(np.stack(maps, axis=2))


def network_input(image: np.ndarray, pos_points: np.ndarray, neg_points: np.ndarray,
                  crop: tuple[int, int, int, int]) -> torch.Tensor:
    """``(1, 5, 512, 512)``: the resized crop's RGB, then the inside and outside maps."""
    planes = np.concatenate([crop_and_resize(image, crop), guidance_maps(pos_points, neg_points, crop)], axis=2)
    return torch.from_numpy(planes.transpose(2, 0, 1).copy())[None]


def output_to_mask(output: np.ndarray, threshold: float, crop: tuple[int, int, int, int],
                   shape: tuple[int, int]) -> np.ndarray:
    """The 512 x 512 raw output to an H x W 0/1 mask: foreground where it is above ``threshold``,
    resized to the crop's size (OpenCV bicubic on 0/1; any non-zero value is foreground, as CVAT's
    normalisation to 0/255 makes it) and pasted at the crop."""
    x1, y1, x2, y2 = crop
    foreground = (output > threshold).astype(np.uint8)
    resized = cv2.resize(foreground, (x2 - x1 + 1, y2 - y1 + 1), interpolation=cv2.INTER_CUBIC)
    return paste(resized, (x1, y1, x2 + 1, y2 + 1), shape)


class IOG:
    def __init__(self, checkpoint: Path | None = None):
        checkpoint = checkpoint or model_files.resolve("iog").files[CHECKPOINT]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network = load_network(checkpoint, self.device)

    @torch.inference_mode()
    def segment(self, interaction: Interaction) -> Segmentation:
        """The object's H x W 0/1 mask from its box (required) and clicks, with its confidence."""
        crop = crop_box(interaction.box, interaction.shape)
        inputs = network_input(interaction.image, interaction.pos_points, interaction.neg_points, crop)
        output = self.network(inputs.to(self.device).contiguous(memory_format=torch.channels_last))[0, 0]
        logits, probabilities = output.cpu().numpy(), torch.sigmoid(output).cpu().numpy()
        return Segmentation(output_to_mask(logits, interaction.threshold, crop, interaction.shape),
                            mean_probability(probabilities, logits > interaction.threshold))
