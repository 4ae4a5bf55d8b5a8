"""On-disk format of a saved annotation runner: ``manifest.json`` + ``trainable.pt``.

Only the tensors the strategy trained are stored (head, PEFT parameters, or
the whole encoder for ``full_finetune``); the base checkpoint is identified by
its path and the SHA-256 of its weights and vocabulary, and verified on load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_directory
from .._errors import format_names
from .checkpoint import CheckpointIdentity

FORMAT = "scdlkit.scgpt_annotation"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "trainable.pt"


def write_runner_dir(
    path: str | os.PathLike,
    *,
    manifest: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    overwrite: bool = False,
) -> Path:
    """Write ``manifest.json`` and ``trainable.pt`` into a new directory, atomically.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is ``False``.
    """
    with atomic_directory(path, overwrite=overwrite, what="Annotation runner") as folder:
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
        (folder / MANIFEST).write_text(json.dumps(payload, indent=2, allow_nan=True))
        torch.save(
            {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
            folder / WEIGHTS,
        )
    return Path(path)


def read_runner_dir(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a directory written by :func:`write_runner_dir` (tensors with ``weights_only=True``).

    Raises
    ------
    FileNotFoundError
        Missing directory or files.
    ValueError
        Not an annotation runner directory, or a newer format.
    """
    folder = Path(path)
    files = [folder / MANIFEST, folder / WEIGHTS]
    missing = [f.name for f in files if not f.is_file()]
    if not folder.is_dir() or missing:
        msg = (
            f"{str(folder)!r} is not a saved AnnotationRunner (missing "
            f"{format_names(missing or [MANIFEST, WEIGHTS])}); save one with runner.save(path)."
        )
        raise FileNotFoundError(msg)
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        msg = f"{folder / MANIFEST} is not an scdlkit scGPT annotation manifest (format {manifest.get('format')!r})."
        raise ValueError(msg)
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        msg = (
            f"{folder} was written in format version {manifest['format_version']}, newer than this "
            f"scdlkit understands ({FORMAT_VERSION}); upgrade scdlkit."
        )
        raise ValueError(msg)
    tensors = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    return manifest, dict(tensors)


def verify_identity(recorded: Mapping[str, str], actual: CheckpointIdentity) -> None:
    """Raise a ``ValueError`` unless the base checkpoint's hashes match the recorded ones."""
    for key, label in (("weights_sha256", "best_model.pt"), ("vocab_sha256", "vocab.json")):
        if recorded.get(key) != getattr(actual, key):
            msg = (
                f"The base checkpoint at {actual.path!r} is not the one this runner was trained on: "
                f"its {label} has SHA-256 {getattr(actual, key)[:16]}..., the runner recorded "
                f"{str(recorded.get(key))[:16]}... (trained on {recorded.get('path')!r}). Pass "
                "checkpoint= the original checkpoint folder."
            )
            raise ValueError(msg)


def check_tensors(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *, where: str
) -> None:
    """Raise a ``ValueError`` unless ``tensors`` has exactly the expected names and shapes."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        msg = (
            f"{where} does not fit the rebuilt model: missing {format_names(missing, limit=5)}, "
            f"unexpected {format_names(unexpected, limit=5)}."
        )
        raise ValueError(msg)
    for key, value in expected.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            msg = (
                f"{where}: tensor {key!r} has shape {list(tensors[key].shape)}, the rebuilt model "
                f"expects {list(value.shape)}."
            )
            raise ValueError(msg)
