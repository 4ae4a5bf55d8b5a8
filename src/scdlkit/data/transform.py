"""Per-minibatch feature transforms: gene selection, normalisation, log1p and scaling.

The transform is applied to a handful of rows at a time, straight from the
source matrix: sparse rows are gathered with one vectorised indexing operation,
normalised and log-transformed on their stored values only, and written into a
dense float32 block of just the selected features. The source is never copied.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ._kernels import KERNEL_DTYPES, gather_csr_rows, scatter_add
from .matrix import SourceMatrix, is_backed, read_row_block

#: Upper bound on the elements of one dense block built while fitting (64 MiB of float32).
_FIT_BLOCK_ELEMENTS = 2**24


_NO_POSITIONS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class FeatureTransform:
    """Turns rows of a source matrix into model input.

    Parameters
    ----------
    n_source_features
        Number of columns of the source matrix.
    columns
        Source column of each model feature, in model order; ``None`` keeps all
        columns in their order.
    normalize
        Scale every cell to ``target_sum`` total counts (over all source columns,
        before gene selection, like :func:`scanpy.pp.normalize_total`).
    target_sum
        Total per cell after normalisation.
    log1p
        Apply ``log(1 + x)``.
    mean, std
        Per-feature statistics for z-scoring (fitted on the training split).
    max_value
        Clip z-scores to ``[-max_value, max_value]``; ``None`` does not clip.
    """

    n_source_features: int
    columns: np.ndarray | None = None
    normalize: bool = False
    target_sum: float = 1e4
    log1p: bool = False
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    max_value: float | None = None

    @property
    def n_features(self) -> int:
        """Number of model input features."""
        return self.n_source_features if self.columns is None else int(self.columns.shape[0])

    def transform_rows(self, block: np.ndarray | sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        """Model input for ``rows`` of an in-memory ``block``, as a dense float32 array."""
        if sp.issparse(block):
            out = self._sparse_rows(block, rows)
        else:
            out = self._dense_rows(block, rows)
        if self.mean is not None:
            out -= self.mean
            out /= self.std
            if self.max_value is not None:
                np.clip(out, -self.max_value, self.max_value, out=out)
        return out

    def sparse_rows(self, block: sp.csr_matrix | np.ndarray, rows: np.ndarray) -> sp.csr_matrix:
        """Normalised/log-transformed ``rows`` over all source columns, kept sparse (no scaling)."""
        if not sp.issparse(block):
            return sp.csr_matrix(self._dense_values(np.asarray(block[rows], dtype=np.float32)))
        lengths, cols, values = self._gather(block, rows, select=False)
        indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        return sp.csr_matrix((values, cols, indptr), shape=(rows.shape[0], block.shape[1]))

    def _gather(self, block: sp.csr_matrix, rows: np.ndarray, *, select: bool):
        """Return the stored entries of ``rows`` as ``(entries per row, column, float32 value)``.

        One vectorised row gather (scipy's fancy row indexing, in C++), then
        normalisation on the stored values. With ``select=True`` the entries of
        unselected columns are dropped *before* log1p, and columns become model
        feature positions.
        """
        sub = block[rows]
        if not sp.issparse(sub) or sub.format != "csr":
            sub = sp.csr_matrix(sub)
        indptr = sub.indptr
        lengths = np.diff(indptr)
        cols = sub.indices
        values = sub.data.astype(np.float32, copy=False)  # fresh from the gather: safe in place
        if self.normalize:
            totals = np.zeros(rows.shape[0], dtype=np.float64)
            filled = lengths > 0
            if values.size:
                # integer counts: float32 sums are exact (below 2**24 per cell) and 5x faster
                exact = sub.data.dtype.kind in "biu"
                summed = values if exact else sub.data
                dtype = np.float32 if exact else np.float64
                totals[filled] = np.add.reduceat(summed, indptr[:-1][filled], dtype=dtype)
            values *= np.repeat(self._size_factors(totals), lengths)
        if select and self.columns is not None:
            position = self.column_positions[cols]
            keep = position >= 0
            lengths = np.bincount(
                np.repeat(np.arange(rows.shape[0]), lengths)[keep], minlength=rows.shape[0]
            )
            cols, values = position[keep], values[keep]
        if self.log1p and values.size:
            torch.from_numpy(values).log1p_()  # in place; SIMD, several times faster than numpy
        return lengths, cols, values

    def _size_factors(self, totals: np.ndarray) -> np.ndarray:
        factors = np.zeros(totals.shape[0], dtype=np.float32)
        positive = totals > 0
        factors[positive] = self.target_sum / totals[positive]
        return factors

    def _sparse_rows(self, block: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        data = block.data.view(np.uint8) if block.data.dtype == np.bool_ else block.data
        if data.dtype in KERNEL_DTYPES:
            return self._kernel_rows(
                block.indptr, block.indices, data, np.asarray(rows, dtype=np.int64)
            )
        lengths, cols, values = self._gather(block, rows, select=True)
        n_features = self.n_features
        out = np.zeros((rows.shape[0], n_features), dtype=np.float32)
        flat = np.repeat(np.arange(0, rows.shape[0] * n_features, n_features), lengths)
        flat += cols
        out.ravel()[flat] = values
        return out

    def _kernel_rows(
        self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        """Compiled path: gather + normalise (numba), log1p (torch, in place), scatter (numba)."""
        n_features = self.n_features
        capacity = int((indptr[rows + 1] - indptr[rows]).sum())
        values = np.empty(capacity, dtype=np.float32)
        flat = np.empty(capacity, dtype=np.int64)
        select = self.columns is not None
        positions = self.column_positions if select else _NO_POSITIONS
        n = gather_csr_rows(
            indptr, indices, data, rows, positions, select, self.normalize, float(self.target_sum),
            n_features, values, flat,
        )  # fmt: skip
        if self.log1p:
            torch.from_numpy(values[:n]).log1p_()
        out = np.zeros(rows.shape[0] * n_features, dtype=np.float32)
        if scatter_add(flat, values, n, out) and self.log1p:
            # duplicate entries: sum them first, then take log1p (log1p(0) stays 0)
            gather_csr_rows(
                indptr, indices, data, rows, positions, select, self.normalize, float(self.target_sum),
                n_features, values, flat,
            )  # fmt: skip
            out[:] = 0
            scatter_add(flat, values, n, out)
            torch.from_numpy(out).log1p_()
        return out.reshape(rows.shape[0], n_features)

    @functools.cached_property
    def column_positions(self) -> np.ndarray:
        """Model feature position of every source column (``-1`` when not selected)."""
        positions = np.full(self.n_source_features, -1, dtype=np.int64)
        positions[self.columns] = np.arange(self.columns.shape[0])
        return positions

    def _dense_values(self, values: np.ndarray) -> np.ndarray:
        if self.normalize:
            values *= self._size_factors(values.sum(axis=1, dtype=np.float64))[:, None]
        if self.log1p:
            torch.from_numpy(values).log1p_()
        return values

    def _dense_rows(self, block: np.ndarray, rows: np.ndarray) -> np.ndarray:
        values = np.array(block[rows], dtype=np.float32)
        values = self._dense_values(values)
        if self.columns is not None:
            values = np.ascontiguousarray(values[:, self.columns])
        return values


def iter_selected_rows(
    matrix: SourceMatrix, rows: np.ndarray, *, block_rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray | sp.csr_matrix, np.ndarray]]:
    """Yield ``(selected_rows, block, local_rows)`` covering ``rows`` (ascending) in chunks.

    ``block`` is in memory and ``block[local_rows]`` are ``selected_rows`` of the
    source. In-memory matrices are not copied; a backed matrix is read as one
    contiguous slice per chunk.
    """
    for start in range(0, rows.shape[0], block_rows):
        chunk = rows[start : start + block_rows]
        if is_backed(matrix):
            low = int(chunk[0])
            yield chunk, read_row_block(matrix, low, int(chunk[-1]) + 1), chunk - low
        else:
            yield chunk, matrix, chunk


def fit_block_rows(n_features: int) -> int:
    """Rows per block so that a dense block stays below 64 MiB."""
    return max(1, min(8192, _FIT_BLOCK_ELEMENTS // max(1, n_features)))


def fit_scaling(
    transform: FeatureTransform, matrix: SourceMatrix, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (``ddof=1``) of ``transform`` over ``rows``.

    Streams over the rows in blocks, so memory stays bounded. Features with zero
    variance get a standard deviation of 1 (they become 0 after centring).
    """
    total = np.zeros(transform.n_features, dtype=np.float64)
    total_sq = np.zeros(transform.n_features, dtype=np.float64)
    block_rows = fit_block_rows(transform.n_features)
    for _, block, local in iter_selected_rows(matrix, np.sort(rows), block_rows=block_rows):
        values = transform.transform_rows(block, local).astype(np.float64)
        total += values.sum(axis=0)
        total_sq += np.square(values).sum(axis=0)
    n = rows.shape[0]
    mean = total / n
    variance = np.maximum(total_sq - n * mean**2, 0.0) / max(n - 1, 1)
    std = np.sqrt(variance)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
