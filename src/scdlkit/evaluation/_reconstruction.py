"""Reconstruction metrics: how close a model's output is to its input."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import mean_absolute_error, mean_squared_error

from ._checks import as_matrix


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's r of every row of ``a`` with the same row of ``b`` (NaN for constant rows)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / denominator
    r[denominator == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def _mean_correlations(observed: np.ndarray, reconstructed: np.ndarray) -> dict[str, float]:
    out = {}
    for axis_name, a, b in (
        ("cell", observed, reconstructed),
        ("gene", observed.T, reconstructed.T),
    ):
        pearson = _rowwise_pearson(a, b)
        spearman = _rowwise_pearson(rankdata(a, axis=1), rankdata(b, axis=1))
        for name, values in (("pearson", pearson), ("spearman", spearman)):
            finite = values[np.isfinite(values)]
            out[f"{name}_{axis_name}"] = float(finite.mean()) if finite.size else float("nan")
    return out


def reconstruction_metrics(observed: Any, reconstructed: Any) -> dict[str, Any]:
    """Compare a reconstruction with the values it reconstructs.

    Both matrices are in the model's input space (after its preprocessing),
    cells as rows and the same features as columns.

    Parameters
    ----------
    observed
        The model input (dense or sparse), cells x features.
    reconstructed
        The model's reconstruction of it, same shape.

    Returns
    -------
    Dictionary of floats:

    ``mse``, ``mae``
        Mean squared / absolute error over every value
        (:func:`sklearn.metrics.mean_squared_error`, :func:`~sklearn.metrics.mean_absolute_error`).
    ``pearson_cell``, ``spearman_cell``
        Mean over cells of the correlation across features of each cell's
        observed and reconstructed profile.
    ``pearson_gene``, ``spearman_gene``
        Mean over features of the correlation across cells.
    ``n_cells``
        Number of cells compared.

    Cells or features that are constant in either matrix have no correlation
    and are left out of the means (the mean is NaN when all are).

    Raises
    ------
    ValueError
        Shapes that differ, an empty matrix, or NaN/infinite values.

    Examples
    --------
    >>> import numpy as np
    >>> observed = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0]])
    >>> metrics = reconstruction_metrics(observed, observed + 0.5)
    >>> metrics["mse"], metrics["mae"], metrics["pearson_cell"]
    (0.25, 0.5, 1.0)
    """
    observed = as_matrix(observed, name="observed")
    reconstructed = as_matrix(reconstructed, name="reconstructed")
    if observed.shape != reconstructed.shape:
        msg = (
            f"observed has shape {observed.shape} but reconstructed has shape "
            f"{reconstructed.shape}; pass the same cells and features in the same order."
        )
        raise ValueError(msg)
    metrics: dict[str, Any] = {
        "mse": float(mean_squared_error(observed, reconstructed)),
        "mae": float(mean_absolute_error(observed, reconstructed)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics.update(_mean_correlations(observed, reconstructed))
    metrics["n_cells"] = int(observed.shape[0])
    return metrics
