"""``scdlkit.tl.fit``: train a model on an AnnData/MuData and record the run in it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg
from torch import nn

from .. import pipeline
from .._defaults import DEFAULT_SEED
from .._docs import doc_adata, doc_copy, doc_key_added, doc_layer, doc_mod, doc_params
from ..data.fields import ModSpec
from ..data.handler import DataHandler, check_writable
from ..data.record import SPLIT_KEY, check_key_added
from ..data.spec import DataSpec
from ..pipeline.fit import resume_point
from ..train.options import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, TrainerOptions
from ..train.preemption import TrainingInterrupted
from ..train.state import STATE_FOLDER


@doc_params(
    doc_adata=doc_adata,
    doc_mod=doc_mod,
    doc_layer=doc_layer,
    doc_key_added=doc_key_added,
    doc_copy=doc_copy,
)
def fit(
    adata: AnnData | MuData,
    model: str | nn.Module = "vae",
    *,
    task: str | None = None,
    layer: str | None = None,
    mod: ModSpec = None,
    use_raw: bool = False,
    label_key: str | None = None,
    batch_key: str | None = None,
    split_key: str | None = None,
    unlabeled_category: str | None = None,
    use_hvg: bool = False,
    n_top_genes: int = 2000,
    normalize: bool = False,
    log1p: bool = False,
    scale: bool = False,
    val_size: float = 0.15,
    test_size: float = 0.15,
    categorical_covariate_keys: Sequence[str] = (),
    continuous_covariate_keys: Sequence[str] = (),
    key_added: str = "scdlkit",
    checkpoint_dir: str | Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    device: str = "auto",
    seed: int = DEFAULT_SEED,
    resume: bool | str | Path = False,
    init_from: str | Path | None = None,
    copy: bool = False,
    **trainer_kwargs: Any,
) -> AnnData | MuData | None:
    """Train a deep-learning model on the cells of ``adata`` and record the run in it.

    The matrix and ``.obs`` columns are read where they live (layer, ``.raw``,
    MuData modality, backed file) through :func:`~scdlkit.prepare_data`; the
    model is trained with :class:`~scdlkit.Trainer`, its best weights are saved
    as a checkpoint bundle, and the run is recorded in ``.uns[key_added]``.
    Follow with :func:`scdlkit.tl.predict` to write the latent space,
    reconstruction or predicted labels.

    Parameters
    ----------
    {doc_adata}
    model
        A registry name (``"vae"``, ``"autoencoder"``, ``"denoising_autoencoder"``,
        ``"transformer_ae"``, ``"mlp_classifier"``, ``"count_vae"``,
        ``"count_scanvi"``, see :func:`scdlkit.list_models`), a model instance,
        or a wrapped module (:mod:`scdlkit.adapters`).
    task
        ``"representation"``, ``"reconstruction"``, ``"classification"`` or
        ``"annotation"``; defaults to the model's first supported task.
    {doc_layer}
    {doc_mod}
    use_raw
        Read ``.raw.X`` instead of ``.X``.
    label_key
        ``.obs`` column with cell labels (needed for classification; used to
        stratify the split otherwise).
    batch_key
        ``.obs`` column with batches.
    split_key
        ``.obs`` column with ``train``/``val``/``test`` per cell; without it a
        stratified split is drawn and written to ``.obs[f"{key_added}_split"]``.
    unlabeled_category
        Semi-supervised annotation (``"count_scanvi"``): the value of
        ``label_key`` that marks unlabelled cells (missing values do too), such
        as ``"Unknown"``. They shape the latent space but not the classifier.
    use_hvg, n_top_genes, normalize, log1p, scale, val_size, test_size
        Passed to :func:`~scdlkit.prepare_data` (applied per minibatch; the
        data in ``adata`` is not changed). Count models (``"count_vae"``) read
        raw counts: leave ``normalize``/``log1p``/``scale`` off; ``use_hvg``
        then ranks genes with ``flavor="seurat_v3"`` on the counts.
    categorical_covariate_keys, continuous_covariate_keys
        Extra ``.obs`` covariates of count models (besides ``batch_key``).
    {doc_key_added}
    checkpoint_dir
        Parent folder of the checkpoint bundle, which is written to
        ``<checkpoint_dir>/<key_added>_<timestamp>/``. Defaults to
        ``./scdlkit_checkpoints`` in the working directory.
    model_kwargs
        Options for :func:`~scdlkit.create_model` (``latent_dim``, ``hidden_dims``,
        ...); ``num_classes`` is filled in from the labels for classification.
    epochs, batch_size, lr, device, seed
        Training controls (see :class:`~scdlkit.Trainer`); ``seed`` also fixes the
        split and the initial weights. ``epochs`` is an upper bound: training
        stops early when the validation loss has not improved for
        ``early_stopping_patience`` epochs (20 by default, as on every surface).
    resume
        ``True``: continue the newest run of ``key_added`` under
        ``checkpoint_dir`` if it stopped before the end (killed, SIGTERM,
        Ctrl-C), else start a new one; a path: continue that run folder, state
        or bundle. The result equals an uninterrupted run (same epochs, history
        and weights on CPU); a run with other data, model or settings is
        refused, naming what differs. See :doc:`/resume`.
    init_from
        Start from the weights of a trained count model (scANVI from scVI): the
        ``key_added`` of a run recorded in ``adata`` or a checkpoint path. The
        data is read as that run read it (layer, batches, covariates) on its
        genes, and its architecture options are the defaults of ``model_kwargs``.
    {doc_copy}
    **trainer_kwargs
        Further :class:`~scdlkit.Trainer` options (``early_stopping_patience``,
        ``weight_decay``, ``scheduler``, ``mixed_precision``, ``prefetch``,
        ``compile_model``, ``strategy``, ``progress``, ...).
        ``save_every=N`` (epochs) and/or ``save_every_minutes=M`` write the
        training state into ``<run folder>/state/`` while training, so that a
        killed run can be resumed; with them (or ``resume``), SIGTERM and
        Ctrl-C finish the current step, write the state and raise
        :class:`~scdlkit.train.preemption.TrainingInterrupted`. Started by
        ``torchrun --nproc_per_node=N script.py``, the same call trains with
        ``DistributedDataParallel`` (one shard of the training cells per
        process); rank 0 alone writes the checkpoint and the record in
        ``adata``, the other ranks return without changing it.

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Sets the following fields
    (in the modality for ``mod="rna"``, in the MuData for several modalities):

    ``.obs[f"{key_added}_split"]`` : categorical
        ``train``/``val``/``test`` per cell (only without ``split_key``).
    ``.uns[key_added]`` : dict
        ``params``, ``history`` (1-D arrays per column), ``checkpoint`` (path),
        ``model``, ``model_config``, ``task``, ``label_key`` and
        ``label_categories`` (with labels), ``best_epoch``, ``best_loss``,
        ``epochs_run``, ``version``; for ``"count_scanvi"`` also
        ``calibration`` (the temperature fitted on the labelled validation
        cells and the expected calibration error before/after) and
        ``unlabeled_category``/``init_from`` when given.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> scdlkit.tl.fit(adata, "vae", use_raw=True, label_key="bulk_labels", epochs=5)
    >>> scdlkit.tl.predict(adata)
    >>> adata.obsm["X_scdlkit"].shape
    (700, 32)
    """
    start = logg.info(f"training {pipeline.model_name(model)}")
    check_writable(adata)
    adata = adata.copy() if copy else adata
    key_added = check_key_added(key_added)
    handler = DataHandler(adata, mod)
    spec = DataSpec(
        layer=layer, mod=mod, use_raw=use_raw, label_key=label_key, batch_key=batch_key,
        split_key=split_key, unlabeled_category=unlabeled_category, use_hvg=use_hvg,
        n_top_genes=n_top_genes, normalize=normalize, log1p=log1p, scale=scale,
        val_size=val_size, test_size=test_size,
        counts=pipeline.input_kind(model) == "counts",
        categorical_covariate_keys=categorical_covariate_keys,
        continuous_covariate_keys=continuous_covariate_keys,
    )  # fmt: skip
    options = TrainerOptions.from_kwargs(
        {"epochs": epochs, "batch_size": batch_size, "lr": lr, "device": device, "seed": seed,
         **trainer_kwargs}
    )  # fmt: skip
    if options.state_dir is not None:
        msg = (
            "tl.fit keeps the training states in <checkpoint_dir>/<key_added>_<time>/state; "
            "choose the place with checkpoint_dir= instead of state_dir=."
        )
        raise TypeError(msg)
    run_dir, resume_from = resume_point(checkpoint_dir, key_added, resume)
    if options.saves_state or resume:
        options = options.replace(state_dir=run_dir / STATE_FOLDER)
    try:
        run = pipeline.fit(
            adata, model, task=task, spec=spec, model_kwargs=model_kwargs, options=options,
            resume_from=resume_from, init_from=init_from,
        )  # fmt: skip
    except TrainingInterrupted as stopped:
        hint = f"Resume with the same tl.fit call and resume=True (or resume={str(run_dir)!r})."
        raise stopped.with_hint(hint) from None
    if not run.is_main_process:
        logg.info(
            f"    rank {run.trainer.distributed.rank}: training finished; rank 0 writes the "
            "checkpoint and the AnnData record",
            time=start,
        )
        return adata if copy else None

    params = run.params(options, given=trainer_kwargs)
    path = pipeline.save_run(
        run,
        run_dir,
        metadata={"key_added": key_added, "params": params},
        overwrite=run_dir.exists(),  # the run's own folder, holding its states
    )
    existing = handler.clear_previous(key_added, include_split=True)
    split_name = SPLIT_KEY.format(key=key_added)
    if split_key is None:
        prepared = run.prepared
        handler.stage("obs", split_name, pd.Series(prepared.split, index=prepared.obs_names))
    handler.stage("uns", key_added, run.record(params))
    handler.log_overwrite(
        key_added, existing + ([f"uns[{key_added!r}]"] if key_added in handler.target.uns else [])
    )
    handler.commit()
    trainer = run.trainer
    monitored = "val loss" if run.prepared.val is not None else "train loss"
    logg.info(
        f"    finished: {trainer.epochs_run} epochs, best {monitored} {trainer.best_loss:.4g} at epoch "
        f"{trainer.best_epoch}; checkpoint in {path}",
        time=start,
        deep=f"added '{key_added}' (uns)" + ("" if split_key else f", '{split_name}' (obs)"),
    )
    return adata if copy else None
