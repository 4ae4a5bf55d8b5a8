"""Per-minibatch feature transforms: gene selection, normalisation, log1p and scaling.

The transform is applied to a handful of rows at a time, straight from the
source matrix: sparse rows are gathered with one vectorised indexing operation,
normalised and log-transformed on their stored values only, and written into a
dense float32 block of just the selected features. The source is never copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .matrix import SourceMatrix, is_backed, read_row_block

#: Upper bound on the elements of one dense block built while fitting (64 MiB of float32).
_FIT_BLOCK_ELEMENTS = 2**24


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
        row_ids, cols, values = self._gather(block, rows)
        indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(row_ids, minlength=rows.shape[0]), out=indptr[1:])
        return sp.csr_matrix((values, cols, indptr), shape=(rows.shape[0], block.shape[1]))

    def _gather(self, block: sp.csr_matrix, rows: np.ndarray):
        indptr = block.indptr
        starts = indptr[rows].astype(np.int64)
        lengths = indptr[rows + 1].astype(np.int64) - starts
        total = int(lengths.sum())
        offsets = np.cumsum(lengths) - lengths
        flat = np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)
        values = block.data[flat].astype(np.float32)
        row_ids = np.repeat(np.arange(rows.shape[0], dtype=np.int64), lengths)
        if self.normalize:
            totals = np.bincount(row_ids, weights=values, minlength=rows.shape[0])
            values *= self._size_factors(totals)[row_ids]
        if self.log1p:
            np.log1p(values, out=values)
        return row_ids, block.indices[flat], values

    def _size_factors(self, totals: np.ndarray) -> np.ndarray:
        factors = np.zeros(totals.shape[0], dtype=np.float32)
        positive = totals > 0
        factors[positive] = self.target_sum / totals[positive]
        return factors

    def _sparse_rows(self, block: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        row_ids, cols, values = self._gather(block, rows)
        out = np.zeros((rows.shape[0], self.n_features), dtype=np.float32)
        if self.columns is not None:
            position = self._column_positions()[cols]
            keep = position >= 0
            row_ids, cols, values = row_ids[keep], position[keep], values[keep]
        out[row_ids, cols] = values
        return out

    def _column_positions(self) -> np.ndarray:
        positions = np.full(self.n_source_features, -1, dtype=np.int64)
        positions[self.columns] = np.arange(self.columns.shape[0])
        return positions

    def _dense_values(self, values: np.ndarray) -> np.ndarray:
        if self.normalize:
            values *= self._size_factors(values.sum(axis=1, dtype=np.float64))[:, None]
        if self.log1p:
            np.log1p(values, out=values)
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
