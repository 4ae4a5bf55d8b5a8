"""``pl.compare``: bar charts of the table :func:`scdlkit.compare_models` returns."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._errors import MissingKeyError, format_names
from ._utils import finish, panel_axes

_REQUIRED = ("model", "metric", "value")
#: Metrics shown by default, in this order, when present.
_DEFAULT_METRICS = (
    "knn_accuracy",
    "silhouette_label",
    "ari",
    "nmi",
    "batch_silhouette",
    "ilisi",
    "mse",
    "pearson_gene",
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_weighted",
    "auroc_ovr",
)
#: Metrics for which lower is better (marked in the panel title).
_LOWER_IS_BETTER = ("mse", "mae")


def compare(
    results: pd.DataFrame,
    *,
    metrics: str | Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Plot one bar chart per metric of a :func:`scdlkit.compare_models` table.

    Each horizontal bar is a model; baselines (``baseline`` column) are drawn grey and
    hatched. When the table holds several rows per model and metric (for
    example runs with several seeds, concatenated), the bar is their mean and
    the error bar their standard deviation, with the points on top.

    Parameters
    ----------
    results
        Tidy table with columns ``model``, ``metric``, ``value`` (and optionally
        ``baseline``), as returned by :func:`scdlkit.compare_models`.
    metrics
        Metrics to show, one panel each; defaults to the usual ones present
        (kNN accuracy, silhouette, ARI, NMI, batch mixing, MSE, accuracy, F1, AUROC).
    models
        Models to show, in this order; defaults to the table's order.
    ncols
        Panels per row.
    ax
        Axes to draw into, one per metric.
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    save
        File to write the figure to; ``True`` writes
        ``<scanpy.settings.figdir>/compare_models.<scanpy.settings.file_format_figs>``.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The Figure with ``return_fig=True``; with ``show=False`` the list of Axes
    (one per metric); otherwise ``None``.

    Raises
    ------
    MissingKeyError
        The table lacks a required column, or names metrics/models it does not hold.
    ValueError
        An empty table.

    Examples
    --------
    >>> import pandas as pd
    >>> import scdlkit
    >>> table = pd.DataFrame(
    ...     {
    ...         "model": ["vae", "PCA-50 (baseline)"],
    ...         "baseline": [False, True],
    ...         "metric": ["knn_accuracy", "knn_accuracy"],
    ...         "value": [0.81, 0.79],
    ...     }
    ... )
    >>> axes = scdlkit.pl.compare(table, show=False)
    >>> [a.get_title() for a in axes]
    ['knn_accuracy']
    """
    missing = [column for column in _REQUIRED if column not in results.columns]
    if missing:
        msg = (
            f"results lacks the column(s) {format_names(missing)}; pass the table returned by "
            "scdlkit.compare_models (columns model, baseline, metric, value, seconds, parameters)."
        )
        raise MissingKeyError(msg)
    if results.empty:
        msg = "results is empty; there is nothing to plot."
        raise ValueError(msg)
    available = list(dict.fromkeys(results["metric"].astype(str)))
    if metrics is None:
        chosen = [name for name in _DEFAULT_METRICS if name in available] or available
    else:
        chosen = [metrics] if isinstance(metrics, str) else [str(m) for m in metrics]
        unknown = [name for name in chosen if name not in available]
        if unknown:
            msg = f"Metrics {format_names(unknown)} are not in results (it has {format_names(available)})."
            raise MissingKeyError(msg)
    present = list(dict.fromkeys(results["model"].astype(str)))
    order = present if models is None else [str(m) for m in models]
    unknown = [name for name in order if name not in present]
    if unknown:
        msg = f"Models {format_names(unknown)} are not in results (it has {format_names(present)})."
        raise MissingKeyError(msg)
    is_baseline = dict.fromkeys(order, False)
    if "baseline" in results.columns:
        for name, flag in results.groupby("model", sort=False)["baseline"].any().items():
            is_baseline[str(name)] = bool(flag)

    fig, axes = panel_axes(ax, len(chosen), ncols=ncols, panel_size=3.6)
    positions = np.arange(len(order))
    shown_columns = max(1, min(int(ncols), len(chosen)))
    for index, (panel, metric) in enumerate(zip(axes, chosen, strict=True)):
        subset = results[results["metric"].astype(str) == metric]
        values = [
            subset.loc[subset["model"].astype(str) == name, "value"].to_numpy(dtype=float)
            for name in order
        ]
        means = np.array([v.mean() if v.size else np.nan for v in values])
        spread = np.array([v.std(ddof=1) if v.size > 1 else 0.0 for v in values])
        colors = ["0.7" if is_baseline[name] else f"C{i}" for i, name in enumerate(order)]
        bars = panel.barh(
            positions,
            means,
            xerr=spread if spread.any() else None,
            color=colors,
            edgecolor="0.3",
            linewidth=0.6,
            capsize=3,
        )
        for bar, name in zip(bars, order, strict=True):
            if is_baseline[name]:
                bar.set_hatch("//")
        for i, v in enumerate(values):
            if v.size > 1:
                panel.scatter(v, np.full(v.size, positions[i]), s=8, color="black", zorder=3)
        panel.set_yticks(
            positions, labels=order if ax is not None or index % shown_columns == 0 else []
        )
        panel.invert_yaxis()
        better = "lower is better" if metric in _LOWER_IS_BETTER else "higher is better"
        panel.set_title(metric)
        panel.set_xlabel(better)
    if ax is None:
        fig.tight_layout()
    return finish(
        fig, axes, show=show, save=save, return_fig=return_fig, func="compare", key="models"
    )
