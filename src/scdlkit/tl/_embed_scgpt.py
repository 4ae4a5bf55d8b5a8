"""``scdlkit.tl.embed_scgpt``: frozen scGPT cell embeddings from a local checkpoint (experimental)."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg

from .._docs import doc_adata, doc_copy, doc_key_added, doc_layer, doc_mod, doc_params
from .._version import __version__
from ..data.fields import ModSpec
from ..data.handler import DataHandler, check_writable
from ..data.record import align_rows, check_key_added, latent_key

if TYPE_CHECKING:
    from ..foundation import ScGPTModel


#: Default ``key_added`` of :func:`embed_scgpt` (writes ``.obsm["X_scgpt"]`` and ``.uns["scgpt"]``).
DEFAULT_SCGPT_KEY = "scgpt"


def _prefix(key_added: object) -> str:
    """Return the prefix of ``key_added``; an old full ``.obsm`` key (``"X_..."``) warns and is stripped."""
    key = check_key_added(key_added)
    if key.startswith("X_") and len(key) > 2:
        prefix = key.removeprefix("X_")
        warnings.warn(
            f"embed_scgpt: key_added is now a prefix (as on every scdlkit writer): pass "
            f"key_added={prefix!r}, which writes .obsm['X_{prefix}'] and .uns[{prefix!r}]. The old "
            f"full .obsm key {key!r} is still understood for now.",
            FutureWarning,
            stacklevel=3,
        )
        return prefix
    return key


@doc_params(
    doc_adata=doc_adata,
    doc_layer=doc_layer,
    doc_mod=doc_mod,
    doc_key_added=doc_key_added,
    doc_copy=doc_copy,
)
def embed_scgpt(
    adata: AnnData | MuData,
    *,
    checkpoint: str | os.PathLike | ScGPTModel,
    key_added: str = DEFAULT_SCGPT_KEY,
    layer: str | None = None,
    use_raw: bool = False,
    mod: ModSpec = None,
    gene_symbols: str | None = None,
    batch_size: int = 64,
    max_len: int | None = None,
    device: str = "auto",
    seed: int = 0,
    min_gene_overlap: float | int = 0.5,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Embed every cell with a frozen scGPT model and write the ``<cls>`` embeddings.

    Experimental. Genes are matched to the checkpoint vocabulary by symbol;
    each cell's expressed genes are binned by its own quantiles, subsampled
    (seeded) to ``max_len - 1`` when there are more, and prefixed with
    ``<cls>``. The ``<cls>`` outputs are L2-normalised, as in scGPT's
    zero-shot pipeline. Tokens depend only on the cell, its name and ``seed``,
    so embeddings do not change with ``batch_size`` or cell order. Nothing is
    downloaded: ``checkpoint`` is a local folder.

    Parameters
    ----------
    {doc_adata}
    checkpoint
        scGPT checkpoint folder (``args.json``, ``vocab.json``, ``best_model.pt``)
        or a model from :func:`scdlkit.foundation.load_scgpt`.
    {doc_key_added}
        The embeddings go to ``.obsm[f"X_{key_added}"]``. An old full ``.obsm``
        key such as ``"X_scgpt"`` still works, with a ``FutureWarning``.
    {doc_layer}
        Values must be non-negative (counts or log-normalised, not scaled).
    use_raw
        Read ``.raw.X`` (and ``.raw.var_names``).
    {doc_mod}
    gene_symbols
        ``.var`` column with gene symbols when the var_names are not symbols.
    batch_size
        Cells per batch.
    max_len
        Tokens per cell including ``<cls>``; defaults to the checkpoint's
        ``max_seq_len`` (1200 for the official models).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    seed
        Seed of bin tie-breaking and gene subsampling.
    min_gene_overlap
        Share (below 1) or number of the data's genes that must be in the vocabulary.
    {doc_copy}

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Sets:

    ``.obsm[f"X_{key_added}"]`` : float32 ``(n_cells, embsize)``
        Unit-norm cell embeddings (``sc.pp.neighbors(adata, use_rep="X_scgpt")``).
    ``.uns[key_added]`` : dict
        ``params``, ``checkpoint`` (path, ``weights_sha256``, ``vocab_sha256``),
        ``n_genes_matched``, ``gene_overlap``, ``embsize``, ``version``.

    Raises
    ------
    FileNotFoundError
        The checkpoint folder or one of its files is missing.
    ValueError
        Too few genes in the vocabulary, negative or non-finite values, an
        invalid checkpoint, or an AnnData view.

    Examples
    --------
    >>> import tempfile, scdlkit
    >>> from scdlkit.foundation.testing import make_tiny_checkpoint
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> path = make_tiny_checkpoint(tempfile.mkdtemp(), genes=adata.raw.var_names)
    >>> scdlkit.tl.embed_scgpt(adata, checkpoint=path, use_raw=True, max_len=256)
    >>> adata.obsm["X_scgpt"].shape
    (700, 16)
    """
    from ..foundation import (
        EmbeddingTask,
        ScGPTModel,
        ScGPTTokenizer,
        TokenLoader,
        TokenSource,
        load_scgpt,
    )
    from ..train import Trainer
    from ..train.options import TrainerOptions

    key = _prefix(key_added)
    check_writable(adata)
    start = logg.info("computing scGPT embeddings")
    adata = adata.copy() if copy else adata
    handler = DataHandler(adata, mod)
    model = (
        checkpoint if isinstance(checkpoint, ScGPTModel) else load_scgpt(checkpoint, device=device)
    )
    tokenizer = ScGPTTokenizer.from_model(model, max_len=max_len, seed=seed)
    source = TokenSource.from_adata(
        adata, model.vocab, layer=layer, use_raw=use_raw, mod=mod, gene_symbols=gene_symbols,
        min_gene_overlap=min_gene_overlap,
    )  # fmt: skip
    loader = TokenLoader(source, tokenizer, batch_size=batch_size)
    options = TrainerOptions(batch_size=batch_size, device=device, seed=seed, progress=False)
    trainer = Trainer.from_options(model, EmbeddingTask(), options)
    latent = trainer.predict_dataset(loader, include_inputs=False)["latent"].astype(np.float32)
    latent = align_rows(latent, source.obs_names, handler.target.obs_names)
    params: dict[str, Any] = {
        "layer": layer, "use_raw": use_raw, "mod": mod, "gene_symbols": gene_symbols,
        "batch_size": batch_size, "device": str(trainer.device), "min_gene_overlap": min_gene_overlap,
        **tokenizer.to_dict(),
    }  # fmt: skip
    record = {
        "params": params,
        "checkpoint": model.identity.to_dict() if model.identity is not None else {},
        "n_genes_matched": source.match.n_matched,
        "gene_overlap": source.match.overlap,
        "embsize": model.embsize,
        "version": __version__,
    }
    obsm_key = latent_key(key)
    handler.stage("obsm", obsm_key, latent)
    handler.stage("uns", key, record)
    handler.commit()
    logg.info("    finished", time=start, deep=f"added {obsm_key!r} (obsm), {key!r} (uns)")
    return adata if copy else None
