"""Compiled (numba) kernels that turn CSR rows into a dense model-input block.

numba comes with scanpy. The kernels are cached on disk and release the GIL.
The work is split so that each part runs at its best speed: a numba gather
(scaling each row to its target sum while copying its stored values into one
contiguous float32 array), torch's vectorised in-place ``log1p`` on that array,
and a numba scatter into the dense block.
"""

from __future__ import annotations

import numba
import numpy as np

#: Value dtypes the kernels read directly (others go through the numpy path).
KERNEL_DTYPES = frozenset(
    np.dtype(name)
    for name in (
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float32",
        "float64",
    )
)


@numba.njit(cache=True, nogil=True)
def gather_csr_rows(
    indptr, indices, data, rows, positions, select, normalize, target_sum, n_features, values, flat
):  # noqa: D417
    """Copy the stored values of ``rows`` into ``values`` and their dense positions into ``flat``.

    ``flat[k]`` is ``i * n_features + feature`` for the ``i``-th requested row.
    With ``normalize`` each row is scaled to ``target_sum`` total (over all its
    stored values, before feature selection); with ``select``, ``positions[c]``
    maps source column ``c`` to a feature (negative: dropped).

    Returns
    -------
    The number of entries written.
    """
    k = 0
    for i in range(rows.shape[0]):
        start = indptr[rows[i]]
        end = indptr[rows[i] + 1]
        factor = 1.0
        if normalize:
            total = 0.0
            for j in range(start, end):
                total += data[j]
            factor = target_sum / total if total > 0 else 0.0
        base = i * n_features
        for j in range(start, end):
            column = indices[j]
            if select:
                column = positions[column]
                if column < 0:
                    continue
            values[k] = data[j] * factor
            flat[k] = base + column
            k += 1
    return k


@numba.njit(cache=True, nogil=True)
def scatter_add(flat, values, n, out):  # noqa: D417
    """Add ``values[:n]`` at positions ``flat[:n]`` of the flat zeroed block ``out``.

    Returns
    -------
    ``True`` when a position was hit twice (a CSR with duplicate entries).
    """
    duplicates = False
    for k in range(n):
        if out[flat[k]] != 0:
            duplicates = True
        out[flat[k]] += values[k]
    return duplicates
