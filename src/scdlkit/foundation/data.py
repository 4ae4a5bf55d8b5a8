"""From an AnnData/MuData to minibatches of scGPT tokens.

:class:`TokenSource` resolves the matrix (``.X``, a layer, ``.raw``, a MuData
modality, a backed file) through :func:`scdlkit.data.resolve_fields`, matches
gene symbols to the vocabulary and scans the matrix once in row blocks
(negative or non-finite values are rejected, expressed genes are counted).
:class:`TokenLoader` then reads one minibatch of rows at a time (never the whole
matrix), tokenises it and yields the batch dictionaries the
:class:`~scdlkit.Trainer` consumes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from mudata import MuData

from .._errors import MissingKeyError, format_names
from ..data import resolve_fields
from ..data.fields import ModSpec
from ..data.loaders import epoch_rng
from ..data.matrix import SourceMatrix, is_backed, iter_row_blocks, summarize_matrix
from ._hashing import cell_keys
from .model import pack_tokens
from .tokenizer import ScGPTTokenizer
from .vocab import GeneVocab

Batch = dict[str, torch.Tensor]

#: Default minimum share of the data's genes that must be in the vocabulary.
DEFAULT_MIN_GENE_OVERLAP = 0.5


@dataclass(frozen=True)
class GeneMatch:
    """How the data's genes map onto a checkpoint vocabulary.

    Attributes
    ----------
    n_genes
        Genes (columns) in the data.
    columns
        Column positions of the matched genes.
    gene_ids
        Vocabulary id of each matched column.
    unmatched
        Gene names that are not in the vocabulary.
    vocab_size
        Tokens in the vocabulary.
    """

    n_genes: int
    columns: np.ndarray
    gene_ids: np.ndarray
    unmatched: tuple[str, ...]
    vocab_size: int

    @property
    def n_matched(self) -> int:
        """Genes found in the vocabulary."""
        return int(self.columns.shape[0])

    @property
    def overlap(self) -> float:
        """Share of the data's genes found in the vocabulary."""
        return self.n_matched / self.n_genes if self.n_genes else 0.0


def match_genes(names: pd.Index | list[str], vocab: GeneVocab) -> GeneMatch:
    """Match gene symbols to ``vocab`` (exact and case-sensitive, as scGPT does).

    Examples
    --------
    >>> vocab = GeneVocab({"CD3E": 0, "LYZ": 1})
    >>> match = match_genes(["LYZ", "ENSG0001", "CD3E"], vocab)
    >>> match.columns.tolist(), match.gene_ids.tolist(), match.unmatched
    ([0, 2], [1, 0], ('ENSG0001',))
    """
    names = pd.Index(names).astype(str)
    ids = vocab.lookup(names)
    found = ids >= 0
    return GeneMatch(
        n_genes=len(names),
        columns=np.flatnonzero(found),
        gene_ids=ids[found],
        unmatched=tuple(names[~found]),
        vocab_size=len(vocab),
    )


def check_overlap(match: GeneMatch, min_gene_overlap: float | int, *, source: str) -> None:
    """Raise a ``ValueError`` when too few genes are in the vocabulary.

    ``min_gene_overlap`` below 1 is a share of the data's genes; 1 or more is a
    number of genes.
    """
    if isinstance(min_gene_overlap, bool) or not isinstance(min_gene_overlap, int | float):
        msg = f"min_gene_overlap must be a share in (0, 1) or a number of genes, got {min_gene_overlap!r}."
        raise ValueError(msg)
    needed = (
        math.ceil(min_gene_overlap * match.n_genes)
        if 0 <= min_gene_overlap < 1
        else int(min_gene_overlap)
    )
    needed = max(needed, 1)
    if match.n_matched >= needed:
        return
    msg = (
        f"Only {match.n_matched} of the {match.n_genes} genes of {source} ({match.overlap:.1%}) are in "
        f"the checkpoint's vocabulary of {match.vocab_size} tokens; at least {needed} are needed "
        f"(min_gene_overlap={min_gene_overlap}). Unmatched genes include "
        f"{format_names(match.unmatched, limit=5)}. scGPT vocabularies use case-sensitive HGNC "
        "symbols (e.g. 'CD3E'): if your var_names are Ensembl ids, pass gene_symbols= the .var "
        "column with symbols; or lower min_gene_overlap."
    )
    raise ValueError(msg)


