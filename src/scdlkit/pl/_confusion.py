"""``pl.confusion``: confusion matrix of a classifier's predictions against the true labels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData

from .._errors import MissingKeyError, format_names
from ..data import get_obs_column
from ..data.record import has_true_label, where
from ._utils import FIT_HINT, PREDICT_HINT, finish, new_axes, run_record

_NORMALIZE = ("true", "pred", None)
_SPLITS = ("train", "val", "test")


def _obs_column(
    data: AnnData | MuData, target: AnnData | MuData, name: str, *, hint: str
) -> pd.Series:
    """``target.obs[name]``; for a modality also ``mdata.obs`` (``"<mod>:<name>"`` or ``name``)."""
    if name in target.obs.columns:
        return target.obs[name]
    if isinstance(data, MuData) and isinstance(target, AnnData):
        modality = next((m for m, value in data.mod.items() if value is target), None)
        if modality is not None:
            try:
                return get_obs_column(data, name, target.obs_names, mod=modality)
            except KeyError:
                pass
    msg = (
        f"Did not find {name!r} in {where(target)}.obs (columns: "
        f"{format_names(target.obs.columns, limit=15)}). {hint}."
    )
    raise MissingKeyError(msg)


def _confusion_inputs(
    data: AnnData | MuData,
    *,
    key: str,
    label_key: str | None,
    split: str | None,
    mod: str | Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Return true and predicted labels of the cells to count, the class order and the label key."""
    target, record = run_record(data, key, mod, func="confusion")
    if label_key is None:
        label_key = record.get("label_key")
        if label_key is None:
            msg = (
                f".uns[{key!r}] names no label_key: the run was not trained with labels. Pass "
                "label_key= (the .obs column with the true labels), or train a classifier with "
                "scdlkit.tl.fit(adata, model=..., task='classification', label_key=...)."
            )
            raise MissingKeyError(msg)
        label_key = str(label_key)
    predicted = _obs_column(
        data, target, f"{key}_prediction",
        hint=f"{PREDICT_HINT} (a classification run writes .obs['{key}_prediction'])",
    )  # fmt: skip
    truth = _obs_column(
        data, target, label_key, hint="Pass label_key= with the column of true labels"
    )
    keep = predicted.notna().to_numpy() & has_true_label(truth, record)
    if split is not None:
        if split not in _SPLITS:
            msg = f"split must be one of {format_names(_SPLITS)} or None, got {split!r}."
            raise ValueError(msg)
        column = _obs_column(
            data, target, f"{key}_split",
            hint=f"{FIT_HINT} without split_key (it writes .obs['{key}_split']), or pass split=None",
        )  # fmt: skip
        keep &= (column.astype(str) == split).to_numpy()
    if not keep.any():
        where = "" if split is None else f" in split {split!r}"
        msg = f"No cell{where} has both a prediction (.obs['{key}_prediction']) and a label ({label_key!r})."
        raise ValueError(msg)
    y_true = truth.astype(str).to_numpy()[keep]
    y_pred = predicted.astype(str).to_numpy()[keep]
    categories = [str(c) for c in record.get("label_categories", [])]
    if not categories and isinstance(predicted.dtype, pd.CategoricalDtype):
        categories = [str(c) for c in predicted.cat.categories]
    present = pd.unique(np.concatenate([y_true, y_pred]))
    classes = categories + sorted(str(c) for c in present if str(c) not in categories)
    return y_true, y_pred, classes, label_key


def confusion(
    adata: AnnData | MuData,
    *,
    key: str = "scdlkit",
    label_key: str | None = None,
    normalize: Literal["true", "pred"] | None = "true",
    split: Literal["train", "val", "test"] | None = None,
    mod: str | Sequence[str] | None = None,
    ax: Axes | None = None,
    cmap: str = "Blues",
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Plot the confusion matrix of a classifier's predictions as an annotated heatmap.

    Rows are the true labels (``.obs[label_key]``), columns the predictions
    (``.obs[f"{key}_prediction"]``, written by :func:`scdlkit.tl.predict`), both in
    the order of the classes the model was trained on; labels the model never
    saw are appended. Counted with :func:`sklearn.metrics.confusion_matrix`.

    Parameters
    ----------
    adata
        AnnData or MuData with predictions.
    key
        The ``key_added`` of the run.
    label_key
        ``.obs`` column with the true labels; defaults to the run's
        ``.uns[key]["label_key"]``.
    normalize
        ``"true"``: each row sums to 1 (recall per class); ``"pred"``: each column
        sums to 1 (precision); ``None``: cell counts.
    split
        Count only the cells of this split (``.obs[f"{key}_split"]``), for example
        ``"test"`` for held-out cells; ``None`` counts every cell with a prediction.
    mod
        For a MuData: the modality the run was written into; ``None`` reads the
        MuData itself.
    ax
        Axes to draw into.
    cmap
        Colormap of the heatmap.
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    save
        File to write the figure to; ``True`` writes
        ``<scanpy.settings.figdir>/confusion_<key>.<scanpy.settings.file_format_figs>``.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The Figure with ``return_fig=True``, the Axes with ``show=False``, otherwise ``None``.

    Raises
    ------
    MissingKeyError
        No run record, no predictions (run :func:`scdlkit.tl.predict`), no
        ``label_key``, or no split column.
    ValueError
        An unknown ``normalize``/``split`` value, or no cell to count.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> scdlkit.tl.fit(
    ...     adata,
    ...     "mlp_classifier",
    ...     task="classification",
    ...     label_key="bulk_labels",
    ...     use_raw=True,
    ...     epochs=2,
    ... )
    >>> scdlkit.tl.predict(adata)
    >>> ax = scdlkit.pl.confusion(adata, split="test", show=False)
    >>> ax.get_title().split(",")[0], ax.get_xlabel(), ax.get_ylabel()
    ('scdlkit: test cells', 'predicted', 'true (bulk_labels)')
    """
    from sklearn.metrics import confusion_matrix

    if normalize not in _NORMALIZE:
        msg = f"normalize must be 'true', 'pred' or None, got {normalize!r}."
        raise ValueError(msg)
    y_true, y_pred, classes, label_key = _confusion_inputs(
        adata, key=key, label_key=label_key, split=split, mod=mod
    )
    matrix = confusion_matrix(y_true, y_pred, labels=classes, normalize=normalize)
    n = len(classes)
    size = max(4.0, 0.55 * n + 2.0)
    fig, ax = new_axes(ax, figsize=(size + 1.0, size))
    vmax = 1.0 if normalize is not None else max(float(matrix.max()), 1.0)
    image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    for i in range(n):
        for j in range(n):
            value = matrix[i, j]
            text = f"{value:.2f}" if normalize is not None else f"{int(value)}"
            color = "white" if value > 0.6 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize="small")
    ax.set_xticks(range(n), labels=classes, rotation=90)
    ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel(f"true ({label_key})")
    accuracy = float(np.mean(y_true == y_pred))
    where = "all cells" if split is None else f"{split} cells"
    ax.set_title(f"{key}: {where}, n={y_true.shape[0]}, accuracy {accuracy:.3f}")
    return finish(fig, ax, show=show, save=save, return_fig=return_fig, func="confusion", key=key)
