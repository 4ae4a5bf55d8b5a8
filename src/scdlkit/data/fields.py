"""Find the matrix and ``.obs`` columns a user means in an AnnData or MuData.

This is the single place that knows where data lives: ``adata.X``, a layer,
``adata.raw``, a MuData modality (or several, side by side), and ``.obs``
columns, including MuData's ``mdata.obs`` with its ``"mod:column"`` names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from .._errors import MissingKeyError, format_names
from .matrix import SourceMatrix, as_source_matrix, is_backed

ModSpec = str | Sequence[str] | None


@dataclass(frozen=True)
class Fields:
    """Everything :func:`resolve_fields` found.

    Attributes
    ----------
    target
        The object results belong to: the AnnData itself, the modality's AnnData
        for ``mod="rna"``, or the MuData for several modalities.
    matrix
        The source matrix (dense, CSR or backed); never a copy unless several
        modalities had to be put side by side.
    feature_names
        Column names of ``matrix``; ``"mod:feature"`` for several modalities.
    obs_names
        Row names of ``matrix``.
    source
        Human-readable description, e.g. ``"mdata.mod['rna'].layers['counts']"``.
    labels, batches, split
        The requested ``.obs`` columns aligned to ``obs_names`` (``None`` when not asked).
    """

    target: AnnData | MuData
    matrix: SourceMatrix
    feature_names: pd.Index
    obs_names: pd.Index
    source: str
    labels: pd.Series | None = None
    batches: pd.Series | None = None
    split: pd.Series | None = None

    @property
    def backed(self) -> bool:
        """Whether the matrix is read from disk."""
        return is_backed(self.matrix)


def _modality_names(mod: ModSpec) -> list[str]:
    if mod is None:
        return []
    return [mod] if isinstance(mod, str) else list(mod)


def resolve_target(data: AnnData | MuData, mod: ModSpec = None) -> AnnData | MuData:
    """Return the AnnData that ``mod`` selects (or the MuData for several modalities).

    Parameters
    ----------
    data
        An AnnData or a MuData.
    mod
        For a MuData: one modality name, or a list of them. Must be ``None`` for
        an AnnData.

    Raises
    ------
    ValueError
        ``mod`` missing for a MuData, given for an AnnData, or empty.
    MissingKeyError
        A modality that does not exist (the message lists those that do).
    TypeError
        ``data`` is neither an AnnData nor a MuData.
    """
    names = _modality_names(mod)
    if isinstance(data, MuData):
        if not names:
            msg = (
                "data is a MuData; pass mod= to say which modality to use "
                f"(available: {format_names(data.mod)}), or a list of them to use several."
            )
            raise ValueError(msg)
        missing = [name for name in names if name not in data.mod]
        if missing:
            msg = (
                f"Did not find modality {format_names(missing)} in mdata.mod "
                f"(available: {format_names(data.mod)})."
            )
            raise MissingKeyError(msg)
        if len(set(names)) != len(names):
            msg = f"mod lists a modality twice: {names}."
            raise ValueError(msg)
        return data.mod[names[0]] if len(names) == 1 else data
    if isinstance(data, AnnData):
        if names:
            msg = f"mod={mod!r} only applies to a MuData, but data is an AnnData. Pass mod=None."
            raise ValueError(msg)
        return data
    msg = f"Expected an AnnData or a MuData, got {type(data).__name__}."
    raise TypeError(msg)


def _single_matrix(adata: AnnData, layer: str | None, use_raw: bool, prefix: str):
    if use_raw and layer is not None:
        msg = f"Pass either layer={layer!r} or use_raw=True, not both."
        raise ValueError(msg)
    if use_raw:
        if adata.raw is None:
            msg = f"use_raw=True but {prefix}.raw is None. Pass use_raw=False to use {prefix}.X."
            raise MissingKeyError(msg)
        return adata.raw.X, adata.raw.var_names, f"{prefix}.raw.X"
    if layer is None:
        if adata.X is None:
            msg = (
                f"{prefix}.X is empty (None). Pass layer= to use one of "
                f"{format_names(adata.layers)}."
            )
            raise MissingKeyError(msg)
        return adata.X, adata.var_names, f"{prefix}.X"
    if layer not in adata.layers:
        msg = (
            f"Did not find layer {layer!r} in {prefix}.layers "
            f"(available: {format_names(adata.layers)}). Pass layer=None to use {prefix}.X."
        )
        raise MissingKeyError(msg)
    return adata.layers[layer], adata.var_names, f"{prefix}.layers[{layer!r}]"


def _check_shape(adata_like: AnnData | MuData, feature_names: pd.Index, source: str) -> None:
    if adata_like.n_obs == 0 or len(feature_names) == 0:
        msg = (
            f"{source} is empty ({adata_like.n_obs} cells x {len(feature_names)} features); "
            "there is nothing to train on."
        )
        raise ValueError(msg)
    if not feature_names.is_unique:
        duplicated = feature_names[feature_names.duplicated()].unique()
        msg = (
            f"{source} has {len(duplicated)} duplicated feature names "
            f"({format_names(duplicated, limit=10)}). Make them unique first, for example with "
            "adata.var_names_make_unique()."
        )
        raise ValueError(msg)


def _stack_modalities(mdata: MuData, names: list[str], layer, use_raw):
    """Put several modalities side by side on the cells they all share."""
    shared = mdata.obs_names
    for name in names:
        shared = shared[shared.isin(mdata.mod[name].obs_names)]
    if len(shared) == 0:
        msg = f"Modalities {format_names(names)} share no cells; cannot train on them together."
        raise ValueError(msg)
    blocks, features = [], []
    for name in names:
        modality = mdata.mod[name]
        if modality.isbacked:
            msg = "Several modalities cannot be combined from a backed MuData; load it into memory."
            raise ValueError(msg)
        matrix, var_names, source = _single_matrix(modality, layer, use_raw, f"mdata.mod[{name!r}]")
        matrix = as_source_matrix(matrix, source=source)
        rows = modality.obs_names.get_indexer(shared)
        block = matrix[rows]
        blocks.append(sp.csr_matrix(block) if not sp.issparse(block) else block)
        features.extend(f"{name}:{feature}" for feature in var_names)
    stacked = sp.hstack(blocks, format="csr", dtype=np.result_type(*[b.dtype for b in blocks]))
    source = " + ".join(f"mdata.mod[{name!r}]" for name in names)
    return stacked, pd.Index(features), shared, source


def _obs_candidates(data: AnnData | MuData, names: list[str], key: str):
    """Yield ``(description, DataFrame, column)`` places where ``key`` may live."""
    if isinstance(data, AnnData):
        yield "adata.obs", data.obs, key
        return
    prefix, _, rest = key.partition(":")
    if rest and prefix in data.mod:
        yield "mdata.obs", data.obs, key
        yield f"mdata.mod[{prefix!r}].obs", data.mod[prefix].obs, rest
        return
    for name in names:
        yield f"mdata.mod[{name!r}].obs", data.mod[name].obs, key
        yield "mdata.obs", data.obs, f"{name}:{key}"
    yield "mdata.obs", data.obs, key


def get_obs_column(
    data: AnnData | MuData, key: str, obs_names: pd.Index, *, mod: ModSpec = None, role: str = "key"
) -> pd.Series:
    """Return the ``.obs`` column ``key`` aligned to ``obs_names``.

    For a MuData the modality's own ``.obs`` is searched first, then
    ``mdata.obs["<mod>:<key>"]`` and ``mdata.obs[key]``; ``"mod:column"``
    names address one modality explicitly.

    Raises
    ------
    MissingKeyError
        The column does not exist (the message lists the columns that do).
    """
    names = _modality_names(mod)
    searched = []
    for where, frame, column in _obs_candidates(data, names, key):
        if column in frame.columns:
            series = frame[column]
            if not series.index.equals(obs_names):
                series = series.reindex(obs_names)
            return series.rename(key)
        searched.append(f"{where} (columns: {format_names(frame.columns, limit=15)})")
    places = "; ".join(dict.fromkeys(searched))
    msg = f"Did not find {role} {key!r} in {places}."
    raise MissingKeyError(msg)


def resolve_fields(
    data: AnnData | MuData,
    *,
    layer: str | None = None,
    mod: ModSpec = None,
    use_raw: bool = False,
    label_key: str | None = None,
    batch_key: str | None = None,
    split_key: str | None = None,
    strict: bool = True,
) -> Fields:
    """Resolve the matrix and ``.obs`` columns that a call means.

    Parameters
    ----------
    data
        AnnData or MuData.
    layer
        Layer to read; ``None`` reads ``.X``.
    mod
        MuData modality name (required for a MuData), or a list of names to put
        several modalities side by side on their shared cells.
    use_raw
        Read ``.raw.X`` (with ``.raw.var_names``) instead of ``.X``.
    label_key, batch_key, split_key
        Columns of ``.obs`` to return aligned to the matrix rows.
    strict
        Refuse empty data and duplicated feature names (training needs both);
        ``False`` only for reporting tools such as :func:`scdlkit.pp.inspect`.

    Returns
    -------
    :class:`Fields`; the input is never modified.

    Raises
    ------
    MissingKeyError
        Missing layer, modality, ``.raw`` or column; the message lists what exists.
    ValueError
        Empty data, duplicated feature names, inconsistent ``mod``/``layer``/``use_raw``.
    TypeError
        A matrix that is not numeric or of an unsupported type.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> fields = resolve_fields(adata, use_raw=True, label_key="bulk_labels")
    >>> fields.source, fields.matrix.shape
    ('adata.raw.X', (700, 765))
    """
    target = resolve_target(data, mod)
    names = _modality_names(mod)
    if isinstance(target, MuData):
        matrix, feature_names, obs_names, source = _stack_modalities(target, names, layer, use_raw)
    else:
        prefix = f"mdata.mod[{names[0]!r}]" if names else "adata"
        matrix, feature_names, source = _single_matrix(target, layer, use_raw, prefix)
        matrix = as_source_matrix(matrix, source=source)
        obs_names = target.obs_names
    feature_names = pd.Index(feature_names.astype(str))
    if strict:
        _check_shape(target, feature_names, source)
    columns = {}
    for role, key in (("label_key", label_key), ("batch_key", batch_key), ("split_key", split_key)):
        if key is not None:
            columns[role] = get_obs_column(data, key, obs_names, mod=mod, role=role)
    return Fields(
        target=target,
        matrix=matrix,
        feature_names=feature_names,
        obs_names=pd.Index(obs_names),
        source=source,
        labels=columns.get("label_key"),
        batches=columns.get("batch_key"),
        split=columns.get("split_key"),
    )
