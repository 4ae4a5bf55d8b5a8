"""The strategy comparison of an annotation run: per-split metrics, ranking, and the long format.

The metrics are those of :func:`scdlkit.evaluation.classification_metrics`
(the one implementation); this module only names the columns of
:attr:`~scdlkit.foundation.AnnotationRunner.comparison_` (one wide row per
strategy) and converts that table to the long format of
:func:`scdlkit.compare_models`, which :func:`scdlkit.pl.compare` draws.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation._classification import classification_metrics
from ..evaluation._probabilities import predicted_codes
from ..evaluation._tables import COMPARISON_COLUMNS as LONG_COLUMNS
from ..evaluation._tables import comparison_rows

#: Comparison-table metric → its name in :func:`scdlkit.evaluation.classification_metrics`.
#: The table keeps its published column names (``val_macro_f1``, ...); the long
#: format uses the evaluation names, as :func:`scdlkit.compare_models` does.
METRIC_NAMES = {
    "macro_f1": "f1_macro",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
    "auroc_ovr": "auroc_ovr",
}
#: Metric names, in the order of the comparison table.
METRICS = tuple(METRIC_NAMES)

#: Columns of :attr:`AnnotationRunner.comparison_`.
COMPARISON_COLUMNS = (
    "strategy",
    *(f"val_{m}" for m in METRICS),
    *(f"test_{m}" for m in METRICS),
    "trainable_parameters",
    "seconds",
    "epochs_run",
    "best_epoch",
    "rank",
)

#: Ranking keys (best first) and their directions.
_RANK_KEYS = (
    ("val_macro_f1", False),
    ("val_balanced_accuracy", False),
    ("val_accuracy", False),
    ("trainable_parameters", True),
    ("seconds", True),
)


def split_metrics(codes: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Macro-F1, accuracy, balanced accuracy and macro one-vs-rest AUROC of one split.

    Classes absent from the split are skipped by the AUROC (it stays defined);
    an empty split gives ``NaN`` everywhere.

    Parameters
    ----------
    codes
        True class code of each cell.
    probabilities
        Predicted class probabilities ``(n_cells, n_classes)``, columns in code order.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    >>> metrics = split_metrics(np.array([0, 1, 1]), p)
    >>> round(metrics["accuracy"], 4), metrics["auroc_ovr"]
    (0.6667, 1.0)
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.size == 0:
        return dict.fromkeys(METRICS, float("nan"))
    classes = [str(code) for code in range(probabilities.shape[1])]
    predicted, _ = predicted_codes(probabilities)
    metrics = classification_metrics(codes, predicted, probabilities=probabilities, classes=classes)
    return {name: float(metrics[source]) for name, source in METRIC_NAMES.items()}


def rank_strategies(table: pd.DataFrame) -> pd.DataFrame:
    """Add the ``rank`` column (1 = best) and order the columns as :data:`COMPARISON_COLUMNS`.

    The best strategy has the highest validation macro-F1; ties go to balanced
    accuracy, accuracy, fewer trainable parameters, less time, then the listed order.
    """
    keys = [key for key, _ in _RANK_KEYS]
    ascending = [direction for _, direction in _RANK_KEYS]
    ordered = table.assign(_order=np.arange(len(table))).sort_values(
        [*keys, "_order"], ascending=[*ascending, True], na_position="last", kind="stable"
    )
    table = table.copy()
    table.loc[ordered.index, "rank"] = np.arange(1, len(table) + 1)
    table["rank"] = table["rank"].astype(int)
    return table[list(COMPARISON_COLUMNS)]


def strategy_metrics(table: pd.DataFrame | None, strategy: str) -> dict[str, float]:
    """Return the numbers of ``strategy``'s row of a comparison table (empty without one).

    Examples
    --------
    >>> table = pd.DataFrame({"strategy": ["head"], "val_accuracy": [0.5], "rank": [1]})
    >>> strategy_metrics(table, "head")
    {'val_accuracy': 0.5, 'rank': 1.0}
    """
    if table is None or strategy not in set(table["strategy"]):
        return {}
    row = table.set_index("strategy").loc[strategy]
    return {str(k): float(v) for k, v in row.items() if isinstance(v, int | float | np.number)}


def comparison_long(table: pd.DataFrame, *, split: str = "test") -> pd.DataFrame:
    """Turn a comparison table into the long format of :func:`scdlkit.compare_models`.

    Parameters
    ----------
    table
        :attr:`AnnotationRunner.comparison_`.
    split
        ``"test"`` or ``"val"``: whose metrics to report.

    Returns
    -------
    One row per strategy and metric with columns ``model`` (the strategy),
    ``baseline`` (``False``), ``metric`` (``f1_macro``, ``accuracy``,
    ``balanced_accuracy``, ``auroc_ovr``), ``value``, ``seconds`` and
    ``parameters`` (trainable parameters); ready for :func:`scdlkit.pl.compare`
    and for concatenation with a :func:`scdlkit.compare_models` table.

    Raises
    ------
    ValueError
        ``split`` is neither ``"test"`` nor ``"val"``.

    Examples
    --------
    >>> table = pd.DataFrame(
    ...     {"strategy": ["head"], "test_macro_f1": [0.8], "test_accuracy": [0.9],
    ...      "test_balanced_accuracy": [0.85], "test_auroc_ovr": [0.95],
    ...      "trainable_parameters": [68], "seconds": [1.5]}
    ... )  # fmt: skip
    >>> comparison_long(table)[["model", "metric", "value"]].values.tolist()[:2]
    [['head', 'f1_macro', 0.8], ['head', 'accuracy', 0.9]]
    """
    if split not in ("test", "val"):
        msg = f"split must be 'test' or 'val', got {split!r}."
        raise ValueError(msg)
    rows = [
        item
        for _, row in table.iterrows()
        for item in comparison_rows(
            str(row["strategy"]),
            {name: float(row[f"{split}_{column}"]) for column, name in METRIC_NAMES.items()},
            seconds=float(row["seconds"]),
            parameters=int(row["trainable_parameters"]),
        )
    ]
    return pd.DataFrame(rows, columns=list(LONG_COLUMNS))


def write_comparison(
    folder: str | os.PathLike, table: pd.DataFrame, histories: Mapping[str, pd.DataFrame]
) -> None:
    """Write ``comparison.csv`` and one ``history_<strategy>.csv`` per trained strategy into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "comparison.csv", index=False)
    for name, history in histories.items():
        if not history.empty:
            history.to_csv(folder / f"history_{name}.csv", index=False)