@dataclass(frozen=True)
class MatrixScan:
    """One pass over the matched columns of a matrix.

    Attributes
    ----------
    n_expressed
        Genes with a positive value, per cell.
    min_value
        Smallest value in the matched columns (implicit zeros count).
    n_nonfinite
        NaN or infinite values.
    first_bad_row
        Row of the first negative or non-finite value (``-1`` when none).
    """

    n_expressed: np.ndarray
    min_value: float
    n_nonfinite: int
    first_bad_row: int


def scan_matrix(matrix: SourceMatrix, columns: np.ndarray) -> MatrixScan:
    """Count expressed genes per cell and find invalid values, reading row blocks.

    Each block's matched columns are checked by :func:`scdlkit.data.matrix.summarize_matrix`
    (the one value scanner); only the per-cell count of expressed genes is added here.

    Examples
    --------
    >>> scan = scan_matrix(np.array([[0.0, 2.0, 1.0], [3.0, -1.0, 0.0]]), np.array([0, 1]))
    >>> scan.n_expressed.tolist(), scan.min_value, scan.first_bad_row
    ([1, 1], -1.0, 1)
    """
    counts = np.zeros(matrix.shape[0], dtype=np.int64)
    min_value = math.inf
    n_nonfinite = 0
    first_bad = -1
    for start, block in iter_row_blocks(matrix):
        sub = (
            sp.csr_matrix(block[:, columns])
            if sp.issparse(block)
            else np.asarray(block)[:, columns]
        )
        summary = summarize_matrix(sub)
        n_nonfinite += summary.n_nonfinite
        min_value = min(min_value, summary.min_value)
        counts[start : start + sub.shape[0]] = np.asarray((sub > 0).sum(axis=1)).ravel()
        if first_bad < 0 and (summary.n_nonfinite or summary.min_value < 0):
            negative = np.flatnonzero(np.asarray((sub < 0).sum(axis=1)).ravel())
            candidates = [*negative[:1], summary.first_nonfinite_row]
            first_bad = start + min(int(row) for row in candidates if row >= 0)
    return MatrixScan(counts, 0.0 if min_value == math.inf else min_value, n_nonfinite, first_bad)


def feature_symbols(
    target: object, feature_names: pd.Index, *, use_raw: bool, gene_symbols: str | None
) -> pd.Index:
    """Return the gene symbols of the columns: ``feature_names``, or the ``.var`` column ``gene_symbols``."""
    if gene_symbols is None:
        return feature_names
    if not isinstance(target, AnnData):
        msg = "gene_symbols= needs a single AnnData or one MuData modality (mod='rna')."
        raise ValueError(msg)
    var = target.raw.var if use_raw else target.var
    where = "adata.raw.var" if use_raw else "adata.var"
    if gene_symbols not in var.columns:
        msg = (
            f"Did not find gene_symbols column {gene_symbols!r} in {where} (columns: "
            f"{format_names(var.columns)}). Pass gene_symbols=None to use the var_names."
        )
        raise MissingKeyError(msg)
    return pd.Index(var[gene_symbols].astype(str).to_numpy())


