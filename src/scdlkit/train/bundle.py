"""The checkpoint bundle on disk: a directory written atomically, read without running code.

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
from typing import Any, Protocol

import pandas as pd
import torch
from torch import nn

from .._atomic import atomic_directory
from .._uns import json_safe
from .._version import __version__

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
TRAINING_STATE_FILE = "training_state.pt"


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


class BundleData(Protocol):
    """What a bundle stores about the data a model was trained on (``PreparedData`` is one)."""

    def bundle_fields(self) -> dict[str, Any]:
        """Feature names, preprocessing, data spec and encoders, as JSON-able values."""


def bundle_config(
    model: nn.Module,
    *,
    task: str,
    settings: dict[str, Any],
    summary: dict[str, Any],
    history: pd.DataFrame,
    data: BundleData | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the ``config.json`` of a bundle: version, model config, task, settings, history, data fields."""
    model_config = getattr(model, "config", None) or {"name": None, "kwargs": {}}
    config: dict[str, Any] = {
        "scdlkit_version": __version__,
        "model": model_config,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "task": task,
        "trainer": settings,
        **summary,
        "history": history.to_dict(orient="list"),
        "metadata": metadata or {},
    }
    if data is not None:
        config.update(data.bundle_fields())
    return config


def rebuild_model(
    path: str | os.PathLike, config: dict[str, Any], model: nn.Module | None
) -> nn.Module:
    """Rebuild the bundle's model by registry name (or fill ``model``) with its best weights.

    Raises
    ------
    ValueError
        A custom module without ``model=``, or weights that do not fit the architecture.
    """
    from ..models import create_model

    if model is None:
        name = config["model"].get("name")
        if name is None:
            msg = (
                f"Checkpoint {str(path)!r} holds a custom module ({config.get('model_class')}) that "
                "cannot be rebuilt by name; pass model=<a module of the same architecture>."
            )
            raise ValueError(msg)
        model = create_model(name, **config["model"]["kwargs"])
    try:
        model.load_state_dict(read_weights(path))
    except RuntimeError as error:
        msg = f"The weights in {str(path)!r} do not fit {type(model).__name__}: {error}"
        raise ValueError(msg) from error
    return model


def history_rows(config: dict[str, Any]) -> list[dict[str, float]]:
    """Return the bundle's history as the Trainer keeps it: one dict per epoch, missing values left out."""
    return [
        {
            k: v
            for k, v in row.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        }
        for row in pd.DataFrame(config["history"]).to_dict(orient="records")
    ]
