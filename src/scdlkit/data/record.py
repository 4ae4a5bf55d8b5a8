"""Run records in AnnData/MuData: which object holds a run, the keys it owns, where outputs live.

This is the one place that knows the AnnData side of a scdlkit run (the keys
of ``docs/architecture.md``):
``tl``, ``pl``, the command line, the workflows and the annotation path all ask
it instead of re-implementing the lookups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from .._errors import MissingKeyError, format_names
from .fields import ModSpec, resolve_target

#: Key patterns a scdlkit run may own, per slot (``{key}`` is the ``key_added`` prefix).
OWNED_KEYS: dict[str, tuple[str, ...]] = {
    "obsm": (
        "X_{key}",
        "{key}_logits",
        "{key}_probabilities",
        "{key}_reconstruction",
        "{key}_normalized",
        "{key}_corrected",
    ),
    "layers": ("{key}_reconstruction", "{key}_normalized", "{key}_corrected"),
    "obs": ("{key}_split", "{key}_prediction", "{key}_confidence"),
}

#: Written by ``fit`` only; ``predict`` keeps it.
SPLIT_KEY = "{key}_split"


def latent_key(key: str) -> str:
    """``.obsm`` name of a run's latent space (``X_`` prefix, so ``use_rep=``/``basis=`` find it)."""
    return f"X_{key}"


def reconstruction_key(key: str) -> str:
    """``.layers`` (or ``.obsm``) name of a run's reconstruction."""
    return f"{key}_reconstruction"


def check_key_added(key_added: object) -> str:
    """Return ``key_added`` checked to be a usable prefix.

    Raises
    ------
    ValueError
        Not a non-empty string, or contains ``/`` (HDF5 reads it as a path).
    """
    if not isinstance(key_added, str) or not key_added or "/" in key_added:
        msg = f"key_added must be a non-empty string without '/', got {key_added!r}."
        raise ValueError(msg)
    return key_added


def is_run_record(value: object) -> bool:
    """Whether a ``.uns`` entry looks like a scdlkit run record."""
    return isinstance(value, Mapping) and "checkpoint" in value and "version" in value


def find_records(data: AnnData | MuData) -> list[tuple[str, AnnData | MuData, str]]:
    """``(where, holder, key)`` of every run record in ``data`` and its modalities.

    ``where`` is ``"adata"``, ``"mdata"`` or ``"mdata.mod['rna']"``.
    """
    holders: list[tuple[str, AnnData | MuData]] = [
        ("mdata" if isinstance(data, MuData) else "adata", data)
    ]
    if isinstance(data, MuData):
        holders += [(f"mdata.mod[{name!r}]", modality) for name, modality in data.mod.items()]
    return [
        (where, holder, str(key))
        for where, holder in holders
        for key, value in holder.uns.items()
        if is_run_record(value)
    ]


def record_holder(data: AnnData | MuData, key: str, mod: ModSpec = None) -> AnnData | MuData:
    """Return the object whose ``.uns[key]`` holds the run: the AnnData, a modality or the MuData.

    With ``mod`` given, that modality (or the MuData for several). For a MuData
    without ``mod``: the MuData when its ``.uns`` has ``key`` (a run on several
    modalities), else the one modality that has it, else the MuData.

    Raises
    ------
    ValueError
        Several modalities hold a run under ``key`` and ``mod`` was not given.
    """
    if isinstance(data, AnnData):
        return data
    if mod is not None:
        return resolve_target(data, mod)
    if key in data.uns:
        return data
    holders = [name for name, modality in data.mod.items() if key in modality.uns]
    if len(holders) > 1:
        msg = f"Modalities {format_names(holders)} each hold a run under key {key!r}; pass mod= to choose."
        raise ValueError(msg)
    return data.mod[holders[0]] if holders else data


def where(holder: AnnData | MuData) -> str:
    """``"adata"`` or ``"mdata"``, for messages."""
    return "mdata" if isinstance(holder, MuData) else "adata"


