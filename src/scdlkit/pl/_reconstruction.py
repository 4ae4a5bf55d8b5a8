"""``pl.reconstruction``: observed against reconstructed values, gene by gene."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData

from .._errors import MissingKeyError, format_names
from ..data.record import align_rows, read_reconstruction
from ._utils import FIT_HINT, PREDICT_HINT, finish, panel_axes, run_record


def _preprocessing(record: Mapping[str, Any], key: str) -> dict[str, Any]:
    """Read the preprocessing the model was trained with from the run's checkpoint bundle."""
    from ..train import read_config

    checkpoint = record.get("checkpoint")
    if not checkpoint:
        msg = (
            f".uns[{key!r}] names no checkpoint, so the preprocessing the model saw is unknown. "
            f"{FIT_HINT}."
        )
        raise MissingKeyError(msg)
    try:
        config = read_config(str(checkpoint))
    except FileNotFoundError as error:
        msg = (
            f"The checkpoint of run {key!r} is gone ({error}). pl.reconstruction needs it to "
            "redo the preprocessing the model saw (normalize/log1p/scale). Restore the folder, "
            f"or point .uns[{key!r}]['checkpoint'] at its new location."
        )
        raise FileNotFoundError(msg) from error
    preprocessing = config.get("preprocessing")
    if not isinstance(preprocessing, dict):
        msg = f"The checkpoint {str(checkpoint)!r} stores no preprocessing; it was not written by tl.fit."
        raise ValueError(msg)
    return preprocessing


def _gene_positions(
    genes: list[str], columns: pd.Index, model_features: pd.Index
) -> tuple[np.ndarray, np.ndarray]:
    """Column of each gene in the reconstruction and its position among the model features."""
    in_columns = columns.get_indexer(genes)
    in_model = model_features.get_indexer(genes)
    unknown = [g for g, c, m in zip(genes, in_columns, in_model, strict=True) if c < 0 and m < 0]
    if unknown:
        msg = (
            f"Unknown genes {format_names(unknown)}: not among the {len(columns)} features of the "
            "reconstruction. Check the names (adata.var_names)."
        )
        raise MissingKeyError(msg)
    unmodelled = [g for g, c, m in zip(genes, in_columns, in_model, strict=True) if m < 0 or c < 0]
    if unmodelled:
        msg = (
            f"Genes {format_names(unmodelled)} were not modelled (the model uses "
            f"{len(model_features)} features, for example the highly variable genes); their "
            "reconstruction is not defined. Pick genes from .uns[key]['reconstruction_features']."
        )
        raise ValueError(msg)
    return in_columns, in_model


def _observed(
    data: AnnData | MuData,
    preprocessing: dict[str, Any],
    positions: np.ndarray,
    layer: str | None,
    obs_names: pd.Index,
) -> np.ndarray:
    """Values the model saw for the model features at ``positions``, in ``obs_names`` order.

    Cells the model did not see (for several modalities: cells missing from one
    of them) are NaN.
    """
    from ..data import SplitData, transform_adata

    options: dict[str, Any] = {}
    if layer is not None:
        options = {"layer": layer, "use_raw": False}
    full = transform_adata(data, preprocessing, **options)
    transform = full.transform
    source = positions if transform.columns is None else transform.columns[positions]
    subset = replace(
        transform,
        columns=np.asarray(source, dtype=np.int64),
        mean=None if transform.mean is None else transform.mean[positions],
        std=None if transform.std is None else transform.std[positions],
    )
    values = SplitData(full.matrix, full.rows, subset).to_numpy()
    return align_rows(values, full.obs_names, obs_names)


