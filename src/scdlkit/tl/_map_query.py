"""``scdlkit.tl.map_query``: map a query with new batches onto a trained count model (scArches)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg

from .. import pipeline
from .._defaults import DEFAULT_SEED
from .._docs import doc_copy, doc_params
from ..data.handler import DataHandler, check_writable
from ..data.record import SPLIT_KEY, check_key_added
from ..pipeline.mapping import reference_path
from ..train.options import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, TrainerOptions
from ._outputs import stage_outputs


@doc_params(doc_copy=doc_copy)
def map_query(
    query: AnnData | MuData,
    reference: AnnData | MuData | str | Path,
    *,
    key: str = "scdlkit",
    batch_key: str | None = None,
    min_gene_overlap: float = 0.5,
    unfreeze: Sequence[str] = (),
    key_added: str | None = None,
    checkpoint_dir: str | Path | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    weight_decay: float = 0.0,
    val_size: float = 0.1,
    device: str = "auto",
    seed: int = DEFAULT_SEED,
    copy: bool = False,
    **trainer_kwargs: Any,
) -> AnnData | MuData | None:
    """Map the cells of ``query`` (new donors, technologies) onto a trained count model and label them.

    Reference mapping as scArches does it ("architecture surgery"): the
    reference model (``"count_vae"`` or ``"count_scanvi"``) gets new batch
    parameters for the query's batches, and only those are trained, on the
    query's counts; every reference weight stays as it was, so the reference
    cells keep exactly their latent space and the query lands in the same
    space. With a ``"count_scanvi"`` reference the query cells are labelled by
    its (calibrated) classifier. The mapped model is saved as a bundle of its
    own, so ``tl.predict(query, key=key_added)`` works again from the query's
    ``.h5ad`` alone.

    Parameters
    ----------
    query
        AnnData (or MuData) with the query's raw counts where the reference
        read them (same layer) and a batch column.
    reference
        The reference AnnData holding the run under ``.uns[key]``, or the
        reference run's checkpoint folder.
    key
        ``key_added`` of the reference run.
    batch_key
        The query's batch column (defaults to the reference's ``batch_key``).
        Its values that are not reference batches become new batches.
    min_gene_overlap
        Smallest share of the reference's genes the query must have. Missing
        reference genes are filled with zeros (a warning gives their number).
    unfreeze
        Name prefixes of reference parameters to train too (e.g. ``"decoder"``);
        the reference's outputs then change. Empty by default.
    key_added
        Prefix of what is written into ``query`` (defaults to ``key``).
    checkpoint_dir
        Parent folder of the mapped bundle (``./scdlkit_checkpoints`` by default).
    epochs, batch_size, lr, weight_decay, val_size, device, seed
        Training of the new parameters: a ``val_size`` share of the query cells
        is held out for early stopping (patience 20 epochs, as ``tl.fit``).
        ``weight_decay`` reaches the new parameters only: the frozen ones are
        not in the optimizer.
    {doc_copy}
    **trainer_kwargs
        Further :class:`~scdlkit.Trainer` options (``early_stopping_patience``, ``progress``, ...).

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Sets, with
    ``prefix = key_added or key``:

    ``.obsm[f"X_{prefix}"]`` : float32 array
        The query's latent space, the same space as the reference's.
    ``.obs[f"{prefix}_prediction"]`` : categorical, ``.obs[f"{prefix}_confidence"]`` : float
        Labels transferred by a ``"count_scanvi"`` reference (original names)
        and their probability.
    ``.obsm[f"{prefix}_probabilities"]``, ``.obsm[f"{prefix}_logits"]`` : float32 arrays
        Calibrated class probabilities and logits, columns in
        ``.uns[prefix]["label_categories"]`` order.
    ``.obs[f"{prefix}_split"]`` : categorical
        ``train``/``val`` cells of the mapping.
    ``.uns[prefix]`` : dict
        The run record (as :func:`~scdlkit.tl.fit` writes; ``checkpoint`` is the
        mapped bundle) plus ``reference`` (``checkpoint``, ``sha256`` of its
        weights), ``new_batches``, ``missing_genes``, ``trainable``.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.synthetic_counts(n_cells=300, n_genes=60, n_batches=3, seed=0)
    >>> is_query = adata.obs["batch"] == "batch_2"
    >>> ref, query = adata[~is_query].copy(), adata[is_query].copy()
    >>> scdlkit.tl.fit(ref, "count_vae", batch_key="batch", epochs=3,
    ...                model_kwargs={"encode_covariates": True}, progress=False)  # fmt: skip
    >>> scdlkit.tl.map_query(query, ref, epochs=3, progress=False)
    >>> query.obsm["X_scdlkit"].shape, list(query.uns["scdlkit"]["new_batches"])
    ((85, 10), ['batch_2'])
    """
    check_writable(query)
    query = query.copy() if copy else query
    prefix = check_key_added(key_added or key)
    start = logg.info(f"mapping the query onto scdlkit run {key!r}")
    loaded = pipeline.load_run(reference_path(reference, key), device=device)
    options = TrainerOptions.from_kwargs(
        {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
         "device": device, "seed": seed, **trainer_kwargs}
    )  # fmt: skip
    mapped = pipeline.map_query(
        query, loaded, batch_key=batch_key, min_gene_overlap=min_gene_overlap,
        unfreeze=unfreeze, val_size=val_size, options=options,
    )  # fmt: skip
    run = mapped.run
    if not run.is_main_process:
        return query if copy else None
    params = {
        **run.params(options, given=trainer_kwargs),
        "reference_key": key,
        "min_gene_overlap": float(min_gene_overlap),
    }
    path = pipeline.save_run(
        run,
        pipeline.checkpoint_path(checkpoint_dir, prefix),
        metadata={"key_added": prefix, "params": params, "mapping": mapped.record},
    )
    record = {**run.record(params), **mapped.record}
    handler = DataHandler(query, mapped.mod)
    existing = handler.clear_previous(prefix, include_split=True)
    split_name = SPLIT_KEY.format(key=prefix)
    handler.stage("obs", split_name, pd.Series(run.prepared.split, index=run.prepared.obs_names))
    written = stage_outputs(
        handler, run.loaded(), mapped.data, prefix, pipeline.DEFAULT_OUTPUTS[run.task], record,
        batch_size=max(int(batch_size), 1024),
    )  # fmt: skip
    handler.stage("uns", prefix, record)
    handler.log_overwrite(prefix, existing)
    handler.commit()
    logg.info(
        f"    finished: {run.trainer.epochs_run} epochs; mapped bundle in {path}",
        time=start,
        deep="added " + ", ".join([*written, f"'{split_name}' (obs)", f"'{prefix}' (uns)"]),
    )
    return query if copy else None