def get_record(holder: AnnData | MuData, key: str, *, hint: str) -> Mapping[str, Any]:
    """Return ``holder.uns[key]``, a run record.

    Raises
    ------
    MissingKeyError
        No record under ``key``; the message lists the records present and ``hint``.
    """
    record = holder.uns.get(key)
    if not isinstance(record, Mapping):
        found = [str(k) for k, value in holder.uns.items() if is_run_record(value)]
        others = f" (scdlkit records present: {format_names(found)})" if found else ""
        msg = f"Found no scdlkit run record in {where(holder)}.uns[{key!r}]{others}. {hint}"
        raise MissingKeyError(msg)
    return record


def present_keys(holder: AnnData | MuData, key: str) -> list[str]:
    """List the owned keys of run ``key`` that exist in ``holder``, as ``"slot['name']"``."""
    present = []
    for slot, patterns in OWNED_KEYS.items():
        store = getattr(holder, slot, None)
        if store is None:  # a MuData has no .layers
            continue
        names = store.columns if slot == "obs" else store.keys()
        for pattern in patterns:
            name = pattern.format(key=key)
            if name in names:
                present.append(f"{slot}[{name!r}]")
    return present


def has_true_label(labels: pd.Series | np.ndarray, record: Mapping[str, Any]) -> np.ndarray:
    """Cells with a true label to score against: not missing, and not the run's ``unlabeled_category``.

    Examples
    --------
    >>> has_true_label(
    ...     pd.Series(["B", None, "Unknown"]), {"unlabeled_category": "Unknown"}
    ... ).tolist()
    [True, False, False]
    """
    labels = pd.Series(np.asarray(labels, dtype=object))
    known = labels.notna().to_numpy()
    unlabeled = record.get("unlabeled_category")
    if unlabeled is not None:
        known &= labels.astype(str).to_numpy() != str(unlabeled)
    return known


def align_rows(values: np.ndarray, rows: pd.Index | None, target_obs: pd.Index) -> np.ndarray:
    """Place per-cell ``values`` (rows named ``rows``) in ``target_obs`` order; NaN where missing.

    Examples
    --------
    >>> align_rows(np.ones((1, 2)), pd.Index(["b"]), pd.Index(["a", "b"]))
    array([[nan, nan],
           [ 1.,  1.]], dtype=float32)
    """
    if rows is None or rows.equals(target_obs):
        return values
    out = np.full((target_obs.shape[0], *values.shape[1:]), np.nan, dtype=np.float32)
    out[target_obs.get_indexer(rows)] = values
    return out


def history_record(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Convert a history DataFrame to the ``{column: float array}`` dict stored in ``.uns``."""
    return {column: frame[column].to_numpy(dtype=np.float64) for column in frame.columns}


def reconstruction_location(
    holder: AnnData | MuData, key: str, features: list[str]
) -> tuple[str, np.ndarray | None]:
    """Where a reconstruction over ``features`` goes: ``("layers", positions)`` or ``("obsm", None)``.

    It goes to ``.layers`` when every feature is a gene of ``holder`` (positions
    are their columns), else to ``.obsm`` with the features listed in the record.
    """
    var_names = getattr(holder, "var_names", None)
    if getattr(holder, "layers", None) is None or var_names is None:
        return "obsm", None
    positions = var_names.get_indexer(features)
    if (positions >= 0).all():
        return "layers", positions
    return "obsm", None


def read_reconstruction(
    holder: AnnData | MuData, key: str, record: Mapping[str, Any], *, hint: str
) -> tuple[Any, list[str]]:
    """Return a written reconstruction and the feature name of each of its columns.

    Raises
    ------
    MissingKeyError
        Neither ``.layers`` nor ``.obsm`` holds it; the message ends with ``hint``.
    """
    name = reconstruction_key(key)
    layers = getattr(holder, "layers", None)
    if layers is not None and name in layers:
        return layers[name], [str(n) for n in holder.var_names]
    if name in holder.obsm:
        features = record.get("reconstruction_features")
        if features is None:
            msg = f".uns[{key!r}] does not list reconstruction_features; run tl.predict again."
            raise MissingKeyError(msg)
        return holder.obsm[name], [str(n) for n in features]
    msg = f"Did not find the reconstruction .layers[{name!r}] or .obsm[{name!r}]. {hint}"
    raise MissingKeyError(msg)
