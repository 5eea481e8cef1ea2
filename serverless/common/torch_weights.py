"""Filling a plain-PyTorch network from an official checkpoint, key for key.

The functions reimplement official networks without their repositories, so a checkpoint that loads
must match exactly: every tensor under the network's name and shape, nothing left over. The
network is built under ``torch.device("meta")`` first, so no random initialisation runs for
tensors the checkpoint replaces anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

BATCHES_TRACKED = "num_batches_tracked"  # BatchNorm's counter: PyTorch before 0.4.1 did not save it


def load_exactly(network: torch.nn.Module, weights: Mapping, path: Path, what: str) -> torch.nn.Module:
    """``network`` (built on the meta device) with ``weights`` assigned; ValueError naming the
    missing, unexpected or mis-shaped keys. Values may be tensors or arrays (detectron2's pickles);
    counters a file lacks start at zero. Returns it on the CPU, gradients off, in eval mode."""
    expected = network.state_dict()
    missing = sorted(name for name in expected if name not in weights and not name.endswith(BATCHES_TRACKED))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: does not match {what}: {len(missing)} missing key(s) {missing[:5]}, "
                         f"{len(unexpected)} unexpected key(s) {unexpected[:5]}")
    tensors = {}
    for name, reference in expected.items():
        if name not in weights:
            tensors[name] = torch.zeros((), dtype=torch.long)
            continue
        value = weights[name]
        try:
            tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{path}: {name} has shape {type(value).__name__}, "
                             f"expected {tuple(reference.shape)}") from None
        if tensor.shape != reference.shape:
            raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)}")
        tensors[name] = tensor.to(reference.dtype)
    network.load_state_dict(tensors, strict=True, assign=True)
    return network.requires_grad_(False).eval()
