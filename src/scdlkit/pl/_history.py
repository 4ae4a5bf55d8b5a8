"""``pl.history``: training and validation loss curves of a run."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData

from ._utils import finish, get_history, panel_axes, run_record

_SPLITS = (("train", "C0", "-"), ("val", "C1", "--"))
_NOT_COMPONENTS = {"loss", "lr", "seconds"}


def _components(history: dict[str, np.ndarray]) -> list[str]:
    """Loss components recorded as ``train_<name>``/``val_<name>``, in history order."""
    names: list[str] = []
    for column in history:
        for split, _, _ in _SPLITS:
            prefix = f"{split}_"
            if column.startswith(prefix):
                name = column[len(prefix) :]
                if name not in _NOT_COMPONENTS and name not in names:
                    names.append(name)
    return names


def _plot_metric(
    ax: Axes, history: dict[str, np.ndarray], metric: str, *, best_epoch: int | None, log_y: bool
) -> None:
    epochs = history["epoch"]
    for split, color, style in _SPLITS:
        values = history.get(f"{split}_{metric}")
        if values is None:
            continue
        finite = np.isfinite(values)
        if not finite.any():
            continue
        # only the evaluated epochs: with val_every > 1 the others are NaN and would break the line
        ax.plot(
            epochs[finite],
            values[finite],
            color=color,
            linestyle=style,
            marker="o" if finite.sum() < 30 else None,
            markersize=3,
            label=split,
        )
    if best_epoch is not None:
        ax.axvline(
            best_epoch, color="0.4", linestyle=":", linewidth=1, label=f"best epoch {best_epoch}"
        )
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title("loss" if metric == "loss" else metric)
    ax.legend(frameon=False, fontsize="small")


def history(
    adata: AnnData | MuData,
    *,
    key: str = "scdlkit",
    mod: str | Sequence[str] | None = None,
    components: bool = False,
    log_y: bool = False,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Plot the training and validation loss per epoch of a :func:`scdlkit.tl.fit` run.

    Reads ``.uns[key]["history"]``. The best epoch (the one whose weights were
    kept, ``.uns[key]["best_epoch"]``) is marked with a dotted vertical line.
    Validation losses are drawn at the epochs where they were computed.

    Parameters
    ----------
    adata
        AnnData or MuData that :func:`scdlkit.tl.fit` wrote into.
    key
        The ``key_added`` of the run.
    mod
        For a MuData: the modality the run was written into; ``None`` reads the
        MuData itself (a run on several modalities).
    components
        Also plot each loss component (for example ``reconstruction`` and ``kl``
        of a VAE), one panel each, next to the total loss.
    log_y
        Logarithmic y axis.
    ax
        Axes to draw into: one Axes, or with ``components=True`` one per panel.
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    save
        File to write the figure to; ``True`` writes
        ``<scanpy.settings.figdir>/history_<key>.<scanpy.settings.file_format_figs>``.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The Figure with ``return_fig=True``; with ``show=False`` the Axes (a list of
    Axes with ``components=True``); otherwise ``None``.

    Raises
    ------
    MissingKeyError
        No run record ``.uns[key]`` or no history in it.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> scdlkit.tl.fit(adata, "vae", use_raw=True, epochs=2)
    >>> ax = scdlkit.pl.history(adata, show=False)
    >>> ax.get_xlabel(), ax.get_ylabel(), [line.get_label() for line in ax.get_lines()]
    ('epoch', 'loss', ['train', 'val', 'best epoch ...'])
    >>> axes = scdlkit.pl.history(adata, components=True, show=False)
    >>> [a.get_title() for a in axes]
    ['loss', 'reconstruction', 'kl']
    """
    _, record = run_record(adata, key, mod, func="history")
    values = get_history(record, key)
    best = record.get("best_epoch")
    best_epoch = int(best) if best is not None and int(best) > 0 else None
    metrics = ["loss", *(_components(values) if components else [])]
    if not components:
        fig, axes = panel_axes(ax, 1, ncols=1, panel_size=4.0)
    else:
        fig, axes = panel_axes(ax, len(metrics), ncols=3)
    for panel, metric in zip(axes, metrics, strict=True):
        _plot_metric(panel, values, metric, best_epoch=best_epoch, log_y=log_y)
    if not components:
        axes[0].set_title(f"{record.get('model', 'model')} ({key})")
    result = axes if components else axes[0]
    return finish(fig, result, show=show, save=save, return_fig=return_fig, func="history", key=key)
