"""Export DEXTR's official checkpoint (dextr_pascal-sbd.pth) to the OpenVINO IR the function runs.

    python export_dextr.py dextr_pascal-sbd.pth [OUTPUT_DIR]

writes ``dextr.xml`` and ``dextr.bin`` to OUTPUT_DIR (default: the checkpoint's directory), which is
where the catalogue (``dextr`` in serverless/common/models.yaml) looks for them. The image build runs
it (see the Dockerfile); it needs torch, onnx and openvino, the function itself only openvino.

The network is DEXTR-PyTorch's ``resnet101(1, nInputChannels=4, classifier="psp")``
(networks/deeplab_resnet.py) written anew in plain PyTorch with the same module names, so the
checkpoint, a bare state dict, loads key for key:

- ResNet-101 (Bottleneck blocks 3, 4, 23, 3; stride in the first 1x1 conv of a block), strides
  2, 2, 2, 1, 1 and dilations 2 and 4 in layer3 and layer4: output stride 8, 64x64 at 512x512;
  every layer's first block has a ``downsample`` (conv, BN); all convs without bias;
- ``layer5``: the PSP module, pooling to 1, 2, 3 and 6 bins, each ``stages.i`` = (pool, 1x1 conv
  2048->512, BN, ReLU), upsampled back and concatenated with the features (4096 channels), then
  ``bottleneck`` (1x1 conv -> 512, BN, ReLU) and ``final`` (1x1 conv -> 1, with bias).

What the export appends, as CVAT's does: bilinear upsampling to 512x512 with aligned corners and a
sigmoid, so the IR maps (1, 4, 512, 512) RGB + heatmap to (1, 1, 512, 512) probabilities.
Where it differs from CVAT's export, and why:

- adaptive pooling is computed exactly, as a product with constant averaging matrices for the fixed
  64x64 feature map (ONNX has no adaptive pooling for bin counts that do not divide the size).
  CVAT patches it to fixed average pools; its 6-bin pool (kernel 11, stride 9) covers rows and
  columns 0..55 only, so the network sees different priors than it was trained with;
- the PSP upsampling aligns corners. DEXTR-PyTorch was written for PyTorch 0.3 (``volatile``
  Variables in demo.py), whose bilinear upsampling always aligned corners; CVAT's export runs it on
  a current PyTorch, whose default does not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from serverless.common.torch_blocks import Bottleneck

INPUT_SIZE = 512
INPUT_CHANNELS = 4  # R, G, B and the extreme-point heatmap
OUTPUT_STRIDE = 8
RESNET_BLOCKS = (3, 4, 23, 3)
PSP_BINS = (1, 2, 3, 6)
IR_NAME = "dextr"


def adaptive_pooling_matrix(size: int, bins: int) -> torch.Tensor:
    """(bins, size): row i averages PyTorch's adaptive-pooling bin i, [floor(i*size/bins),
    ceil((i+1)*size/bins))."""
    matrix = torch.zeros(bins, size)
    for index in range(bins):
        start, end = (index * size) // bins, -((-(index + 1) * size) // bins)
        matrix[index, start:end] = 1.0 / (end - start)
    return matrix


class FixedAdaptiveAvgPool2d(nn.Module):
    """AdaptiveAvgPool2d for one known square input size, as two matrix products (bins are
    rectangles, so averaging rows then columns is exact). No state dict entries."""

    def __init__(self, bins: int, input_size: int):
        super().__init__()
        self.register_buffer("matrix", adaptive_pooling_matrix(input_size, bins), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matrix @ x @ self.matrix.T  # any other size fails here: the shapes do not match


class PSPModule(nn.Module):
    def __init__(self, feature_size: int, in_channels: int = 2048, out_channels: int = 512, n_classes: int = 1):
        super().__init__()
        reduced = in_channels // 4
        self.stages = nn.ModuleList(
            nn.Sequential(FixedAdaptiveAvgPool2d(bins, feature_size), nn.Conv2d(in_channels, reduced, 1, bias=False),
                          nn.BatchNorm2d(reduced), nn.ReLU())
            for bins in PSP_BINS)
        self.bottleneck = nn.Sequential(nn.Conv2d(in_channels + reduced * len(PSP_BINS), out_channels, 1, bias=False),
                                        nn.BatchNorm2d(out_channels), nn.ReLU())
        self.final = nn.Conv2d(out_channels, n_classes, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        size = features.shape[-2:]
        priors = [F.interpolate(stage(features), size=size, mode="bilinear", align_corners=True)
                  for stage in self.stages]
        return self.final(self.bottleneck(torch.cat([*priors, features], 1)))


class DextrResNet101(nn.Module):
    """DEXTR's network up to its 1/8-resolution logits; module names are DEXTR-PyTorch's."""

    def __init__(self, input_size: int = INPUT_SIZE):
        super().__init__()
        self.conv1 = nn.Conv2d(INPUT_CHANNELS, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.in_channels = 64
        self.layer1 = self._make_layer(64, RESNET_BLOCKS[0])
        self.layer2 = self._make_layer(128, RESNET_BLOCKS[1], stride=2)
        self.layer3 = self._make_layer(256, RESNET_BLOCKS[2], dilation=2)
        self.layer4 = self._make_layer(512, RESNET_BLOCKS[3], dilation=4)
        self.layer5 = PSPModule(feature_size=input_size // OUTPUT_STRIDE)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        out_channels = planes * 4
        layers = [Bottleneck(self.in_channels, planes, stride=stride, dilation=dilation, downsample=True,
                             stride_on_1x1=True)]
        self.in_channels = out_channels
        layers += [Bottleneck(out_channels, planes, dilation=dilation, stride_on_1x1=True) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


class DextrProbabilities(nn.Module):
    """What the IR computes: the network, bilinear upsampling (aligned corners) to the input size,
    sigmoid."""

    def __init__(self, network: DextrResNet101, input_size: int = INPUT_SIZE):
        super().__init__()
        self.network = network
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.interpolate(self.network(x), size=(self.input_size, self.input_size), mode="bilinear",
                               align_corners=True)
        return torch.sigmoid(logits)


def load_network(checkpoint: Path) -> DextrResNet101:
    """The official checkpoint is a bare state dict (DEXTR-PyTorch's demo loads it with
    ``load_state_dict``). It predates BatchNorm's ``num_batches_tracked`` counters, which inference
    never reads, so they may be absent; every other key must match."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint}: expected a state dict, got {type(state).__name__}")
    network = DextrResNet101()
    result = network.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith(".num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{checkpoint} is not DEXTR's ResNet-101/PSP checkpoint: "
                         f"missing {missing[:5]}{'...' * (len(missing) > 5)}, "
                         f"unexpected {result.unexpected_keys[:5]}{'...' * (len(result.unexpected_keys) > 5)}")
    return network.eval()


