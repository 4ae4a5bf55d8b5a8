"""Classification metrics for comparing annotation strategies (AUROC from probabilities)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

#: Metric names, in the order of the comparison table.
METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "auroc_ovr")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, returned as float32.

    Examples
    --------
    >>> softmax(np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
    """
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def auroc_ovr(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over the classes that have positives and negatives in ``y_true``.

    Equal to scikit-learn's ``roc_auc_score(..., multi_class="ovr")`` when every
    class is present; unlike it, it still gives a value when a split lacks a class.
    ``NaN`` when no class can be scored.

    Examples
    --------
    >>> y = np.array([0, 1, 1, 0])
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.6, 0.4]])
    >>> auroc_ovr(y, p)
    1.0
    """
    y_true = np.asarray(y_true)
    scores = []
    for label in range(probabilities.shape[1]):
        positive = y_true == label
        if positive.any() and not positive.all():
            scores.append(roc_auc_score(positive, probabilities[:, label]))
    return float(np.mean(scores)) if scores else float("nan")


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Macro-F1, accuracy, balanced accuracy and macro OvR AUROC of predicted probabilities.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> classification_metrics(np.array([0, 1, 1]), p)["accuracy"]
    0.6666666666666666
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    if y_true.size == 0:
        return dict.fromkeys(METRICS, float("nan"))
    y_pred = probabilities.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return {
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "auroc_ovr": auroc_ovr(y_true, probabilities),
        }
