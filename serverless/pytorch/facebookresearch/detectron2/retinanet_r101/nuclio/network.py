"""detectron2's RetinaNet R101-FPN network in plain PyTorch, and its official checkpoint, loaded key
for key (``COCO-Detection/retinanet_R_101_FPN_3x.yaml``: Base-RetinaNet.yaml plus ResNet-101):

- backbone: ResNet-101 with frozen BN and the stride in the first 1x1 conv of a block (MSRA), FPN
  on res3..res5 (sum fusion, no norm) plus P6/P7 from C5;
- head: 4 conv+ReLU per subnet, 9 anchors x 80 classes; anchors of sizes x*2^(0,1/3,2/3) for
  x = 32..512 on P3..P7, aspect ratios 0.5/1/2 (``cell_anchors``).

Module names are detectron2's, so ``state_dict`` keys are the checkpoint's names. The checkpoint is
detectron2's ``.pkl`` (numpy arrays, read without running any pickled code).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from serverless.common.torch_weights import load_exactly

# detectron2 config values (Base-RetinaNet.yaml, retinanet_R_101_FPN_3x.yaml and defaults.py).
PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
RESNET_BLOCKS = (3, 4, 23, 3)  # res2..res5 of ResNet-101
FPN_CHANNELS = 256
NUM_CLASSES = 80
ANCHOR_SIZES = tuple((x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)) for x in (32, 64, 128, 256, 512))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
NUM_ANCHORS = len(ANCHOR_SIZES[0]) * len(ASPECT_RATIOS)

# Buffers older detectron2 versions saved that the network does not need (detectron2's own
# checkpointer skips them too); they are checked against the config instead of being loaded.
CELL_ANCHORS_PREFIX = "anchor_generator.cell_anchors."
PIXEL_STATS = {"pixel_mean": PIXEL_MEAN_BGR, "pixel_std": (1.0, 1.0, 1.0)}


class FrozenBatchNorm2d(nn.Module):
    """detectron2's FrozenBatchNorm2d: batch norm with fixed statistics and affine (eps 1e-5).
    ``load_network`` folds it into the preceding convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class Conv2d(nn.Conv2d):
    """detectron2's Conv2d: a convolution with an optional ``norm`` child (its state_dict names)."""

    def __init__(self, *args, norm: bool = False, **kwargs):
        super().__init__(*args, bias=not norm, **kwargs)
        self.norm = FrozenBatchNorm2d(self.out_channels) if norm else None

    def fold_norm(self) -> None:
        """Fold the frozen norm into weight and bias: the same function, one op fewer."""
        if self.norm is None:
            return
        scale, shift = self.norm.scale_and_shift()
        self.weight = nn.Parameter(self.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
        self.bias = nn.Parameter(shift, requires_grad=False)
        self.norm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return x if self.norm is None else self.norm(x)


class BasicStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = Conv2d(3, 64, kernel_size=7, stride=2, padding=3, norm=True)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.shortcut = (Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, norm=True)
                         if in_channels != out_channels else None)
        # MSRA ResNet (STRIDE_IN_1X1=True): the stride is in the first 1x1 conv, not the 3x3.
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride, norm=True)
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, kernel_size=3, padding=1, norm=True)
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, norm=True)

    def forward(self, x):
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """The bottom-up network; returns res3, res4, res5 (strides 8, 16, 32)."""

    def __init__(self):
        super().__init__()
        self.stem = BasicStem()
        in_channels = 64
        for index, blocks in enumerate(RESNET_BLOCKS):
            bottleneck = 64 * 2 ** index
            out_channels = bottleneck * 4
            first_stride = 1 if index == 0 else 2
            stage = nn.Sequential(*(
                BottleneckBlock(in_channels if i == 0 else out_channels, bottleneck, out_channels,
                                first_stride if i == 0 else 1)
                for i in range(blocks)))
            self.add_module(f"res{index + 2}", stage)
            in_channels = out_channels

    def forward(self, x):
        x = self.res2(self.stem(x))
        res3 = self.res3(x)
        res4 = self.res4(res3)
        return res3, res4, self.res5(res4)


class LastLevelP6P7(nn.Module):
    """RetinaNet's extra levels: P6 from C5 (res5, 2048 channels), P7 from ReLU(P6)."""

    def __init__(self):
        super().__init__()
        self.p6 = nn.Conv2d(2048, FPN_CHANNELS, kernel_size=3, stride=2, padding=1)
        self.p7 = nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, kernel_size=3, stride=2, padding=1)

    def forward(self, c5):
        p6 = self.p6(c5)
        return p6, self.p7(F.relu(p6))