def _column(matrix: Any, index: int) -> np.ndarray:
    values = matrix[:, index]
    if sp.issparse(values):
        values = values.toarray()
    return np.asarray(values, dtype=np.float64).ravel()


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def reconstruction(
    adata: AnnData | MuData,
    *,
    genes: str | Sequence[str],
    key: str = "scdlkit",
    layer: str | None = None,
    mod: str | Sequence[str] | None = None,
    ncols: int = 4,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Scatter observed against reconstructed values for each gene, with Pearson's r.

    The reconstructed values come from ``.layers[f"{key}_reconstruction"]``
    (written by :func:`scdlkit.tl.predict`). The observed values are what the
    model saw: the matrix it was trained on with the same preprocessing
    (normalize, log1p, scaling), redone from the run's checkpoint bundle.

    Parameters
    ----------
    adata
        AnnData or MuData with a reconstruction.
    genes
        One gene name or a list of them (features the model used).
    key
        The ``key_added`` of the run.
    layer
        Layer with the observed values; ``None`` uses the layer (or ``.raw``)
        the model was trained on. The run's preprocessing is applied to it.
    mod
        For a MuData: the modality the run was written into; ``None`` reads the
        MuData itself.
    ncols
        Panels per row.
    ax
        Axes to draw into: one per gene (a single Axes for one gene).
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    save
        File to write the figure to; ``True`` writes
        ``<scanpy.settings.figdir>/reconstruction_<key>.<scanpy.settings.file_format_figs>``.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The Figure with ``return_fig=True``; with ``show=False`` the Axes (a list
    for several genes); otherwise ``None``.

    Raises
    ------
    MissingKeyError
        No run record, no reconstruction (run :func:`scdlkit.tl.predict`), or
        unknown genes (all of them are listed).
    ValueError
        Genes the model did not use (for example outside the highly variable genes).
    FileNotFoundError
        The run's checkpoint folder no longer exists.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> scdlkit.tl.fit(adata, "autoencoder", use_raw=True, epochs=2)
    >>> scdlkit.tl.predict(adata)
    >>> axes = scdlkit.pl.reconstruction(adata, genes=["CD79A", "NKG7"], show=False)
    >>> [a.get_title().splitlines()[0] for a in axes], axes[0].get_xlabel(), axes[0].get_ylabel()
    (['CD79A', 'NKG7'], 'observed', 'reconstructed')
    """
    gene_list = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not gene_list:
        msg = "genes is empty; name at least one gene."
        raise ValueError(msg)
    target, record = run_record(adata, key, mod, func="reconstruction")
    preprocessing = _preprocessing(record, key)
    model_features = pd.Index([str(f) for f in preprocessing["feature_names"]])
    matrix, columns = read_reconstruction(
        target,
        key,
        record,
        hint=(
            f"{PREDICT_HINT} with a model that reconstructs its input (autoencoder, vae, ...), "
            "or pass key= of such a run."
        ),
    )
    in_columns, in_model = _gene_positions(gene_list, pd.Index(columns), model_features)
    source = target if isinstance(target, AnnData) else adata
    observed = _observed(source, preprocessing, in_model, layer, pd.Index(target.obs_names))

    fig, axes = panel_axes(ax, len(gene_list), ncols=ncols)
    for i, (panel, gene) in enumerate(zip(axes, gene_list, strict=True)):
        x = observed[:, i].astype(np.float64)
        y = _column(matrix, int(in_columns[i]))
        keep = np.isfinite(x) & np.isfinite(y)  # cells without a result (NaN) are left out
        x, y = x[keep], y[keep]
        panel.scatter(x, y, s=4, alpha=0.5, color="C0", linewidths=0, rasterized=True)
        if x.size:
            low = float(min(x.min(), y.min()))
            high = float(max(x.max(), y.max()))
            panel.plot([low, high], [low, high], color="0.5", linestyle="--", linewidth=0.8)
        panel.set_title(f"{gene}\nPearson r = {_pearson(x, y):.3f}", fontsize="medium")
        panel.set_xlabel("observed")
        panel.set_ylabel("reconstructed")
    result = axes if len(gene_list) > 1 else axes[0]
    return finish(
        fig, result, show=show, save=save, return_fig=return_fig, func="reconstruction", key=key
    )
