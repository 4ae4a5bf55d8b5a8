"""Logits → probabilities → labels: the one softmax of scdlkit."""

from __future__ import annotations

import numpy as np


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


def predicted_codes(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class code and confidence of each row; ``-1`` and NaN for rows without a result (NaN).

    Examples
    --------
    >>> codes, confidence = predicted_codes(np.array([[0.2, 0.8], [np.nan, np.nan]]))
    >>> codes.tolist(), confidence.round(2).tolist()
    ([1, -1], [0.8, nan])
    """
    has_result = ~np.isnan(probabilities).any(axis=1)
    filled = np.nan_to_num(probabilities, nan=-np.inf)
    codes = np.where(has_result, filled.argmax(axis=1), -1)
    confidence = np.where(has_result, filled.max(axis=1), np.nan)
    return codes, confidence
