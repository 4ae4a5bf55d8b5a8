"""``ScGPTTokenizer``: expression rows → ``<cls>`` + (gene id, value bin) tokens, per minibatch.

For every cell: keep the genes with non-zero expression; bin their values
into ``1..n_bins - 1`` by the cell's own quantiles (scGPT's rule, with
random tie-breaking); when more than ``max_len - 1`` genes remain, keep a
random subset of ``max_len - 1``; prepend ``<cls>``; pad with ``<pad>``.

All randomness comes from a counter-based generator keyed by
``(seed, cell name, gene id)``, so a cell's tokens do not depend on the other
cells in its minibatch, on batch size or on order, and the same seed gives the
same tokens in every session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._hashing import random_bits, random_uniform

#: Random-stream numbers of the two random decisions.
TIE_STREAM = 0
SAMPLE_STREAM = 1

#: Cells x genes x edges compared at once while binning (bounds temporary memory).
_COMPARE_BUDGET = 1 << 24


def quantile_edges(sorted_values: np.ndarray, lengths: np.ndarray, n_edges: int) -> np.ndarray:
    """Per-row ``np.quantile(row[:length], np.linspace(0, 1, n_edges))`` (linear method), vectorised.

    Parameters
    ----------
    sorted_values
        ``(n, m)`` float64, each row sorted ascending in its first ``lengths[i]`` entries.
    lengths
        Valid entries per row (rows with 0 entries get NaN edges).
    n_edges
        Number of quantile edges.

    Returns
    -------
    ``(n, n_edges)`` float64 edges, equal to NumPy's result.

    Examples
    --------
    >>> values = np.array([[1.0, 2.0, 4.0, np.inf]])
    >>> quantile_edges(values, np.array([3]), 3).tolist()
    [[1.0, 2.0, 4.0]]
    """
    q = np.linspace(0.0, 1.0, n_edges)
    count = np.maximum(lengths, 1)
    virtual = (count - 1)[:, None] * q[None, :]
    below = np.minimum(np.floor(virtual).astype(np.int64), (count - 1)[:, None])
    above = np.minimum(below + 1, (count - 1)[:, None])
    gamma = virtual - below
    a = np.take_along_axis(sorted_values, below, axis=1)
    b = np.take_along_axis(sorted_values, above, axis=1)
    diff = b - a
    edges = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    edges[lengths == 0] = np.nan
    return edges


def digitize_with_ties(
    values: np.ndarray, edges: np.ndarray, uniform: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """Digitise values as scGPT does (randomised tie-breaking), vectorised over rows.

    ``left = #(edges <= x)``, ``right = #(edges < x)``,
    ``bin = ceil(u * (right - left) + left)``: equal values that straddle
    repeated edges are spread at random over the tied bins.

    Returns
    -------
    ``(n, m)`` int64 bins (``0`` where ``valid`` is ``False``).
    """
    n, m = values.shape
    n_edges = edges.shape[1]
    out = np.zeros((n, m), dtype=np.int64)
    step = max(1, _COMPARE_BUDGET // max(1, m * n_edges))
    for start in range(0, n, step):
        stop = min(n, start + step)
        x = values[start:stop, :, None]
        e = edges[start:stop, None, :]
        left = (e <= x).sum(axis=2)
        right = (e < x).sum(axis=2)
        digits = np.ceil(uniform[start:stop] * (right - left) + left)
        out[start:stop] = np.where(valid[start:stop], digits, 0).astype(np.int64)
    return out


@dataclass(frozen=True)
class ScGPTTokenizer:
    """Turn expression rows into scGPT token sequences, one minibatch at a time.

    Parameters
    ----------
    pad_id, cls_id
        Token ids of ``<pad>`` and ``<cls>``.
    n_bins
        Number of value bins (non-zero values land in ``1..n_bins - 1``).
    max_len
        Maximum sequence length including ``<cls>``.
    pad_value
        Value at padding positions.
    cls_value
        Value at the ``<cls>`` position (scGPT's embedding and pretraining code
        use ``pad_value``).
    seed
        Seed of tie-breaking and gene subsampling.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> tok = ScGPTTokenizer(pad_id=0, cls_id=1, n_bins=5, max_len=8)
    >>> rows = sp.csr_matrix(np.array([[0.0, 1.0, 2.0, 3.0, 4.0]]))
    >>> out = tok.tokenize(rows, np.array([10, 11, 12, 13, 14]), np.array([7], dtype=np.uint64))
    >>> out["gene_ids"].tolist(), out["values"].tolist()
    ([[1, 11, 12, 13, 14]], [[-2.0, 1.0, 2.0, 3.0, 4.0]])
    """

    pad_id: int
    cls_id: int
    n_bins: int = 51
    max_len: int = 1200
    pad_value: float = -2.0
    cls_value: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.max_len) < 2:
            msg = f"max_len must be at least 2 (<cls> plus one gene), got {self.max_len!r}."
            raise ValueError(msg)
        if int(self.n_bins) < 3:
            msg = f"n_bins must be at least 3, got {self.n_bins!r}."
            raise ValueError(msg)

    @classmethod
    def from_model(
        cls, model: object, *, max_len: int | None = None, seed: int = 0
    ) -> ScGPTTokenizer:
        """Build the tokenizer matching a loaded :class:`~scdlkit.foundation.ScGPTModel`."""
        config = model.scgpt_config
        vocab = model.vocab
        return cls(
            pad_id=vocab.pad_id,
            cls_id=vocab.cls_id,
            n_bins=config.n_bins,
            max_len=int(max_len) if max_len is not None else config.max_seq_len,
            pad_value=config.pad_value,
            seed=int(seed),
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-able settings."""
        return {
            "n_bins": int(self.n_bins),
            "max_len": int(self.max_len),
            "pad_value": float(self.pad_value),
            "cls_value": float(self.cls_value if self.cls_value is not None else self.pad_value),
            "seed": int(self.seed),
        }

    def tokenize(
        self,
        rows: sp.csr_matrix | np.ndarray,
        gene_ids: np.ndarray,
        keys: np.ndarray,
        *,
        pad_to: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Tokenise a minibatch of cells.

        Parameters
        ----------
        rows
            ``(n_cells, n_genes)`` expression of the genes in ``gene_ids`` (CSR or
            dense); only this minibatch is densified, in token form.
        gene_ids
            Vocabulary id of every column.
        keys
            uint64 key per cell (see :func:`scdlkit.foundation._hashing.cell_keys`).
        pad_to
            Sequence length of the output (at least ``1 +`` the longest kept
            sequence); ``None`` pads to the longest sequence of the minibatch.

        Returns
        -------
        ``gene_ids`` (int64), ``values`` (float32) and ``padding_mask`` (bool,
        ``True`` at padding), each ``(n_cells, seq_len)``, and ``n_genes`` (int64,
        expressed genes per cell before subsampling).

        Raises
        ------
        ValueError
            Negative or non-finite values, or a ``pad_to`` that is too short.
        """
        block = sp.csr_matrix(rows, dtype=np.float64, copy=True)
        block.sum_duplicates()
        data = block.data
        if data.size and not np.isfinite(data).all():
            row = int(np.searchsorted(block.indptr, int(np.argmin(np.isfinite(data))), "right")) - 1
            msg = f"Expression of cell {row} of the minibatch has NaN or infinite values."
            raise ValueError(msg)
        if data.size and data.min() < 0:
            row = int(np.searchsorted(block.indptr, int(np.argmin(data)), "right")) - 1
            msg = (
                f"Expression of cell {row} of the minibatch has negative values (min {data.min():g}); "
                "scGPT bins non-negative expression (counts or log-normalised values)."
            )
            raise ValueError(msg)
        block.eliminate_zeros()
        n = block.shape[0]
        lengths = np.diff(block.indptr).astype(np.int64)
        width = int(lengths.max()) if n else 0
        positions = np.arange(block.nnz) - np.repeat(block.indptr[:-1], lengths)
        row_of = np.repeat(np.arange(n), lengths)
        valid = np.arange(width)[None, :] < lengths[:, None]
        values = np.full((n, width), np.inf)
        values[row_of, positions] = block.data
        genes = np.full((n, width), -1, dtype=np.int64)
        genes[row_of, positions] = np.asarray(gene_ids, dtype=np.int64)[block.indices]
        keys = np.asarray(keys, dtype=np.uint64)

        bins = self._bin(values, valid, lengths, keys, genes)
        keep = self._sample(valid, lengths, keys, genes)
        kept = keep.sum(axis=1)
        longest = int(kept.max()) if n else 0
        length = 1 + longest if pad_to is None else int(pad_to)
        if length < 1 + longest:
            msg = f"pad_to={pad_to} is shorter than the longest sequence ({1 + longest} tokens)."
            raise ValueError(msg)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :longest]
        inside = np.arange(longest)[None, :] < kept[:, None]
        out_ids = np.full((n, length), self.pad_id, dtype=np.int64)
        out_values = np.full((n, length), self.pad_value, dtype=np.float32)
        out_ids[:, 0] = self.cls_id
        out_values[:, 0] = self.pad_value if self.cls_value is None else self.cls_value
        out_ids[:, 1 : 1 + longest] = np.where(
            inside, np.take_along_axis(genes, order, axis=1), self.pad_id
        )
        out_values[:, 1 : 1 + longest] = np.where(
            inside, np.take_along_axis(bins, order, axis=1), self.pad_value
        )
        padding = np.zeros((n, length), dtype=bool)
        padding[:, 1:] = np.arange(1, length)[None, :] > kept[:, None]
        return {
            "gene_ids": out_ids,
            "values": out_values,
            "padding_mask": padding,
            "n_genes": lengths,
        }

    def _bin(
        self,
        values: np.ndarray,
        valid: np.ndarray,
        lengths: np.ndarray,
        keys: np.ndarray,
        genes: np.ndarray,
    ) -> np.ndarray:
        if values.shape[1] == 0:
            return np.zeros(values.shape, dtype=np.int64)
        sorted_values = np.sort(values, axis=1)
        edges = quantile_edges(sorted_values, lengths, self.n_bins - 1)
        uniform = random_uniform(self.seed, TIE_STREAM, keys, genes)
        return digitize_with_ties(values, edges, uniform, valid)

    def _sample(
        self, valid: np.ndarray, lengths: np.ndarray, keys: np.ndarray, genes: np.ndarray
    ) -> np.ndarray:
        limit = int(self.max_len) - 1
        if not (lengths > limit).any():
            return valid
        priority = random_bits(self.seed, SAMPLE_STREAM, keys, genes)
        priority[~valid] = np.iinfo(np.uint64).max
        order = np.argsort(priority, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :], axis=1)
        return valid & (rank < limit)
