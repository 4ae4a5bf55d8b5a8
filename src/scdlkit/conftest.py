"""Pytest setup for the ``>>>`` examples of the package (collected with ``--doctest-modules``).

Not shipped in the wheel (see ``[tool.hatch.build.targets.wheel]`` in ``pyproject.toml``).
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "agg")

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Same as tests/conftest.py: the example models are tiny, one thread avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _doctest_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run every example in its own folder, so checkpoints and files never land in the clone."""
    monkeypatch.chdir(tmp_path)
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
