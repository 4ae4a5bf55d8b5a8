"""On-disk format of a saved annotation runner: ``manifest.json`` + ``trainable.pt``.

Only the tensors the strategy trained are stored (head, PEFT parameters, or
the whole encoder for ``full_finetune``); the base checkpoint is identified by
its path and the SHA-256 of its weights and vocabulary, and verified on load.
The data options are stored as a versioned :class:`~scdlkit.data.spec.DataSpec`
(``data_spec``); manifests written before it (flat ``params`` with
``random_state``) still load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._atomic import atomic_directory
from .._errors import format_names
from ..data.spec import DataSpec
from .checkpoint import checkpoint_identity, load_scgpt
from .identity import CheckpointIdentity
from .model import ScGPTModel
from .tokenizer import ScGPTTokenizer

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


def load_base(
    recorded: Mapping[str, str],
    checkpoint: str | os.PathLike | ScGPTModel | None,
    *,
    device: str,
) -> ScGPTModel:
    """Return the base checkpoint a runner was trained on, after checking its hashes.

    ``checkpoint`` defaults to the recorded path; a loaded model is reused.

    Raises
    ------
    ValueError
        The weights or vocabulary differ from the recorded ones.
    """
    checkpoint = recorded["path"] if checkpoint is None else checkpoint
    if isinstance(checkpoint, ScGPTModel):
        verify_identity(recorded, checkpoint.identity)
        return checkpoint
    verify_identity(recorded, checkpoint_identity(checkpoint))
    return load_scgpt(checkpoint, device=device)


def data_spec(manifest: Mapping[str, Any]) -> DataSpec:
    """Return the runner's data options: ``data_spec``, or the flat ``params`` of older manifests."""
    if "data_spec" in manifest:
        return DataSpec.from_dict(manifest["data_spec"])
    params = manifest["params"]
    return DataSpec(
        layer=params.get("layer"),
        mod=params.get("mod"),
        use_raw=bool(params.get("use_raw")),
        label_key=manifest["label_key"],
        val_size=float(params["val_size"]),
        test_size=float(params["test_size"]),
    )


def saved_seed(params: Mapping[str, Any]) -> int:
    """Return the runner's seed (``random_state`` in manifests written before ``seed``)."""
    return int(params["random_state"] if "random_state" in params else params["seed"])


def tokenizer_from(settings: Mapping[str, Any], base: ScGPTModel) -> ScGPTTokenizer:
    """Rebuild the tokenizer saved by :meth:`ScGPTTokenizer.to_dict` for ``base``'s vocabulary."""
    return ScGPTTokenizer(
        pad_id=base.vocab.pad_id, cls_id=base.vocab.cls_id, n_bins=int(settings["n_bins"]),
        max_len=int(settings["max_len"]), pad_value=float(settings["pad_value"]),
        cls_value=float(settings["cls_value"]), seed=int(settings["seed"]),
    )  # fmt: skip


def comparison_records(table: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Return the comparison table as JSON records (``NaN`` becomes ``null``)."""
    if table is None:
        return []
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")


def comparison_from(records: list[Mapping[str, Any]] | None) -> pd.DataFrame | None:
    """Rebuild the comparison table from :func:`comparison_records` output."""
    table = pd.DataFrame(records or [])
    if table.empty:
        return None
    numeric = {column: np.float64 for column in table.columns if column != "strategy"}
    return table.astype(numeric)
