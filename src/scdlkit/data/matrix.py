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
    min_value, max_value
        Smallest and largest finite value (implicit sparse zeros count as ``0``;
        both are ``0`` when the matrix holds no finite value).
    is_integer
        Whether every finite value is a whole number (raw counts look like this).
    n_negative
        Number of finite values below zero.
    n_nonzero
        Number of values that are not zero (NaN and infinite values included).
    n_empty_rows, n_empty_columns
        Rows (cells) and columns (features) without a single non-zero value.
    """

    n_nonfinite: int
    first_nonfinite_row: int
    min_value: float
    is_integer: bool
    max_value: float
    n_negative: int
    n_nonzero: int
    n_empty_rows: int
    n_empty_columns: int


#: Stored values scanned at once (in-memory CSR is cut into row ranges of about this many).
_SCAN_VALUES = SCAN_BLOCK_ROWS * 512


@dataclass(frozen=True)
class _Chunk:
    """Whole rows of a matrix: dense ``values`` (rows x columns), or CSR ``values``/``indices``/``indptr``."""

    first_row: int
    values: np.ndarray
    indices: np.ndarray | None = None
    indptr: np.ndarray | None = None


def _chunks(matrix: SourceMatrix) -> Iterator[_Chunk]:
    """Yield row-aligned chunks covering every stored value, without copying in-memory data.

    In-memory CSR is cut into row ranges of about ``_SCAN_VALUES`` stored values
    (views of ``data``/``indices``); dense and backed matrices are read in row blocks.
    """
    if sp.issparse(matrix):
        indptr = matrix.indptr
        targets = np.arange(_SCAN_VALUES, int(indptr[-1]), _SCAN_VALUES)
        bounds = np.unique(np.r_[0, np.searchsorted(indptr, targets), matrix.shape[0]])
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            first, last = int(indptr[start]), int(indptr[stop])
            yield _Chunk(
                int(start),
                matrix.data[first:last],
                matrix.indices[first:last],
                indptr[start : stop + 1] - first,
            )
        return
    for start, block in iter_row_blocks(matrix, block_rows=SCAN_BLOCK_ROWS):
        if sp.issparse(block):
            yield _Chunk(start, block.data, block.indices, block.indptr)
        else:
            yield _Chunk(start, np.asarray(block))


class _Scan:
    """Running totals of :func:`summarize_matrix`."""

    def __init__(self, n_columns: int, *, integer_dtype: bool) -> None:
        self.integer_dtype = integer_dtype
        self.n_nonfinite = 0
        self.first_bad = -1
        self.min_value = np.inf
        self.max_value = -np.inf
        self.is_integer = True
        self.n_negative = 0
        self.n_nonzero = 0
        self.n_stored = 0
        self.n_empty_rows = 0
        self.column_seen = np.zeros(n_columns, dtype=bool)  # has a non-zero value
        self.n_unseen = n_columns

    def add(self, chunk: _Chunk) -> None:
        """Take the statistics of one chunk into the totals."""
        self.n_stored += chunk.values.size
        holds_zeros = self._values(chunk)
        self._occupancy(chunk, holds_zeros=holds_zeros)

    def _values(self, chunk: _Chunk) -> bool:
        """Range, integrality, negatives and non-finite values; return whether a value may be 0."""
        values = chunk.values
        if values.size == 0:
            return False
        flat = values.ravel()
        if not self.integer_dtype:
            finite = np.isfinite(flat)
            n_bad = flat.size - int(np.count_nonzero(finite))
            if n_bad:
                if self.first_bad < 0:
                    position = int(np.argmin(finite))
                    if chunk.indptr is None:
                        row = position // values.shape[1]
                    else:
                        row = int(np.searchsorted(chunk.indptr, position, "right")) - 1
                    self.first_bad = chunk.first_row + row
                self.n_nonfinite += n_bad
                flat = flat[finite]
                if flat.size == 0:
                    return False
        low, high = float(flat.min()), float(flat.max())
        self.min_value = min(self.min_value, low)
        self.max_value = max(self.max_value, high)
        if low < 0:
            self.n_negative += int(np.count_nonzero(flat < 0))
        if self.is_integer and not self.integer_dtype:
            self.is_integer = bool(np.all(flat == np.round(flat)))
        return low <= 0 <= high

    def _occupancy(self, chunk: _Chunk, *, holds_zeros: bool) -> None:
        """Count the non-zeros and the rows without one; mark the columns that have one."""
        values, indptr = chunk.values, chunk.indptr
        if indptr is None:
            nonzero = values != 0
            self.n_nonzero += int(np.count_nonzero(nonzero))
            self.n_empty_rows += int(np.count_nonzero(~nonzero.any(axis=1)))
            if self.n_unseen:
                self.column_seen |= nonzero.any(axis=0)
        else:
            nonzero = values != 0 if holds_zeros else None  # explicit zeros are rare in CSR
            if nonzero is None or nonzero.all():
                self.n_nonzero += values.size
                per_row = np.diff(indptr)
                columns = chunk.indices
            else:
                self.n_nonzero += int(np.count_nonzero(nonzero))
                running = np.r_[0, np.cumsum(nonzero)]
                per_row = running[indptr[1:]] - running[indptr[:-1]]
                columns = chunk.indices[nonzero]
            self.n_empty_rows += int(np.count_nonzero(per_row == 0))
            if self.n_unseen:  # once every column has a value, later chunks are not looked at
                self.column_seen[columns] = True
        if self.n_unseen:
            self.n_unseen = self.column_seen.shape[0] - int(np.count_nonzero(self.column_seen))

    def summary(self, n_rows: int, n_columns: int) -> MatrixSummary:
        min_value, max_value = self.min_value, self.max_value
        if self.n_stored < n_rows * n_columns:  # implicit sparse zeros
            min_value, max_value = min(min_value, 0.0), max(max_value, 0.0)
        if min_value == np.inf:  # no finite value at all
            min_value = max_value = 0.0
        return MatrixSummary(
            n_nonfinite=self.n_nonfinite,
            first_nonfinite_row=self.first_bad,
            min_value=float(min_value),
            is_integer=self.is_integer,
            max_value=float(max_value),
            n_negative=self.n_negative,
            n_nonzero=self.n_nonzero,
            n_empty_rows=self.n_empty_rows,
            n_empty_columns=self.n_unseen,
        )


def summarize_matrix(matrix: SourceMatrix) -> MatrixSummary:
    """Scan ``matrix`` once: non-finite values, range, integrality, negatives and empty rows/columns.

    Memory stays bounded: in-memory CSR is read through views of row ranges of
    its ``data`` array, other matrices in row blocks. ``prepare_data`` checks
    the values with it and :func:`scdlkit.pp.inspect` reports it.

    Examples
    --------
    >>> import numpy as np
    >>> summary = summarize_matrix(np.array([[0.0, 2.0], [0.0, -1.5]]))
    >>> summary.min_value, summary.max_value, summary.n_negative, summary.is_integer
    (-1.5, 2.0, 1, False)
    >>> summary.n_nonzero, summary.n_empty_rows, summary.n_empty_columns
    (2, 0, 1)
    """
    n_rows, n_columns = (int(n) for n in matrix.shape)
    scan = _Scan(n_columns, integer_dtype=np.dtype(matrix.dtype).kind in "biu")
    for chunk in _chunks(matrix):
        scan.add(chunk)
    return scan.summary(n_rows, n_columns)
