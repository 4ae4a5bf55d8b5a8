"""Calibration of predicted probabilities: expected calibration error and temperature scaling."""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from ._probabilities import softmax

#: Search range of ``log(temperature)`` in :func:`fit_temperature` (temperatures 0.01 to 100).
_LOG_T_BOUNDS = (float(np.log(1e-2)), float(np.log(1e2)))


def _check(labels: np.ndarray, scores: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        msg = (
            f"{name} must be (n_cells, n_classes) and labels (n_cells,), got {scores.shape} "
            f"and {labels.shape}."
        )
        raise ValueError(msg)
    if labels.shape[0] == 0:
        msg = "No cells to calibrate on: labels is empty."
        raise ValueError(msg)
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        msg = "labels must be class codes 0..n_classes-1 (integers); drop unlabelled cells first."
        raise ValueError(msg)
    if labels.max() >= scores.shape[1]:
        msg = f"label code {int(labels.max())} is out of range for {scores.shape[1]} classes."
        raise ValueError(msg)
    return labels, scores


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, *, n_bins: int = 15
) -> float:
    """Return the expected calibration error of the top-class probabilities (Guo et al. 2017).

    Cells are put in ``n_bins`` equal-width bins of their confidence (the
    largest probability); the error is the cell-weighted mean over bins of
    ``|accuracy − mean confidence|``. 0 is perfectly calibrated.

    Parameters
    ----------
    labels
        True class codes ``(n,)``.
    probabilities
        Predicted probabilities ``(n, n_classes)`` (rows sum to 1).
    n_bins
        Number of confidence bins.

    Returns
    -------
    The error, in ``[0, 1]``.

    Raises
    ------
    ValueError
        Shapes that do not match, no cells, codes out of range, NaN probabilities.

    Examples
    --------
    >>> import numpy as np
    >>> probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> round(expected_calibration_error(np.array([0, 1, 0, 1]), probabilities), 3)
    0.35
    """
    labels, probabilities = _check(labels, probabilities, "probabilities")
    if np.isnan(probabilities).any():
        msg = "probabilities has NaN values; compute the error on cells with predictions only."
        raise ValueError(msg)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        members = bins == b
        error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float((log_norm - shifted[np.arange(labels.shape[0]), labels]).mean())


def _mean_confidence(logits: np.ndarray, temperature: float) -> float:
    return float(calibrated_probabilities(logits, temperature).max(axis=1).mean())


def _smoothed_temperature(logits: np.ndarray, n_cells: int) -> float:
    """Temperature at which the mean confidence is ``(n + 1) / (n + 2)`` (all ``n`` cells right)."""
    target = (n_cells + 1) / (n_cells + 2)
    low, high = _LOG_T_BOUNDS
    if _mean_confidence(logits, float(np.exp(low))) <= target:
        return float(np.exp(low))
    if _mean_confidence(logits, float(np.exp(high))) >= target:
        return float(np.exp(high))
    root = brentq(lambda log_t: _mean_confidence(logits, float(np.exp(log_t))) - target, low, high)
    return float(np.exp(root))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Return the temperature ``T`` minimising the log-loss of ``softmax(logits / T)`` (Guo et al. 2017).

    One scalar for all classes, so the predicted labels do not change; ``T > 1``
    softens over-confident probabilities. Searched on ``log T`` in
    ``[log 0.01, log 100]``. When every cell is predicted right the log-loss
    has no minimum (it keeps falling as ``T → 0``, promising a certainty that
    a finite validation set cannot show); ``T`` is then the temperature at
    which the mean confidence equals the add-one-smoothed accuracy
    ``(n + 1) / (n + 2)``.

    Parameters
    ----------
    logits
        Uncalibrated logits ``(n, n_classes)`` of held-out labelled cells.
    labels
        Their class codes ``(n,)``.

    Returns
    -------
    The temperature.

    Raises
    ------
    ValueError
        As :func:`expected_calibration_error`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 3, 500)
    >>> log_posterior = 2.0 * (rng.normal(size=(500, 3)) + 2.0 * np.eye(3)[labels])
    >>> over_confident = 5 * log_posterior  # true temperature: 5
    >>> t = fit_temperature(over_confident, labels)
    >>> bool(4 < t < 6)
    True
    >>> before = expected_calibration_error(labels, softmax(over_confident))
    >>> bool(expected_calibration_error(labels, softmax(over_confident / t)) < before)
    True
    >>> separable = 3.0 * np.eye(3)[labels]  # all 500 right: mean confidence 501 / 502
    >>> t = fit_temperature(separable, labels)
    >>> round(float(softmax(separable / t).max(axis=1).mean()), 4)
    0.998
    """
    labels, logits = _check(labels, logits, "logits")
    finite = np.where(np.isfinite(logits), logits, np.finfo(np.float32).min)
    if (finite.argmax(axis=1) == labels).all():
        return _smoothed_temperature(finite, labels.shape[0])
    result = minimize_scalar(
        lambda log_t: _nll(finite, labels, float(np.exp(log_t))),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
    )
    return float(np.exp(result.x))


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)`` as float32.

    Examples
    --------
    >>> calibrated_probabilities(np.array([[2.0, 0.0]]), 2.0).round(3).tolist()
    [[0.731, 0.269]]
    """
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature))
