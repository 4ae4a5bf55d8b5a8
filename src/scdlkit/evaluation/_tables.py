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
