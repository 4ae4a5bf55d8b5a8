"""The checkpoint bundle on disk: a directory written atomically, read without running code.

Layout::

    <path>/
        config.json          scdlkit version, model name + kwargs, task, features,
                             preprocessing, encoders, best epoch/loss, history
        model.pt             weights-only state_dict of the best model
        training_state.pt    optimizer/scheduler/scaler state, last weights, RNG
                             state and epoch counter (for ``fit(resume_from=...)``)
        manifest.json        size and SHA-256 of every other file, written last

Every file is read with ``torch.load(weights_only=True)``: loading never runs
code from the file. A file that does not match the manifest (cut off, changed
or damaged on disk) is refused with :class:`DamagedCheckpointError`; bundles
written before the manifest existed are read unchecked.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
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
MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 20


class DamagedCheckpointError(ValueError):
    """A bundle file does not match its manifest: cut off, changed or damaged after writing."""


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
        write_manifest(folder)
    return Path(path)


def file_digest(file: Path) -> str:
    """Return the SHA-256 of a file as hex (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Write ``manifest.json``: the size and SHA-256 of every other file in ``folder``."""
    files = {
        file.name: {"bytes": file.stat().st_size, "sha256": file_digest(file)}
        for file in sorted(folder.iterdir())
        if file.is_file() and file.name != MANIFEST_FILE
    }
    text = json.dumps({"format_version": FORMAT_VERSION, "files": files}, indent=2)
    (folder / MANIFEST_FILE).write_text(text + "\n")


def read_manifest(path: str | os.PathLike) -> dict[str, dict[str, Any]] | None:
    """Return the manifest's file table (name -> bytes, sha256), or ``None`` for a bundle without one.

    Raises
    ------
    DamagedCheckpointError
        The manifest is not valid JSON.
    """
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        return None
    try:
        return dict(json.loads(file.read_text())["files"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        msg = f"{str(file)!r} is damaged ({error}); the checkpoint cannot be trusted."
        raise DamagedCheckpointError(msg) from error


def verify_file(path: str | os.PathLike, name: str) -> None:
    """Check one file of a bundle against its manifest (no manifest: nothing to check).

    Raises
    ------
    DamagedCheckpointError
        The file is missing from the manifest, or its size or SHA-256 differ.
    """
    manifest = read_manifest(path)
    if manifest is None:
        return
    file = Path(path) / name
    expected = manifest.get(name)
    if expected is None:
        problem = "it is not listed in manifest.json"
    elif file.stat().st_size != expected["bytes"]:
        problem = f"{file.stat().st_size} bytes instead of {expected['bytes']} (cut off?)"
    elif file_digest(file) != expected["sha256"]:
        problem = "its SHA-256 does not match manifest.json (changed or damaged on disk)"
    else:
        return
    msg = f"Checkpoint file {str(file)!r} is damaged: {problem}."
    raise DamagedCheckpointError(msg)


def verify_bundle(path: str | os.PathLike) -> None:
    """Check every file of a bundle against its manifest.

    Raises
    ------
    DamagedCheckpointError
        No manifest, a listed file missing, or a file whose size or SHA-256 differ.
    """
    manifest = read_manifest(path)
    if manifest is None:
        msg = f"Checkpoint {str(path)!r} has no {MANIFEST_FILE}; it was not written completely."
        raise DamagedCheckpointError(msg)
    for name in manifest:
        if not (Path(path) / name).is_file():
            msg = f"Checkpoint {str(path)!r} lacks {name}, which its manifest lists."
            raise DamagedCheckpointError(msg)
        verify_file(path, name)


def _require(path: Path, name: str, *, verify: bool = True) -> Path:
    if not path.is_dir():
        msg = f"Checkpoint directory {str(path)!r} does not exist (or is not a directory)."
        raise FileNotFoundError(msg)
    file = path / name
    if not file.is_file():
        present = sorted(p.name for p in path.iterdir())
        msg = f"Checkpoint {str(path)!r} has no {name} (found: {present}); it is incomplete or not a scdlkit checkpoint."
        raise FileNotFoundError(msg)
    if verify:
        verify_file(path, name)
    return file


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``config.json`` of a bundle.

    Raises
    ------
    FileNotFoundError
        Missing directory or file.
    DamagedCheckpointError
        The file does not match the bundle's manifest.
    ValueError
        Unreadable JSON or a format version newer than this scdlkit understands.
    """
    file = _require(
        Path(path), CONFIG_FILE, verify=False
    )  # the version first: newer formats may differ
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
    verify_file(path, CONFIG_FILE)
    return config


def _load(file: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        msg = f"Cannot read {str(file)!r}: {error}. The file is cut off or damaged."
        raise DamagedCheckpointError(msg) from error


def read_weights(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Load the best model's state_dict (weights only).

    Raises
    ------
    FileNotFoundError
        Missing directory or file.
    DamagedCheckpointError
        The file does not match the manifest or cannot be read.
    """
    return _load(_require(Path(path), WEIGHTS_FILE), map_location)


def read_training_state(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load the resumable training state (weights only).

    Raises
    ------
    FileNotFoundError
        The bundle was saved without training state.
    DamagedCheckpointError
        The file does not match the manifest or cannot be read.
    """
    return _load(_require(Path(path), TRAINING_STATE_FILE), map_location)


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
    training_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the ``config.json`` of a bundle: version, model config, task, settings, history, data fields.

    ``training_data`` describes the cells trained on (see
    :func:`scdlkit.train.state.describe_data`); resuming compares it.
    """
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
    if training_data is not None:
        config["training_data"] = training_data
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
