"""Metric dictionaries as tables."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Number
from typing import Any

import numpy as np
import pandas as pd


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Return the single-number entries of a metrics dictionary (no ``n_cells``), as floats."""
    return {
        str(name): float(value)
        for name, value in metrics.items()
        if isinstance(value, Number) and not isinstance(value, bool) and name != "n_cells"
    }


#: Columns of a model comparison table (:func:`scdlkit.compare_models`, the annotation
#: strategies), the long format :func:`scdlkit.pl.compare` draws.
COMPARISON_COLUMNS = ("model", "baseline", "metric", "value", "seconds", "parameters")


def comparison_rows(
    model: str,
    metrics: Mapping[str, Any],
    *,
    baseline: bool = False,
    seconds: float = float("nan"),
    parameters: int | None = None,
) -> list[dict[str, Any]]:
    """Return the rows of one model in a comparison table, one per single-number metric.

    Build a table with ``pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))``;
    :func:`scdlkit.pl.compare` draws it.

    Parameters
    ----------
    model
        Row label of the model (or baseline, or strategy).
    metrics
        Metric name → value; only single numbers are kept (not ``n_cells``).
    baseline
        Whether the row is a reference method (drawn grey and hatched).
    seconds
        Time to fit the model, not to score it.
    parameters
        Trainable parameters (or fitted coefficients of a baseline).

    Examples
    --------
    >>> rows = comparison_rows(
    ...     "vae", {"knn_accuracy": 0.9, "n_cells": 10}, seconds=2.0, parameters=5
    ... )
    >>> rows == [
    ...     {
    ...         "model": "vae",
    ...         "baseline": False,
    ...         "metric": "knn_accuracy",
    ...         "value": 0.9,
    ...         "seconds": 2.0,
    ...         "parameters": 5,
    ...     }
    ... ]
    True
    """
    return [
        {
            "model": model,
            "baseline": bool(baseline),
            "metric": name,
            "value": value,
            "seconds": float(seconds),
            "parameters": parameters,
        }
        for name, value in scalar_metrics(metrics).items()
    ]


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Turn a metrics dictionary into a tidy table with columns ``metric`` and ``value``.

    Only the single-number metrics are kept (per-class results and the
    confusion matrix are left out; see :func:`per_class_table`).

    Examples
    --------
    >>> from scdlkit.evaluation import classification_metrics
    >>> table = metrics_table(classification_metrics(["a", "b"], ["a", "a"]))
    >>> table["metric"].tolist()
    ['accuracy', 'balanced_accuracy', 'f1_macro', 'f1_weighted']
    """
    values = scalar_metrics(metrics)
    return pd.DataFrame({"metric": list(values), "value": list(values.values())})


def per_class_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support of :func:`classification_metrics`, one row per class."""
    per_class = metrics["per_class"]
    frame = pd.DataFrame({name: np.asarray(values) for name, values in per_class.items()})
    frame.index = pd.Index([str(name) for name in metrics["classes"]], name="class")
    return frame


def confusion_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Return the confusion matrix of :func:`classification_metrics` with class names.

    Rows are true, columns predicted classes.
    """
    classes = [str(name) for name in metrics["classes"]]
    return pd.DataFrame(
        np.asarray(metrics["confusion_matrix"]),
        index=pd.Index(classes, name="true"),
        columns=pd.Index(classes, name="predicted"),
    )
