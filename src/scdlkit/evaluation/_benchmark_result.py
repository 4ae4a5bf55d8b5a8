"""``BenchmarkResult``: the scDLKit 0.1.6 container of a model comparison, kept for old code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ._tables import COMPARISON_COLUMNS


@dataclass
class BenchmarkResult:
    """A model comparison as scDLKit 0.1.6 returned it: one row per model, one column per metric.

    :func:`scdlkit.compare_models` returns a tidy table (one row per model and
    metric), which :func:`scdlkit.pl.compare` draws. Code written for scDLKit
    0.1.6 reads ``result.metrics_frame`` instead; build that shape with
    :meth:`from_comparison`.

    Attributes
    ----------
    metrics_frame
        One row per compared model: ``model``, ``baseline`` (bool),
        ``runtime_sec`` (seconds to fit), ``parameters`` and one column per
        metric, in the order the models were compared.
    runners
        Fitted :class:`~scdlkit.TaskRunner` objects by model name, when the
        caller kept them (:func:`scdlkit.compare_models` does not).
    output_paths
        Files written for the comparison (e.g. ``{"metrics_csv": ...}``), if any.

    Examples
    --------
    >>> import pandas as pd
    >>> tidy = pd.DataFrame(
    ...     {
    ...         "model": ["vae", "vae", "PCA-50 (baseline)", "PCA-50 (baseline)"],
    ...         "baseline": [False, False, True, True],
    ...         "metric": ["mse", "knn_accuracy", "mse", "knn_accuracy"],
    ...         "value": [0.5, 0.8, 0.6, 0.7],
    ...         "seconds": [3.0, 3.0, 0.1, 0.1],
    ...         "parameters": [1000, 1000, 50, 50],
    ...     }
    ... )
    >>> result = BenchmarkResult.from_comparison(tidy)
    >>> result.metrics_frame[["model", "runtime_sec", "mse"]].to_dict("list")
    {'model': ['vae', 'PCA-50 (baseline)'], 'runtime_sec': [3.0, 0.1], 'mse': [0.5, 0.6]}
    """

    metrics_frame: pd.DataFrame
    runners: dict[str, Any] = field(default_factory=dict)
    output_paths: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_comparison(
        cls,
        frame: pd.DataFrame,
        *,
        runners: Mapping[str, Any] | None = None,
        output_paths: Mapping[str, str] | None = None,
    ) -> BenchmarkResult:
        """Build the result from the tidy table of :func:`scdlkit.compare_models`.

        Parameters
        ----------
        frame
            The table :func:`scdlkit.compare_models` returned, or any comparison
            table of that shape (columns ``model``, ``baseline``, ``metric``,
            ``value``, ``seconds``, ``parameters``:
            ``scdlkit.evaluation.COMPARISON_COLUMNS``).
        runners, output_paths
            Stored as given (see the attributes).

        Returns
        -------
        The result, with :attr:`metrics_frame` one row per model.

        Raises
        ------
        ValueError
            ``frame`` lacks one of the columns above (the message names them),
            or lists a metric twice for one model.
        """
        missing = [column for column in COMPARISON_COLUMNS if column not in frame.columns]
        if missing:
            msg = (
                f"BenchmarkResult.from_comparison needs the table of scdlkit.compare_models; "
                f"this one lacks the column(s) {', '.join(map(repr, missing))}."
            )
            raise ValueError(msg)
        repeated = frame.duplicated(["model", "metric"])
        if repeated.any():
            first = frame.loc[repeated, ["model", "metric"]].iloc[0]
            msg = (
                f"The table lists metric {first['metric']!r} of model {first['model']!r} more "
                "than once; pass one comparison (one row per model and metric)."
            )
            raise ValueError(msg)
        order = pd.unique(frame["model"])
        models = (
            frame.groupby("model", sort=False)[["baseline", "seconds", "parameters"]]
            .first()
            .rename(columns={"seconds": "runtime_sec"})
        )
        metrics = frame.pivot(index="model", columns="metric", values="value")
        metrics = metrics[pd.unique(frame["metric"])]
        wide = models.join(metrics).reindex(order)
        wide.columns.name = None
        return cls(
            metrics_frame=wide.reset_index(),
            runners=dict(runners or {}),
            output_paths=dict(output_paths or {}),
        )
