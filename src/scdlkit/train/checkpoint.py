"""The checkpoint bundle on disk (DESIGN §5): a directory written atomically.

Layout::

    <path>/
        config.json          scdlkit version, model name + kwargs, task, features,
                             preprocessing, encoders, best epoch/loss, history
        model.pt             weights-only state_dict of the best model
        training_state.pt    optimizer/scheduler/scaler state, last weights, RNG
                             state and epoch counter (for ``fit(resume_from=...)``)

Every file is read with ``torch.load(weights_only=True)``: loading never runs
code from the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_directory

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
TRAINING_STATE_FILE = "training_state.pt"


def json_safe(value: Any) -> Any:
    """Convert ``value`` to plain JSON types (NaN becomes ``None``)."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_bundle(
    path: str | os.PathLike,
    *,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    training_state: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint directory atomically (temporary directory, then rename).

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is ``False``.
    """
    with atomic_directory(path, overwrite=overwrite, what="Checkpoint") as folder:
        text = json.dumps(
            json_safe({"format_version": FORMAT_VERSION, **config}), indent=2, allow_nan=False
        )
        (folder / CONFIG_FILE).write_text(text + "\n")
        torch.save(
            {key: value.detach().cpu() for key, value in weights.items()}, folder / WEIGHTS_FILE
        )
        if training_state is not None:
            torch.save(training_state, folder / TRAINING_STATE_FILE)
    return Path(path)


def _require(path: Path, name: str) -> Path:
    if not path.is_dir():
        msg = f"Checkpoint directory {str(path)!r} does not exist (or is not a directory)."
        raise FileNotFoundError(msg)
    file = path / name
    if not file.is_file():
        present = sorted(p.name for p in path.iterdir())
        msg = f"Checkpoint {str(path)!r} has no {name} (found: {present}); it is incomplete or not a scdlkit checkpoint."
        raise FileNotFoundError(msg)
    return file


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``config.json`` of a bundle.

    Raises
    ------
    FileNotFoundError
        Missing directory or file.
    ValueError
        Unreadable JSON or a format version newer than this scdlkit understands.
    """
    file = _require(Path(path), CONFIG_FILE)
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        msg = f"{str(file)!r} is not valid JSON ({error}); the checkpoint is damaged."
        raise ValueError(msg) from error
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        msg = (
            f"Checkpoint {str(path)!r} has format version {version!r}, but this scdlkit reads "
            f"versions up to {FORMAT_VERSION}. Upgrade scdlkit (it was written by "
            f"scdlkit {config.get('scdlkit_version', 'unknown')})."
        )
        raise ValueError(msg)
    return config


def read_weights(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Load the best model's state_dict (weights only)."""
    return torch.load(
        _require(Path(path), WEIGHTS_FILE), map_location=map_location, weights_only=True
    )


def read_training_state(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load the resumable training state (weights only).

    Raises
    ------
    FileNotFoundError
        The bundle was saved without training state.
    """
    return torch.load(
        _require(Path(path), TRAINING_STATE_FILE), map_location=map_location, weights_only=True
    )