def export(checkpoint: Path, output_dir: Path) -> Path:
    """Checkpoint -> ONNX (opset 17, in a temporary directory) -> ``output_dir/dextr.xml`` and
    ``.bin`` (FP32 weights, as trained). Returns the .xml path."""
    import openvino as ov  # only the export needs both frameworks

    model = DextrProbabilities(load_network(checkpoint)).eval()
    example = torch.zeros(1, INPUT_CHANNELS, INPUT_SIZE, INPUT_SIZE)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (the newer one would also need onnxscript) handles this static
        # graph fully; its deprecation notice is not news here.
        warnings.simplefilter("ignore", DeprecationWarning)
        onnx_path = Path(scratch) / f"{IR_NAME}.onnx"
        torch.onnx.export(model, example, onnx_path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["probabilities"])
        xml_path = output_dir / f"{IR_NAME}.xml"
        ov.save_model(ov.convert_model(onnx_path), xml_path, compress_to_fp16=False)
    return xml_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="dextr_pascal-sbd.pth")
    parser.add_argument("output_dir", type=Path, nargs="?", help="default: the checkpoint's directory")
    args = parser.parse_args(argv)
    xml_path = export(args.checkpoint, args.output_dir or args.checkpoint.parent)
    print(f"wrote {xml_path} and {xml_path.with_suffix('.bin')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
