"""The torch model tests' random checkpoints: the official files are not on this machine, so each test
module writes one in its official format (weights and writer of its own) into a folder of its own,
the folder a function's ``*_MODEL_PATH`` setting names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


def save_state_dict(path: Path, weights) -> None:
    """A plain state dict, as ``torch.save(net.state_dict(), path)`` writes the official files."""
    torch.save(weights, path)


def checkpoint_fixtures(folder: str, file_name: str, make_weights: Callable[[], Any],
                        write: Callable[[Path, Any], Any] = save_state_dict):
    """Two module-scoped fixtures, bound in the test module under these names (pytest names a fixture
    after its module attribute, and ``checkpoint_dir`` asks for ``weights``):
    ``weights, checkpoint_dir = checkpoint_fixtures(...)``. ``weights`` is ``make_weights()``, made
    once; ``checkpoint_dir`` a temporary folder named after ``folder`` holding ``file_name``, written
    by ``write(path, weights)``."""

    @pytest.fixture(scope="module")
    def weights():
        return make_weights()

    @pytest.fixture(scope="module")
    def checkpoint_dir(tmp_path_factory, weights):
        directory = tmp_path_factory.mktemp(folder)
        write(directory / file_name, weights)
        return directory

    return weights, checkpoint_dir
