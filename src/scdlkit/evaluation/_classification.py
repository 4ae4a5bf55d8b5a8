"""Classification metrics: how well predicted labels match the true ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import format_names
from ._checks import as_labels


def _auroc_ovr(y_true: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    """Macro-averaged one-vs-rest AUROC over the classes with positive and negative cells."""
    from sklearn.metrics import roc_auc_score

    scores = [
        roc_auc_score(y_true == name, probabilities[:, column])
        for column, name in enumerate(classes)
        if 0 < np.sum(y_true == name) < y_true.shape[0]
    ]
    return float(np.mean(scores)) if scores else float("nan")


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    *,
    probabilities: Any = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score predicted labels against true labels.

    Parameters
    ----------
    y_true
        True label of each cell.
    y_pred
        Predicted label of each cell.
    probabilities
        Optional predicted class probabilities (cells x classes), columns in
        ``classes`` order; enables ``auroc_ovr``.
    classes
        Class order of the per-class results, the confusion matrix and the
        ``probabilities`` columns. Defaults to the sorted union of the labels
        (required with ``probabilities``).

    Returns
    -------
    Dictionary with

    ``accuracy``, ``balanced_accuracy``
        :func:`~sklearn.metrics.accuracy_score`, :func:`~sklearn.metrics.balanced_accuracy_score`.
    ``f1_macro``, ``f1_weighted``
        :func:`~sklearn.metrics.f1_score` averaged over the classes present in
        ``y_true`` or ``y_pred`` (unweighted, or weighted by support).
    ``auroc_ovr``
        With ``probabilities``: mean over classes of the one-vs-rest
        :func:`~sklearn.metrics.roc_auc_score` (classes absent from ``y_true`` skipped).
    ``n_cells``
        Number of cells.
    ``classes``
        Class names (array of str).
    ``per_class``
        Dict of arrays aligned with ``classes``: ``precision``, ``recall``, ``f1``,
        ``support`` (:func:`~sklearn.metrics.precision_recall_fscore_support`;
        0 where undefined).
    ``confusion_matrix``
        Integer array, rows true and columns predicted classes
        (:func:`~sklearn.metrics.confusion_matrix`).

    Raises
    ------
    ValueError
        Different lengths, missing labels, or ``probabilities`` whose shape does
        not match the cells and ``classes``.

    Examples
    --------
    >>> metrics = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    >>> metrics["accuracy"], metrics["balanced_accuracy"]
    (0.75, 0.75)
    >>> metrics["confusion_matrix"].tolist()
    [[1, 1], [0, 2]]
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    y_true = as_labels(
        y_true, name="y_true", n_cells=len(np.ravel(np.asarray(y_true, dtype=object)))
    )
    y_pred = as_labels(y_pred, name="y_pred", n_cells=y_true.shape[0])
    if y_true.shape[0] == 0:
        msg = "y_true is empty; there is nothing to evaluate."
        raise ValueError(msg)
    if classes is None:
        if probabilities is not None:
            msg = "Pass classes= (the column order of probabilities) together with probabilities."
            raise ValueError(msg)
        class_array = np.unique(np.concatenate([y_true, y_pred]))
    else:
        class_array = np.asarray([str(name) for name in classes], dtype=object).astype(str)
        unknown = sorted((set(y_true) | set(y_pred)) - set(class_array))
        if unknown:
            msg = (
                f"Labels {format_names(unknown)} are not in classes ({format_names(class_array)}); "
                "add them to classes=."
            )
            raise ValueError(msg)
    present = [name for name in class_array if name in set(y_true) | set(y_pred)]
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "f1_macro": float(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "f1_weighted": float(
            f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)
        ),
    }
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != (y_true.shape[0], class_array.shape[0]):
            msg = (
                f"probabilities has shape {probabilities.shape}; expected "
                f"({y_true.shape[0]}, {class_array.shape[0]}) (cells x classes)."
            )
            raise ValueError(msg)
        metrics["auroc_ovr"] = _auroc_ovr(y_true, probabilities, class_array)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(class_array), zero_division=0
    )
    metrics["n_cells"] = int(y_true.shape[0])
    metrics["classes"] = class_array.astype(object)
    metrics["per_class"] = {
        "precision": precision.astype(np.float64),
        "recall": recall.astype(np.float64),
        "f1": f1.astype(np.float64),
        "support": support.astype(np.int64),
    }
    metrics["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=list(class_array)).astype(
        np.int64
    )
    return metrics
