"""Reference mapping (scArches): a query with new batches onto a trained count model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg

from .._errors import format_names
from ..data import CategoryEncoder, PreparedData, transform_adata
from ..data.counts import Covariates
from ..data.fields import get_obs_column, resolve_fields
from ..data.splits import check_split_sizes, draw_split, split_categorical
from ..models import create_model, get_model_class
from ..train import Trainer
from ..train.bundle import WEIGHTS_FILE, file_digest
from ..train.options import TrainerOptions
from .fit import FittedRun
from .load import LoadedRun, run_checkpoint


def check_reference(reference: LoadedRun) -> None:
    """Refuse references that mapping cannot extend or move.

    Raises
    ------
    ValueError
        Not a count model, trained without batches, or with a batch-blind encoder.
    """
    name = reference.model
    if getattr(get_model_class(name), "input_kind", None) != "counts":
        msg = (
            f"map_query maps onto count models ('count_vae', 'count_scanvi'); the reference is "
            f"{name!r}. For other models use tl.predict(query, checkpoint=...) on shared batches."
        )
        raise ValueError(msg)
    fix = (
        "Train the reference with batch_key= and model_kwargs={'encode_covariates': True} "
        f"(e.g. tl.fit(ref, {name!r}, batch_key='batch', model_kwargs={{'encode_covariates': True}}))."
    )
    if reference.encoder("batch") is None:
        msg = f"The reference was trained without batch_key, so new batches have nothing to extend. {fix}"
        raise ValueError(msg)
    if not reference.config["model"]["kwargs"].get("encode_covariates", False):
        msg = (
            "The reference's encoder does not see the batch (encode_covariates=False, scvi-tools' "
            "default), so training the query's batch parameters cannot move the query's latent "
            f"space: mapping would change nothing. {fix}"
        )
        raise ValueError(msg)


def query_batches(
    query: AnnData | MuData, reference: LoadedRun, batch_key: str | None
) -> tuple[CategoryEncoder, list[str]]:
    """Return the reference's batch encoder extended by the query's batches (``batch_key``), and the new ones.

    Raises
    ------
    MissingKeyError
        The query lacks ``batch_key``.
    ValueError
        Missing batch values, or no new batch (nothing to map).
    """
    trained = reference.encoder("batch")
    key = batch_key or trained.key
    mod = reference.preprocessing.get("mod") if isinstance(query, MuData) else None
    fields = resolve_fields(
        query, layer=reference.preprocessing.get("layer"), mod=mod,
        use_raw=bool(reference.preprocessing.get("use_raw")),
    )  # fmt: skip
    values = get_obs_column(query, key, fields.obs_names, mod=mod)
    if values.isna().any():
        msg = f"The query's batch column {key!r} has {int(values.isna().sum())} missing values; fill them."
        raise ValueError(msg)
    present = (
        [str(c) for c in values.cat.categories if (values == c).any()]
        if isinstance(values.dtype, pd.CategoricalDtype)
        else sorted(values.astype(str).unique())
    )
    encoder = CategoryEncoder(trained.categories, key=key).extended(present)
    new = list(encoder.categories[len(trained.categories) :])
    if not new:
        msg = (
            f"Every query batch ({format_names(present)}) is a reference batch: there is nothing to "
            "map. Predict directly with tl.predict(query, checkpoint=<reference checkpoint>)."
        )
        raise ValueError(msg)
    return encoder, new


def reference_identity(reference: LoadedRun) -> dict[str, str]:
    """Return the reference bundle's path and the SHA-256 of its weights."""
    return {
        "checkpoint": str(reference.path.resolve()),
        "sha256": file_digest(reference.path / WEIGHTS_FILE),
    }


