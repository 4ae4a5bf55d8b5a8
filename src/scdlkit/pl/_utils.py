"""Shared plumbing of the plot functions: the run record (via ``data.record``), show/save/return."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData

from .._errors import MissingKeyError
from ..data.record import get_record, record_holder

FIT_HINT = "Run scdlkit.tl.fit(adata, model=...) first"
PREDICT_HINT = "Run scdlkit.tl.predict(adata) first"


def run_record(
    data: AnnData | MuData, key: str, mod: str | Sequence[str] | None, *, func: str
) -> tuple[AnnData | MuData, Mapping[str, Any]]:
    """Return the object that holds run ``key`` and its record (``.uns[key]``).

    The holder is found by :func:`scdlkit.data.record.record_holder`: the AnnData,
    the modality ``mod``, or for a MuData without ``mod`` the MuData itself when
    it holds ``key`` (a run on several modalities), else the one modality that does.

    Raises
    ------
    MissingKeyError
        No record under ``key``; the message lists the records present and how to make one.
    ValueError
        Several modalities hold a run under ``key`` and ``mod`` was not given.
    """
    holder = record_holder(data, key, mod)
    hint = (
        f"scdlkit.pl.{func} draws a run: {FIT_HINT} (its key_added= names the record), or pass "
        "key= of an existing run."
    )
    return holder, get_record(holder, key, hint=hint)


def get_history(record: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
    """``record["history"]`` as float arrays, checked to hold at least ``epoch`` and ``train_loss``."""
    history = record.get("history")
    if not isinstance(history, Mapping) or "epoch" not in history or "train_loss" not in history:
        msg = (
            f".uns[{key!r}] has no training history (expected .uns[{key!r}]['history'] with "
            f"'epoch' and 'train_loss'). {FIT_HINT}; a record made by tl.predict alone has none."
        )
        raise MissingKeyError(msg)
    return {
        str(name): np.asarray(values, dtype=np.float64).ravel() for name, values in history.items()
    }


def resolve_show(show: bool | None) -> bool:
    """``show=None`` follows ``scanpy.settings.autoshow``, like scanpy's plot functions."""
    if show is not None:
        return bool(show)
    import scanpy as sc

    return bool(sc.settings.autoshow)


def save_path(save: bool | str | os.PathLike | None, *, func: str, key: str) -> Path | None:
    """Where ``save=`` asks the figure to go.

    ``True`` gives ``<scanpy.settings.figdir>/<func>_<key>.<scanpy.settings.file_format_figs>``;
    a string or path is used as the file name; ``None``/``False`` saves nothing.
    """
    if save is None or save is False:
        return None
    if save is True:
        import scanpy as sc

        return Path(sc.settings.figdir) / f"{func}_{key}.{sc.settings.file_format_figs}"
    if isinstance(save, str | os.PathLike):
        return Path(save)
    msg = f"save must be True, False, None or a file name, got {save!r}."
    raise TypeError(msg)


def finish(
    fig: Figure,
    axes: Axes | list[Axes],
    *,
    show: bool | None,
    save: bool | str | os.PathLike | None,
    return_fig: bool,
    func: str,
    key: str,
) -> Figure | Axes | list[Axes] | None:
    """Save, show and return like scanpy: Figure, Axes (``show=False``) or ``None``."""
    path = save_path(save, func=func, key=key)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    if return_fig:
        return fig
    if resolve_show(show):
        import matplotlib.pyplot as plt

        plt.show()
        return None
    return axes


def new_axes(ax: Axes | None, *, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """Use ``ax`` when given, else a new figure with one Axes."""
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def panel_axes(
    ax: Axes | Sequence[Axes] | None, n_panels: int, *, ncols: int, panel_size: float = 3.2
) -> tuple[Figure, list[Axes]]:
    """One Axes per panel: the ones given (a single Axes for one panel) or a new grid."""
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) != n_panels:
            msg = (
                f"ax= gives {len(axes)} Axes, but the plot has {n_panels} panels. Pass one Axes "
                "per panel, or ax=None to create the figure."
            )
            raise ValueError(msg)
        return axes[0].figure, axes
    import matplotlib.pyplot as plt

    ncols = max(1, min(int(ncols), n_panels))
    nrows = -(-n_panels // ncols)
    fig, grid = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols + 0.4, panel_size * nrows), squeeze=False
    )
    flat = list(grid.ravel())
    for extra in flat[n_panels:]:
        extra.remove()
    fig.subplots_adjust(wspace=0.35, hspace=0.45)
    return fig, flat[:n_panels]