@dataclass
class TokenSource:
    """The expression matrix of an AnnData/MuData, matched to a vocabulary and validated.

    Build it with :meth:`from_adata`.

    Attributes
    ----------
    matrix
        The source matrix (dense, CSR or backed; never copied).
    match
        The :class:`GeneMatch` of its columns.
    obs_names
        Cell names (their hashes key the per-cell random numbers).
    scan
        Expressed genes per cell and value checks.
    source
        Description such as ``"adata.raw.X"``.
    labels
        The ``label_key`` column aligned to the rows, when asked for.
    """

    matrix: SourceMatrix
    match: GeneMatch
    obs_names: pd.Index
    scan: MatrixScan
    source: str
    labels: pd.Series | None = None
    keys: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.keys = cell_keys(self.obs_names)

    @classmethod
    def from_adata(
        cls,
        adata: AnnData | MuData,
        vocab: GeneVocab,
        *,
        layer: str | None = None,
        use_raw: bool = False,
        mod: ModSpec = None,
        gene_symbols: str | None = None,
        label_key: str | None = None,
        min_gene_overlap: float | int | None = DEFAULT_MIN_GENE_OVERLAP,
    ) -> TokenSource:
        """Resolve, match and validate the expression of ``adata``.

        Parameters
        ----------
        adata
            AnnData or MuData.
        vocab
            The checkpoint vocabulary.
        layer, use_raw, mod
            Where the expression lives (see :func:`scdlkit.data.resolve_fields`).
        gene_symbols
            ``.var`` column with gene symbols; ``None`` uses the var_names.
        label_key
            ``.obs`` column to return aligned to the rows.
        min_gene_overlap
            Share (below 1) or number of genes that must be in the vocabulary;
            ``None`` skips the check.

        Raises
        ------
        ValueError
            Too few genes in the vocabulary, negative or non-finite values.
        MissingKeyError
            A missing layer, modality, ``.raw``, ``gene_symbols`` or ``label_key`` column.
        """
        fields = resolve_fields(adata, layer=layer, use_raw=use_raw, mod=mod, label_key=label_key)
        names = feature_symbols(
            fields.target, fields.feature_names, use_raw=use_raw, gene_symbols=gene_symbols
        )
        match = match_genes(names, vocab)
        if min_gene_overlap is not None:
            check_overlap(match, min_gene_overlap, source=fields.source)
        scan = scan_matrix(fields.matrix, match.columns)
        if scan.first_bad_row >= 0:
            cell = fields.obs_names[scan.first_bad_row]
            msg = (
                f"{fields.source} has negative or non-finite values (first in cell {cell!r}; "
                f"{scan.n_nonfinite} non-finite, minimum {scan.min_value:g}). scGPT bins "
                "non-negative expression: use raw counts or "
                "log-normalised values (layer='counts', use_raw=True, ...), not scaled or "
                "z-scored data."
            )
            raise ValueError(msg)
        return cls(
            matrix=fields.matrix,
            match=match,
            obs_names=fields.obs_names,
            scan=scan,
            source=fields.source,
            labels=fields.labels,
        )

    @property
    def n_obs(self) -> int:
        """Number of cells."""
        return int(self.matrix.shape[0])

    def sequence_length(self, max_len: int, rows: np.ndarray | None = None) -> int:
        """Return the padded length that fits every cell (``1 + min(max_len - 1, most expressed genes)``)."""
        counts = self.scan.n_expressed if rows is None else self.scan.n_expressed[rows]
        longest = int(counts.max()) if counts.size else 0
        return 1 + min(int(max_len) - 1, longest)

    def read_rows(self, rows: np.ndarray) -> sp.csr_matrix:
        """Read the matched columns of ``rows`` as CSR (only these rows are read)."""
        rows = np.asarray(rows, dtype=np.int64)
        if is_backed(self.matrix):
            order = np.argsort(rows, kind="stable")
            block = self.matrix[rows[order]]
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.shape[0])
            block = block[inverse]
        else:
            block = self.matrix[rows]
        return sp.csr_matrix(block[:, self.match.columns])