def map_query(
    query: AnnData | MuData,
    reference: LoadedRun,
    *,
    batch_key: str | None = None,
    min_gene_overlap: float = 0.5,
    unfreeze: Sequence[str] = (),
    val_size: float = 0.1,
    options: TrainerOptions | None = None,
) -> tuple[FittedRun, dict[str, Any]]:
    """Extend ``reference`` with the query's new batches and train only their parameters on the query.

    Genes are matched by name (missing reference genes filled with zeros);
    the new model (``n_batch_extra`` new batches) takes the reference weights,
    which stay frozen (``requires_grad=False``; normalisation statistics
    fixed), so the model's outputs for reference cells do not change.

    Returns
    -------
    The fitted run (to save and record like any other) and the mapping
    record: ``reference`` (checkpoint, sha256), ``new_batches``,
    ``missing_genes``, ``trainable`` (parameter names), ``unfreeze``.
    """
    options = options or TrainerOptions()
    check_reference(reference)
    check_split_sizes(val_size, 0.0)
    if not 0.0 < float(min_gene_overlap) <= 1.0:
        msg = f"min_gene_overlap must be a fraction in (0, 1], got {min_gene_overlap!r}."
        raise ValueError(msg)
    encoder, new = query_batches(query, reference, batch_key)
    preprocessing = {**reference.preprocessing, "min_feature_overlap": float(min_gene_overlap)}
    data = transform_adata(
        query, preprocessing, batch_encoder=encoder,
        mod=reference.preprocessing.get("mod") if isinstance(query, MuData) else None,
    )  # fmt: skip
    features = pd.Index(preprocessing["feature_names"])
    source_names = resolve_fields(
        query, layer=preprocessing.get("layer"),
        mod=preprocessing.get("mod") if isinstance(query, MuData) else None,
        use_raw=bool(preprocessing.get("use_raw")),
    ).feature_names  # fmt: skip
    missing_genes = int((~features.isin(source_names)).sum())

    kwargs = {**reference.config["model"]["kwargs"], "n_batch_extra": len(new)}
    module = create_model(reference.model, seed=options.seed, **kwargs)
    reference_weights = reference.trainer.model.state_dict()
    result = module.load_state_dict(reference_weights, strict=False)
    module.init_extra_batches()
    trainable = module.freeze_reference(unfreeze)
    if result.unexpected_keys or not set(result.missing_keys) <= set(trainable):
        msg = f"The reference weights do not fit the mapped model: {result}."
        raise ValueError(msg)

    assignment = draw_split(len(data), val_size=val_size, test_size=0.0, seed=options.seed)
    train = data.subset(np.flatnonzero(assignment == "train"), "train")
    val_rows = np.flatnonzero(assignment == "val")
    val = data.subset(val_rows, "val") if val_rows.shape[0] else None
    spec = reference.spec.replace(
        batch_key=encoder.key, split_key=None, val_size=val_size, test_size=0.0
    )
    prepared = PreparedData(
        train=train, val=val, test=None, input_dim=data.n_features,
        feature_names=list(features), label_encoder=reference.encoder("label"),
        batch_encoder=encoder, preprocessing=preprocessing, split=split_categorical(assignment),
        obs_names=data.source_obs_names, source=str(reference.preprocessing.get("source", "query")),
        spec=spec, seed=options.seed, raw_counts=True, covariates=Covariates.from_dict(reference.preprocessing.get("covariates")),
    )  # fmt: skip
    trainer = Trainer.from_options(module, reference.task, options)
    started = time.perf_counter()
    logg.info(
        f"    mapping {len(data)} query cells: new batches {format_names(new)}; training "
        f"{format_names(trainable)}"
    )
    trainer.fit(train, val, prepared=prepared)
    run = FittedRun(
        trainer=trainer, prepared=prepared, model=reference.model, task=reference.task,
        model_kwargs={"n_batch_extra": len(new)}, seconds=time.perf_counter() - started,
    )  # fmt: skip
    mapping = {
        "reference": reference_identity(reference),
        "new_batches": new,
        "missing_genes": missing_genes,
        "min_gene_overlap": float(min_gene_overlap),
        "trainable": trainable,
        "unfreeze": list(unfreeze),
    }
    return run, mapping


def reference_path(reference: AnnData | MuData | str | Path, key: str) -> Path:
    """Return the bundle of ``reference``: a path as is, or the checkpoint of its run ``uns[key]``."""
    if isinstance(reference, AnnData | MuData):
        return run_checkpoint(reference, key)[0]
    return Path(str(reference))