class FPN(nn.Module):
    """detectron2's FPN over res3..res5 with LastLevelP6P7; returns P3..P7."""

    LEVELS = ((3, 512), (4, 1024), (5, 2048))  # (stage, bottom-up channels)

    def __init__(self):
        super().__init__()
        self.bottom_up = ResNet()
        for stage, channels in self.LEVELS:
            self.add_module(f"fpn_lateral{stage}", nn.Conv2d(channels, FPN_CHANNELS, kernel_size=1))
            self.add_module(f"fpn_output{stage}", nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, kernel_size=3, padding=1))
        self.top_block = LastLevelP6P7()

    def forward(self, x):
        res3, res4, res5 = self.bottom_up(x)
        p5_inner = self.fpn_lateral5(res5)
        p4_inner = self.fpn_lateral4(res4) + F.interpolate(p5_inner, scale_factor=2.0, mode="nearest")
        p3_inner = self.fpn_lateral3(res3) + F.interpolate(p4_inner, scale_factor=2.0, mode="nearest")
        p6, p7 = self.top_block(res5)
        return [self.fpn_output3(p3_inner), self.fpn_output4(p4_inner), self.fpn_output5(p5_inner), p6, p7]


class RetinaNetHead(nn.Module):
    def __init__(self):
        super().__init__()

        def subnet():
            layers = []
            for _ in range(4):
                layers += [nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, kernel_size=3, padding=1), nn.ReLU()]
            return nn.Sequential(*layers)  # convs at indices 0, 2, 4, 6, as in the checkpoint

        self.cls_subnet = subnet()
        self.bbox_subnet = subnet()
        self.cls_score = nn.Conv2d(FPN_CHANNELS, NUM_ANCHORS * NUM_CLASSES, kernel_size=3, padding=1)
        self.bbox_pred = nn.Conv2d(FPN_CHANNELS, NUM_ANCHORS * 4, kernel_size=3, padding=1)

    def forward(self, features):
        return ([self.cls_score(self.cls_subnet(f)) for f in features],
                [self.bbox_pred(self.bbox_subnet(f)) for f in features])


class RetinaNet(nn.Module):
    """The network: normalised, padded ``(1, 3, H, W)`` BGR input -> per-level raw outputs."""

    def __init__(self):
        super().__init__()
        self.backbone = FPN()
        self.head = RetinaNetHead()

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.head(self.backbone(images))


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The ``model`` dict of a detectron2 ``.pkl`` checkpoint (``{"model": {name: array}, "__author__": ...}``)."""
    with open(path, "rb") as stream:
        # latin1, as detectron2 reads .pkl files: lets Python 3 read arrays pickled by Python 2.
        data = _ArraysOnlyUnpickler(stream, path, encoding="latin1").load()
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{path}: not a detectron2 checkpoint (expected a dict with a 'model' dict)")
    if data.get("matching_heuristics"):
        raise ValueError(f"{path}: a Caffe2-named checkpoint that needs detectron2's name-matching "
                         "heuristics; only detectron2-named checkpoints (its model zoo .pkl) are supported")
    return data["model"]


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a weights file never runs code here."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
               ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5 arrays
               ("_codecs", "encode")}  # bytes in protocol 2 pickles written by Python 3

    def __init__(self, stream, path: Path, **kwargs):
        super().__init__(stream, **kwargs)
        self.path = path

    def find_class(self, module, name):
        # numpy < 2 pickles name numpy.core.multiarray; numpy 2 moved it to numpy._core.
        module = module.replace("numpy.core.", "numpy._core.", 1)
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{self.path}: refusing to unpickle {module}.{name} (not an array)")
        return super().find_class(module, name)


def _check_old_buffers(weights: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Drop the buffers old checkpoints carry, after checking they agree with this configuration."""
    expected = {name: np.asarray(values, dtype=np.float32).reshape(-1, 1, 1) for name, values in PIXEL_STATS.items()}
    for level, sizes in enumerate(ANCHOR_SIZES):
        expected[f"{CELL_ANCHORS_PREFIX}{level}"] = cell_anchors(sizes, ASPECT_RATIOS).numpy()
    rest = {}
    for name, value in weights.items():
        if name in expected:
            if np.shape(value) != expected[name].shape or not np.allclose(value, expected[name], atol=1e-3):
                raise ValueError(f"{path}: {name} does not match the configuration this function implements")
        else:
            rest[name] = value
    return rest


def load_network(path: Path, device: torch.device | str = "cpu") -> RetinaNet:
    """Build the network from a checkpoint; every parameter must be there under detectron2's name,
    and nothing else (apart from the old buffers above) may be."""
    weights = _check_old_buffers(read_checkpoint(path), path)
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        network = RetinaNet()
    network = load_exactly(network, weights, path, "RetinaNet R101-FPN")
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, Conv2d):
                module.fold_norm()
    # channels_last: oneDNN's convolutions take about 10% less CPU time in that layout.
    return network.to(device, memory_format=torch.channels_last).eval()


def cell_anchors(sizes, aspect_ratios) -> torch.Tensor:
    """detectron2's DefaultAnchorGenerator cell anchors: ``(len(sizes) * len(ratios), 4)`` boxes
    centred on 0, size-major then ratio; a ratio is height / width at area size**2."""
    anchors = []
    for size in sizes:
        for ratio in aspect_ratios:
            width = math.sqrt(size ** 2 / ratio)
            height = ratio * width
            anchors.append([-width / 2, -height / 2, width / 2, height / 2])
    return torch.tensor(anchors, dtype=torch.float32)
