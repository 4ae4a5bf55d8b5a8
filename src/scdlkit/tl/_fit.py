"""``scdlkit.tl.fit``: train a model on an AnnData/MuData and record the run in it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg
from torch import nn

from .._docs import doc_adata, doc_copy, doc_key_added, doc_layer, doc_mod, doc_params
from .._errors import format_names
from ..data import prepare_data
from ..data.fields import ModSpec
from ._handler import DataHandler, check_writable

#: Default parent folder of checkpoint bundles, relative to the working directory.
DEFAULT_CHECKPOINT_DIR = "scdlkit_checkpoints"


def _model_task(model: str | nn.Module, task: str | None) -> str:
    """Return the task to train, checked against the model before any data is read."""
    from ..models import get_model_class
    from ..tasks import get_task

    if not isinstance(model, str):
        if task is not None:
            get_task(task).check_model(model)
    if isinstance(model, str):
        supported = get_model_class(model).supported_tasks
    else:
        supported = tuple(getattr(model, "supported_tasks", ()))
    if task is not None:
        name = get_task(task).name
        if name not in supported:
            msg = (
                f"Model {model!r} does not support the {name!r} task (its supported tasks: "
                f"{format_names(supported)}). Pass task= one of those or choose another model "
                "(scdlkit.list_models() shows what each supports)."
            )
            raise ValueError(msg)
        return name
    if not supported:
        msg = (
            f"{type(model).__name__} declares no supported_tasks; pass task= or wrap the module with "
            "scdlkit.adapters.wrap_reconstruction_module / wrap_classification_module."
        )
        raise ValueError(msg)
    return supported[0]


def _build_model(
    model: str | nn.Module, prepared: Any, task: str, model_kwargs: dict[str, Any], seed: int
) -> nn.Module:
    from ..models import create_model

    if isinstance(model, str):
        kwargs = dict(model_kwargs)
        if task == "classification" and "num_classes" not in kwargs:
            kwargs["num_classes"] = prepared.label_encoder.n_categories
        return create_model(model, input_dim=prepared.input_dim, seed=seed, **kwargs)
    if model_kwargs:
        msg = "model_kwargs only apply when model is a registry name; configure the model instance yourself."
        raise ValueError(msg)
    expected = getattr(model, "input_dim", None)
    if expected is not None and expected != prepared.input_dim:
        msg = (
            f"The model expects {expected} input features but the prepared data has {prepared.input_dim}; "
            "build the model with input_dim matching the data (after use_hvg/layer selection)."
        )
        raise ValueError(msg)
    return model


def _check_labels(task: str, label_key: str | None, prepared: Any) -> None:
    if task != "classification":
        return
    if label_key is None:
        msg = "task='classification' needs label_key= (the .obs column with the cell labels)."
        raise ValueError(msg)
    if prepared.label_encoder.n_categories < 2:
        msg = (
            f"label_key {label_key!r} has a single class ({prepared.label_encoder.categories[0]!r}); "
            "classification needs at least two."
        )
        raise ValueError(msg)


def _history_record(frame: Any) -> dict[str, np.ndarray]:
    return {column: frame[column].to_numpy(dtype=np.float64) for column in frame.columns}


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
    use_hvg: bool = False,
    n_top_genes: int = 2000,
    normalize: bool = False,
    log1p: bool = False,
    scale: bool = False,
    val_size: float = 0.15,
    test_size: float = 0.15,
    key_added: str = "scdlkit",
    checkpoint_dir: str | Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
    epochs: int = 200,
    batch_size: int = 256,
    lr: float = 1e-3,
    device: str = "auto",
    seed: int = 42,
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
        ``"transformer_ae"``, ``"mlp_classifier"``, see :func:`scdlkit.list_models`),
        a model instance, or a wrapped module (:mod:`scdlkit.adapters`).
    task
        ``"representation"``, ``"reconstruction"`` or ``"classification"``;
        defaults to the model's first supported task.
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
    use_hvg, n_top_genes, normalize, log1p, scale, val_size, test_size
        Passed to :func:`~scdlkit.prepare_data` (applied per minibatch; the
        data in ``adata`` is not changed).
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
        ``early_stopping_patience`` epochs (10 by default).
    {doc_copy}
    **trainer_kwargs
        Further :class:`~scdlkit.Trainer` options (``early_stopping_patience``,
        ``weight_decay``, ``scheduler``, ``mixed_precision``, ``prefetch``,
        ``compile_model``, ``strategy``, ``progress``, ...). Started by
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
        ``epochs_run``, ``version``.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> scdlkit.tl.fit(adata, "vae", use_raw=True, label_key="bulk_labels", epochs=5)
    >>> scdlkit.tl.predict(adata)
    >>> adata.obsm["X_scdlkit"].shape
    (700, 32)
    """
    from .. import __version__
    from ..train import Trainer

    start = logg.info(f"training {model if isinstance(model, str) else type(model).__name__}")
    check_writable(adata)
    adata = adata.copy() if copy else adata
    if not isinstance(key_added, str) or not key_added or "/" in key_added:
        msg = f"key_added must be a non-empty string without '/', got {key_added!r}."
        raise ValueError(msg)
    handler = DataHandler(adata, mod)
    task_name = _model_task(model, task)
    prepared = prepare_data(
        adata, layer=layer, mod=mod, use_raw=use_raw, use_hvg=use_hvg, n_top_genes=n_top_genes,
        normalize=normalize, log1p=log1p, scale=scale, label_key=label_key, batch_key=batch_key,
        split_key=split_key, val_size=val_size, test_size=test_size, random_state=seed,
    )  # fmt: skip
    _check_labels(task_name, label_key, prepared)
    module = _build_model(model, prepared, task_name, model_kwargs or {}, seed)
    trainer = Trainer(
        module, task or task_name, epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed,
        **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(prepared.train, prepared.val)
    if not trainer.is_main_process:
        logg.info(
            f"    rank {trainer.distributed.rank}: training finished; rank 0 writes the checkpoint "
            "and the AnnData record",
            time=start,
        )
        return adata if copy else None

    params = {
        "model": model if isinstance(model, str) else type(model).__name__,
        "task": task_name, "layer": layer, "mod": mod, "use_raw": use_raw, "label_key": label_key,
        "batch_key": batch_key, "split_key": split_key, "use_hvg": use_hvg, "n_top_genes": n_top_genes,
        "normalize": normalize, "log1p": log1p, "scale": scale, "val_size": val_size,
        "test_size": test_size, "model_kwargs": model_kwargs or {}, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "device": str(trainer.device), "seed": seed,
        **{k: v for k, v in trainer.settings().items() if k in trainer_kwargs},
    }  # fmt: skip
    parent = (
        Path(checkpoint_dir) if checkpoint_dir is not None else Path.cwd() / DEFAULT_CHECKPOINT_DIR
    )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = trainer.save_checkpoint(
        parent / f"{key_added}_{stamp}",
        prepared=prepared,
        metadata={"key_added": key_added, "params": params},
    ).resolve()

    model_config = getattr(module, "config", None) or {"name": None, "kwargs": {}}
    record: dict[str, Any] = {
        "params": params,
        "history": _history_record(trainer.history_frame),
        "checkpoint": str(path),
        "model": model_config.get("name") or type(module).__name__,
        "model_config": model_config.get("kwargs", {}),
        "task": task_name,
        "best_epoch": trainer.best_epoch,
        "best_loss": trainer.best_loss,
        "epochs_run": trainer.epochs_run,
        "version": __version__,
    }
    if prepared.label_encoder is not None:
        record["label_key"] = label_key
        record["label_categories"] = list(prepared.label_encoder.categories)
    existing = handler.clear_previous(key_added, include_split=True)
    if split_key is None:
        handler.stage(
            "obs", f"{key_added}_split", pd.Series(prepared.split, index=prepared.obs_names)
        )
    handler.stage("uns", key_added, record)
    handler.log_overwrite(
        key_added, existing + ([f"uns[{key_added!r}]"] if key_added in handler.target.uns else [])
    )
    handler.commit()
    monitored = "val loss" if prepared.val is not None else "train loss"
    logg.info(
        f"    finished: {trainer.epochs_run} epochs, best {monitored} {trainer.best_loss:.4g} at epoch "
        f"{trainer.best_epoch}; checkpoint in {path}",
        time=start,
        deep=f"added '{key_added}' (uns)" + ("" if split_key else f", '{key_added}_split' (obs)"),
    )
    return adata if copy else None
