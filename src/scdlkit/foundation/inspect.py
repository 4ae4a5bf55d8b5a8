"""``inspect_annotation_data``: check a dataset against a checkpoint before adapting scGPT."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from .._defaults import DEFAULT_SEED
from ..data import CategoryEncoder, resolve_fields
from ..data.fields import ModSpec
from ..data.spec import resolve_seed
from ..data.splits import check_split_sizes, draw_split
from .checkpoint import read_vocab
from .data import (
    DEFAULT_MIN_GENE_OVERLAP,
    check_overlap,
    feature_symbols,
    match_genes,
    scan_matrix,
)
from .model import ScGPTModel


@dataclass
class AnnotationDataReport:
    """What :func:`inspect_annotation_data` found.

    Attributes
    ----------
    n_cells, n_genes
        Size of the data.
    n_genes_matched
        Genes found in the checkpoint vocabulary.
    gene_overlap
        ``n_genes_matched / n_genes``.
    unmatched_genes
        Up to 20 genes that are not in the vocabulary.
    vocab_size
        Tokens in the vocabulary.
    source
        Where the expression was read (``"adata.raw.X"``, ...).
    min_value
        Smallest expression value (must be ``>= 0``).
    n_nonfinite
        NaN or infinite values.
    expressed_genes
        Summary of matched expressed genes per cell (``min``, ``median``, ``max``).
    n_empty_cells
        Cells with no expressed matched gene (their sequence is only ``<cls>``).
    class_counts
        Cells per class of ``label_key`` (largest first).
    split_counts
        Cells per class and split (``train``/``val``/``test``) of the split
        :func:`adapt_annotation` would draw with the same settings.
    stratified
        Whether every class lands in every requested split.
    problems
        Issues that make :func:`adapt_annotation` fail.
    warnings
        Issues that weaken the results.
    """

    n_cells: int
    n_genes: int
    n_genes_matched: int
    gene_overlap: float
    unmatched_genes: list[str]
    vocab_size: int
    source: str
    min_value: float
    n_nonfinite: int
    expressed_genes: dict[str, float]
    n_empty_cells: int
    class_counts: pd.Series
    split_counts: pd.DataFrame
    stratified: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """``True`` when there are no problems."""
        return not self.problems

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return int(self.class_counts.shape[0])

    def summary(self) -> pd.Series:
        """Return the scalar findings as one Series."""
        return pd.Series(
            {
                "n_cells": self.n_cells,
                "n_genes": self.n_genes,
                "n_genes_matched": self.n_genes_matched,
                "gene_overlap": self.gene_overlap,
                "vocab_size": self.vocab_size,
                "source": self.source,
                "min_value": self.min_value,
                "median_expressed_genes": self.expressed_genes.get("median", np.nan),
                "n_empty_cells": self.n_empty_cells,
                "n_classes": self.n_classes,
                "smallest_class": int(self.class_counts.min()) if self.n_classes else 0,
                "stratified": self.stratified,
                "ok": self.ok,
            },
            dtype=object,
        )

    def __repr__(self) -> str:
        lines = [
            f"AnnotationDataReport: {self.n_cells} cells x {self.n_genes} genes from {self.source}",
            f"  genes in vocabulary: {self.n_genes_matched} ({self.gene_overlap:.1%}) of a "
            f"{self.vocab_size}-token vocabulary",
            f"  expressed matched genes per cell: median {self.expressed_genes.get('median', 0):g} "
            f"(min {self.expressed_genes.get('min', 0):g}, max {self.expressed_genes.get('max', 0):g})",
            f"  classes: {self.n_classes} (smallest {int(self.class_counts.min()) if self.n_classes else 0} "
            f"cells); stratified split: {'yes' if self.stratified else 'no'}",
        ]
        lines += [f"  PROBLEM: {text}" for text in self.problems]
        lines += [f"  warning: {text}" for text in self.warnings]
        return "\n".join(lines)


def inspect_annotation_data(
    adata: AnnData | MuData,
    *,
    label_key: str,
    checkpoint: str | os.PathLike | ScGPTModel,
    layer: str | None = None,
    use_raw: bool = False,
    mod: ModSpec = None,
    gene_symbols: str | None = None,
    max_len: int | None = None,
    val_size: float = 0.15,
    test_size: float = 0.15,
    seed: int = DEFAULT_SEED,
    min_gene_overlap: float | int = DEFAULT_MIN_GENE_OVERLAP,
    random_state: int | None = None,
) -> AnnotationDataReport:
    """Check gene overlap, values, class balance and the split before :func:`adapt_annotation`.

    Reads only ``args.json`` and ``vocab.json`` of the checkpoint (not the weights)
    and scans the matrix once in row blocks. Nothing is written into ``adata``.

    Parameters
    ----------
    adata
        AnnData or MuData.
    label_key
        ``.obs`` column with the cell types.
    checkpoint
        scGPT checkpoint folder, or a model from :func:`~scdlkit.foundation.load_scgpt`.
    layer, use_raw, mod
        Where the expression lives (non-negative counts or log-normalised values).
    gene_symbols
        ``.var`` column with gene symbols when the var_names are not symbols.
    max_len
        Sequence length that will be used (default: the checkpoint's ``max_seq_len``);
        cells with more expressed genes are reported (they will be subsampled).
    val_size, test_size, seed
        The split :func:`adapt_annotation` would draw.
    min_gene_overlap
        Share (below 1) or number of genes that must be in the vocabulary.
    random_state
        Deprecated alias of ``seed`` (``FutureWarning``).

    Returns
    -------
    :class:`AnnotationDataReport`; ``report.ok`` is ``False`` when
    :func:`adapt_annotation` would fail, and ``report.problems`` says why.

    Raises
    ------
    MissingKeyError
        A missing layer, modality, ``.raw``, ``gene_symbols`` or ``label_key`` column.
    FileNotFoundError
        The checkpoint folder or its files are missing.

    Examples
    --------
    >>> import tempfile, scdlkit
    >>> from scdlkit.foundation import inspect_annotation_data
    >>> from scdlkit.foundation.testing import make_tiny_checkpoint
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> path = make_tiny_checkpoint(tempfile.mkdtemp(), genes=adata.raw.var_names)
    >>> report = inspect_annotation_data(
    ...     adata, label_key="bulk_labels", checkpoint=path, use_raw=True
    ... )
    >>> report.ok, report.gene_overlap
    (True, 1.0)
    """
    seed = resolve_seed(seed, random_state, where="inspect_annotation_data")
    if isinstance(checkpoint, ScGPTModel):
        config, vocab = checkpoint.scgpt_config, checkpoint.vocab
    else:
        config, vocab = read_vocab(checkpoint)
    max_len = int(max_len) if max_len is not None else config.max_seq_len
    fields = resolve_fields(adata, layer=layer, use_raw=use_raw, mod=mod, label_key=label_key)
    names = feature_symbols(
        fields.target, fields.feature_names, use_raw=use_raw, gene_symbols=gene_symbols
    )
    match = match_genes(names, vocab)
    problems: list[str] = []
    notes: list[str] = []
    try:
        check_overlap(match, min_gene_overlap, source=fields.source)
    except ValueError as error:
        problems.append(str(error))
    scan = scan_matrix(fields.matrix, match.columns)
    if scan.n_nonfinite:
        problems.append(f"{fields.source} has {scan.n_nonfinite} NaN or infinite values.")
    if scan.min_value < 0:
        problems.append(
            f"{fields.source} has negative values (minimum {scan.min_value:g}); scGPT needs "
            "non-negative counts or log-normalised values, not scaled data."
        )
    counts = scan.n_expressed
    n_empty = int((counts == 0).sum())
    if n_empty:
        notes.append(
            f"{n_empty} cells express none of the matched genes; only <cls> represents them."
        )
    n_long = int((counts > max_len - 1).sum())
    if n_long:
        notes.append(
            f"{n_long} cells express more than max_len - 1 = {max_len - 1} matched genes; a seeded "
            "random subset of their genes is used."
        )
    labels = fields.labels
    class_counts = labels.astype(str).value_counts() if labels is not None else pd.Series(dtype=int)
    split_counts = pd.DataFrame()
    stratified = False
    if labels.isna().any():
        problems.append(f"label_key {label_key!r} has {int(labels.isna().sum())} missing values.")
    elif class_counts.shape[0] < 2:
        problems.append(f"label_key {label_key!r} has fewer than two classes.")
    else:
        check_split_sizes(val_size, test_size)
        encoder = CategoryEncoder.fit(labels, key=label_key)
        codes = encoder.encode(labels)
        try:
            split = draw_split(
                codes.shape[0],
                labels=codes,
                val_size=val_size,
                test_size=test_size,
                seed=seed,
            )
        except ValueError as error:
            problems.append(str(error))
        else:
            split_counts = pd.crosstab(
                pd.Categorical(encoder.decode(codes)), pd.Categorical(split, ["train", "val", "test"]),
                dropna=False,
            )  # fmt: skip
            split_counts.index.name, split_counts.columns.name = label_key, "split"
            requested = [
                name for name, size in (("val", val_size), ("test", test_size)) if size > 0
            ]
            missing = [
                str(c) for c in split_counts.index if (split_counts.loc[c, requested] == 0).any()
            ]
            stratified = not missing
            if missing:
                notes.append(
                    f"{len(missing)} classes have too few cells to appear in every split "
                    f"(e.g. {missing[0]!r}); their validation/test metrics are missing."
                )
        smallest = int(class_counts.min())
        if smallest < 10:
            notes.append(f"the smallest class has {smallest} cells; its metrics will be noisy.")
    return AnnotationDataReport(
        n_cells=int(fields.matrix.shape[0]),
        n_genes=match.n_genes,
        n_genes_matched=match.n_matched,
        gene_overlap=match.overlap,
        unmatched_genes=list(match.unmatched[:20]),
        vocab_size=len(vocab),
        source=fields.source,
        min_value=scan.min_value,
        n_nonfinite=scan.n_nonfinite,
        expressed_genes={
            "min": float(counts.min()) if counts.size else 0.0,
            "median": float(np.median(counts)) if counts.size else 0.0,
            "max": float(counts.max()) if counts.size else 0.0,
        },
        n_empty_cells=n_empty,
        class_counts=class_counts,
        split_counts=split_counts,
        stratified=stratified,
        problems=problems,
        warnings=notes,
    )
