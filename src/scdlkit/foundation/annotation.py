"""``adapt_annotation``: adapt a local scGPT checkpoint to cell types and compare strategies.

The work is done by :class:`~scdlkit.foundation.AnnotationRunner` (``runner.py``);
this module is the one-call entry point.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from anndata import AnnData
from mudata import MuData

from .._defaults import DEFAULT_SEED
from ..data.fields import ModSpec
from ..data.spec import resolve_seed
from .data import DEFAULT_MIN_GENE_OVERLAP
from .model import ScGPTModel
from .output import AnnotationPrediction
from .runner import SCGPT_BATCH_SIZE, AnnotationRunner
from .strategies import BaseConfig

__all__ = ["AnnotationPrediction", "AnnotationRunner", "adapt_annotation"]


def adapt_annotation(
    adata: AnnData | MuData,
    *,
    label_key: str,
    checkpoint: str | os.PathLike | ScGPTModel,
    strategies: tuple[str, ...] | list[str] = ("frozen_probe", "head"),
    strategy_configs: Mapping[str, BaseConfig | Mapping[str, Any]] | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    mod: ModSpec = None,
    gene_symbols: str | None = None,
    batch_size: int = SCGPT_BATCH_SIZE,
    max_len: int | None = None,
    val_size: float = 0.15,
    test_size: float = 0.15,
    seed: int = DEFAULT_SEED,
    device: str = "auto",
    output_dir: str | os.PathLike | None = None,
    min_gene_overlap: float | int = DEFAULT_MIN_GENE_OVERLAP,
    progress: bool | None = False,
    random_state: int | None = None,
) -> AnnotationRunner:
    """Adapt a local scGPT checkpoint to the cell types of ``adata`` and compare strategies.

    Experimental. Draws a stratified train/validation/test split, fits every
    strategy (training runs through :class:`~scdlkit.Trainer` with the
    ``classification`` task), reports validation and test metrics and keeps the
    best strategy. Nothing is written into ``adata``; use
    :meth:`AnnotationRunner.annotate_adata` for that.

    Parameters
    ----------
    adata
        AnnData or MuData with non-negative expression (counts or log-normalised).
    label_key
        ``.obs`` column with the cell types.
    checkpoint
        Local scGPT checkpoint folder (``args.json``, ``vocab.json``,
        ``best_model.pt``) or a model from :func:`~scdlkit.foundation.load_scgpt`.
    strategies
        Any of ``frozen_probe``, ``head``, ``full_finetune``, ``lora``,
        ``adapter``, ``prefix_tuning``, ``ia3``.
    strategy_configs
        Strategy → config dataclass or dict of fields to override.
    layer, use_raw, mod, gene_symbols
        Where the expression and gene symbols live.
    batch_size, max_len
        Minibatch size; tokens per cell including ``<cls>``.
    val_size, test_size
        Shares of cells in the stratified validation and test splits.
    seed
        Seed of the split, tokenisation, initialisation and training.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    output_dir
        Optional folder for ``comparison.csv`` and training histories.
    min_gene_overlap
        Share (below 1) or number of genes that must be in the vocabulary.
    progress
        Show training progress bars.
    random_state
        Deprecated alias of ``seed`` (``FutureWarning``).

    Returns
    -------
    A fitted :class:`AnnotationRunner`: ``runner.comparison_``,
    ``runner.best_strategy_``, ``runner.predict(adata)``,
    ``runner.annotate_adata(adata)``, ``runner.save(path)``.

    Raises
    ------
    ValueError
        Invalid strategies or configs, fewer than two classes, too few genes in
        the vocabulary, negative values, or split sizes that leave a split empty.
    FileNotFoundError
        The checkpoint folder or one of its files is missing.

    Examples
    --------
    >>> import tempfile, scdlkit
    >>> from scdlkit.foundation import adapt_annotation
    >>> from scdlkit.foundation.testing import make_tiny_checkpoint
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> path = make_tiny_checkpoint(tempfile.mkdtemp(), genes=adata.raw.var_names)
    >>> runner = adapt_annotation(
    ...     adata, label_key="bulk_labels", checkpoint=path, use_raw=True, max_len=128
    ... )
    >>> runner.best_strategy_ in ("frozen_probe", "head")
    True
    """
    seed = resolve_seed(seed, random_state, where="adapt_annotation")
    runner = AnnotationRunner(
        checkpoint, label_key=label_key, strategies=strategies, strategy_configs=strategy_configs,
        layer=layer, use_raw=use_raw, mod=mod, gene_symbols=gene_symbols, batch_size=batch_size,
        max_len=max_len, val_size=val_size, test_size=test_size, seed=seed, device=device,
        output_dir=output_dir, min_gene_overlap=min_gene_overlap, progress=progress,
    )  # fmt: skip
    return runner.fit_compare(adata)