class TokenLoader:
    """Minibatches of scGPT tokens from a :class:`TokenSource`, for the :class:`~scdlkit.Trainer`.

    Each batch holds ``x`` (the packed ``[gene_ids | values]`` float32 tensor the
    models take), ``gene_ids`` (int64), ``values`` (float32), ``padding_mask``
    (bool, ``True`` at padding), ``index`` (int64 source rows) and ``y`` (int64)
    when labels are given. All batches have the same sequence length, so
    ``Trainer.predict_dataset`` can concatenate the inputs too.

    Parameters
    ----------
    source
        The matched and validated expression.
    tokenizer
        Binning, subsampling and padding settings.
    rows
        Source rows to load (default: all).
    labels
        Integer label per entry of ``rows``.
    batch_size
        Cells per batch.
    shuffle
        Visit the rows in a new order every epoch (seeded by ``seed`` and the epoch).
    seed
        Seed of the shuffling.

    Examples
    --------
    >>> import scdlkit
    >>> from scdlkit.foundation import GeneVocab, ScGPTTokenizer, TokenLoader, TokenSource
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> vocab = GeneVocab({gene: i for i, gene in enumerate(adata.raw.var_names)})
    >>> source = TokenSource.from_adata(adata, vocab, use_raw=True)
    >>> tokenizer = ScGPTTokenizer(pad_id=vocab.pad_id, cls_id=vocab.cls_id, max_len=128)
    >>> batch = next(iter(TokenLoader(source, tokenizer, batch_size=32)))
    >>> batch["gene_ids"].shape, batch["x"].shape
    (torch.Size([32, 128]), torch.Size([32, 256]))
    """

    def __init__(
        self,
        source: TokenSource,
        tokenizer: ScGPTTokenizer,
        *,
        rows: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            msg = f"batch_size must be a positive integer, got {batch_size!r}."
            raise ValueError(msg)
        self.source = source
        self.tokenizer = tokenizer
        self.rows = np.arange(source.n_obs) if rows is None else np.asarray(rows, dtype=np.int64)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape[0] != self.rows.shape[0]:
                msg = f"labels has {labels.shape[0]} entries for {self.rows.shape[0]} rows."
                raise ValueError(msg)
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.pad_to = source.sequence_length(tokenizer.max_len)

    def set_epoch(self, epoch: int) -> None:
        """Select the visiting order of ``epoch`` (called by the Trainer)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.rows.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = self.rows.shape[0]
        order = epoch_rng(self.seed, self.epoch).permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            positions = order[start : start + self.batch_size]
            yield self.batch(positions)

    def batch(self, positions: np.ndarray) -> Batch:
        """Build the batch of ``self.rows[positions]``."""
        rows = self.rows[positions]
        tokens = self.tokenizer.tokenize(
            self.source.read_rows(rows),
            self.source.match.gene_ids,
            self.source.keys[rows],
            pad_to=self.pad_to,
        )
        gene_ids = torch.from_numpy(tokens["gene_ids"])
        values = torch.from_numpy(tokens["values"])
        batch = {
            "x": pack_tokens(gene_ids, values),
            "gene_ids": gene_ids,
            "values": values,
            "padding_mask": torch.from_numpy(tokens["padding_mask"]),
            "index": torch.from_numpy(rows.astype(np.int64)),
        }
        if self.labels is not None:
            batch["y"] = torch.from_numpy(self.labels[positions])
        return batch


class ArrayLoader:
    """Minibatches ``{"x", "y", "index"}`` of an in-memory array (cached embeddings).

    Examples
    --------
    >>> loader = ArrayLoader(np.zeros((5, 3), dtype=np.float32), np.arange(5), batch_size=2)
    >>> [tuple(b["x"].shape) for b in loader]
    [(2, 3), (2, 3), (1, 3)]
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        *,
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        self.y = None if y is None else torch.as_tensor(np.asarray(y, dtype=np.int64))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the visiting order of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = self.x.shape[0]
        order = epoch_rng(self.seed, self.epoch).permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            positions = torch.from_numpy(order[start : start + self.batch_size])
            batch = {"x": self.x[positions], "index": positions}
            if self.y is not None:
                batch["y"] = self.y[positions]
            yield batch
