"""The expression matrices scdlkit can read, and block-wise access to them.

A *source matrix* is one of: a dense :class:`numpy.ndarray`, an in-memory CSR
matrix (``scipy.sparse.csr_matrix``/``csr_array``), or a backed matrix of an
AnnData opened with ``backed="r"`` (an :class:`h5py.Dataset` for dense data or an
:class:`anndata.abc.CSRDataset`). Everything downstream reads rows through the
helpers here, so the whole matrix is never densified or copied.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

import h5py
import numpy as np
import scipy.sparse as sp
from anndata.abc import CSCDataset, CSRDataset

SourceMatrix: TypeAlias = np.ndarray | sp.csr_matrix | sp.csr_array | h5py.Dataset | CSRDataset
"""Matrix types every loader accepts."""

#: Rows read at once when a whole backed/large matrix is scanned.
SCAN_BLOCK_ROWS = 8192


def is_backed(matrix: SourceMatrix) -> bool:
    """Whether ``matrix`` lives on disk (a backed AnnData's ``X``)."""
    return isinstance(matrix, h5py.Dataset | CSRDataset)


def is_sparse(matrix: SourceMatrix) -> bool:
    """Whether rows of ``matrix`` come back as CSR."""
    return isinstance(matrix, CSRDataset) or sp.issparse(matrix)


def as_source_matrix(matrix: object, *, source: str) -> SourceMatrix:
    """Return ``matrix`` in a form the loaders read, converting only when unavoidable.

    Parameters
    ----------
    matrix
        The matrix found in the AnnData (``X``, a layer or ``raw.X``).
    source
        Where it came from, for messages (for example ``"adata.layers['counts']"``).

    Returns
    -------
    The same object when it is already dense, CSR or backed; CSC and other sparse
    formats are converted once to CSR with a :class:`UserWarning`.

    Raises
    ------
    TypeError
        If the matrix is not numeric or not a matrix type scdlkit reads.
    """
    if isinstance(matrix, np.matrix):
        matrix = np.asarray(matrix)
    if isinstance(matrix, CSCDataset):
        warnings.warn(
            f"{source} is a backed CSC matrix; loading it into memory and converting it to CSR "
            "once. Store the matrix as CSR to train out of core.",
            UserWarning,
            stacklevel=3,
        )
        matrix = matrix.to_memory().tocsr()
    elif sp.issparse(matrix) and matrix.format != "csr":
        warnings.warn(
            f"{source} is a {matrix.format.upper()} matrix; converting it to CSR once (this "
            f"copies it). Store it as CSR to avoid the copy: X = X.tocsr().",
            UserWarning,
            stacklevel=3,
        )
        matrix = matrix.tocsr()
    if sp.issparse(matrix) and matrix.dtype == np.float16:
        warnings.warn(
            f"{source} is stored as float16; converting it to float32 once (this copies it).",
            UserWarning,
            stacklevel=3,
        )
        matrix = matrix.astype(np.float32)
    if not isinstance(matrix, np.ndarray | h5py.Dataset | CSRDataset) and not sp.issparse(matrix):
        msg = (
            f"{source} is a {type(matrix).__name__}, which scdlkit cannot read. Use a numpy "
            "array, a scipy CSR matrix or a backed AnnData (read_h5ad(..., backed='r'))."
        )
        raise TypeError(msg)
    if len(matrix.shape) != 2:
        msg = f"{source} must be 2-dimensional (cells x features), got shape {matrix.shape}."
        raise TypeError(msg)
    if np.dtype(matrix.dtype).kind not in "biuf":
        msg = (
            f"{source} has non-numeric dtype {matrix.dtype}; scdlkit needs numbers. Convert it, "
            "for example adata.X = adata.X.astype('float32')."
        )
        raise TypeError(msg)
    return matrix


def read_row_block(matrix: SourceMatrix, start: int, stop: int) -> np.ndarray | sp.csr_matrix:
    """Read rows ``start:stop`` into memory (a view for in-memory dense input)."""
    block = matrix[start:stop]
    if sp.issparse(block) and block.format != "csr":
        block = block.tocsr()
    return block


def iter_row_blocks(
    matrix: SourceMatrix, *, block_rows: int = SCAN_BLOCK_ROWS
) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """Yield ``(start_row, block)`` over the whole matrix in contiguous row blocks."""
    n_rows = matrix.shape[0]
    for start in range(0, n_rows, block_rows):
        yield start, read_row_block(matrix, start, min(start + block_rows, n_rows))


@dataclass(frozen=True)
class MatrixSummary:
    """What one pass over a matrix found out.

    Attributes
    ----------
    n_nonfinite
        Number of NaN or infinite values.
    first_nonfinite_row
        Row index of the first NaN/Inf, or ``-1`` when there is none.
    min_value
        Smallest stored value (implicit sparse zeros count as ``0``).
    is_integer
        Whether every value is a whole number (raw counts look like this).
    """

    n_nonfinite: int
    first_nonfinite_row: int
    min_value: float
    is_integer: bool


def _value_chunks(matrix: SourceMatrix) -> Iterator[tuple[np.ndarray, np.ndarray | None, int, int]]:
    """Yield ``(values, indptr, first_row, n_columns)`` chunks covering every stored value.

    In-memory CSR is scanned through its ``data`` array in slices (no copy);
    dense and backed matrices in row blocks (views for in-memory dense input).
    """
    if sp.issparse(matrix):
        step = SCAN_BLOCK_ROWS * 512
        for start in range(0, matrix.data.shape[0], step):
            yield matrix.data[start : start + step], matrix.indptr, start, -1
        return
    for start, block in iter_row_blocks(matrix):
        if sp.issparse(block):
            yield block.data, block.indptr, start, -1
        else:
            yield np.asarray(block).ravel(), None, start, block.shape[1]


def summarize_matrix(matrix: SourceMatrix) -> MatrixSummary:
    """Scan ``matrix`` once for non-finite values, its minimum and integrality.

    Memory stays bounded: in-memory CSR is read through slices of its ``data``
    array, other matrices in row blocks.
    """
    integer_dtype = np.dtype(matrix.dtype).kind in "biu"
    n_rows, n_columns = matrix.shape
    whole_csr = sp.issparse(matrix)
    n_nonfinite = 0
    first_bad = -1
    min_value = np.inf
    is_integer = True
    n_stored = 0
    for values, indptr, offset, width in _value_chunks(matrix):
        n_stored += values.size
        if values.size == 0:
            continue
        if integer_dtype:
            min_value = min(min_value, float(values.min()))
            continue
        finite = np.isfinite(values)
        n_bad = values.size - int(np.count_nonzero(finite))
        if n_bad:
            if first_bad < 0:
                position = int(np.argmin(finite))
                if whole_csr:
                    first_bad = int(np.searchsorted(indptr, offset + position, "right")) - 1
                elif indptr is None:
                    first_bad = offset + position // width
                else:
                    first_bad = offset + int(np.searchsorted(indptr, position, "right")) - 1
            n_nonfinite += n_bad
            values = values[finite]
            if values.size == 0:
                continue
        min_value = min(min_value, float(values.min()))
        if is_integer:
            is_integer = bool(np.all(values == np.round(values)))
    if n_stored < n_rows * n_columns or min_value == np.inf:
        min_value = min(min_value, 0.0)
    return MatrixSummary(n_nonfinite, first_bad, float(min_value), is_integer)
