"""Input checks shared by the metric functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp


def as_matrix(values: Any, *, name: str) -> np.ndarray:
    """``values`` as a dense 2-D float64 array of finite numbers (cells x features)."""
    if sp.issparse(values):
        values = values.toarray()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        msg = f"{name} must be a 2-D array (cells x features), got shape {array.shape}."
        raise ValueError(msg)
    if array.shape[0] == 0:
        msg = f"{name} has no cells (shape {array.shape}); there is nothing to evaluate."
        raise ValueError(msg)
    if not np.isfinite(array).all():
        n_bad = int((~np.isfinite(array)).any(axis=1).sum())
        msg = f"{name} has NaN or infinite values in {n_bad} cells; drop those cells before evaluating."
        raise ValueError(msg)
    return array


def as_labels(values: Any, *, name: str, n_cells: int) -> np.ndarray:
    """``values`` as a 1-D array of ``n_cells`` labels without missing values (as strings)."""
    array = np.asarray(values, dtype=object).ravel()
    if array.shape[0] != n_cells:
        msg = f"{name} has {array.shape[0]} entries but there are {n_cells} cells."
        raise ValueError(msg)
    missing = np.array(
        [item is None or (isinstance(item, float) and np.isnan(item)) for item in array]
    )
    if missing.any():
        msg = f"{name} has {int(missing.sum())} missing values; drop those cells or fill them in."
        raise ValueError(msg)
    return array.astype(str)
