"""Reference mapping (scArches): a query with new batches onto a trained count model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg

from .._errors import format_names
from ..data import CategoryEncoder, PreparedData, SplitData, transform_adata
from ..data.counts import Covariates
from ..data.fields import Fields, ModSpec, get_obs_column, resolve_fields
from ..data.splits import check_split_sizes, draw_split, split_categorical
from ..models import create_model, get_model_class
from ..train import Trainer
from ..train.bundle import WEIGHTS_FILE, file_digest, read_manifest, read_weights
from ..train.options import TrainerOptions
from .fit import FittedRun
from .load import LoadedRun, run_checkpoint


@dataclass
class MappedQuery:
    """A query mapped onto a reference: the run, what mapping adds to its record, the query's cells.

    Attributes
    ----------
    run
        The fitted run of the mapped model (saved and recorded like any other).
    record
        ``reference`` (checkpoint, sha256), ``new_batches``, ``missing_genes``,
        ``min_gene_overlap``, ``trainable`` (parameter names), ``unfreeze``.
    data
        Every query cell prepared for the mapped model (to predict on).
    mod
        The MuData modality read (``None`` for an AnnData).
    """

    run: FittedRun
    record: dict[str, Any]
    data: SplitData
    mod: ModSpec = None


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
    query: AnnData | MuData,
    fields: Fields,
    reference: LoadedRun,
    batch_key: str | None,
    mod: ModSpec = None,
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
    values = get_obs_column(query, key, fields.obs_names, mod=mod)
    present = CategoryEncoder.fit(values, key=key).categories
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
    """Return the reference bundle's path and the SHA-256 of its weights (from its manifest when it has one)."""
    recorded = (read_manifest(reference.path) or {}).get(WEIGHTS_FILE, {}).get("sha256")
    return {
        "checkpoint": str(reference.path.resolve()),
        "sha256": recorded or file_digest(reference.path / WEIGHTS_FILE),
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
) -> MappedQuery:
    """Extend ``reference`` with the query's new batches and train only their parameters on the query.

    Genes are matched by name (missing reference genes filled with zeros);
    the new model (``n_batch_extra`` new batches) takes the reference weights,
    which stay frozen (``requires_grad=False``; normalisation statistics
    fixed), so the model's outputs for reference cells do not change.

    Returns
    -------
    The :class:`MappedQuery`.
    """
    options = options or TrainerOptions()
    check_reference(reference)
    check_split_sizes(val_size, 0.0)
    if not 0.0 < float(min_gene_overlap) <= 1.0:
        msg = f"min_gene_overlap must be a fraction in (0, 1], got {min_gene_overlap!r}."
        raise ValueError(msg)
    preprocessing = {**reference.preprocessing, "min_feature_overlap": float(min_gene_overlap)}
    mod = preprocessing.get("mod") if isinstance(query, MuData) else None
    fields = resolve_fields(
        query, layer=preprocessing.get("layer"), mod=mod,
        use_raw=bool(preprocessing.get("use_raw")),
    )  # fmt: skip
    encoder, new = query_batches(query, fields, reference, batch_key, mod)
    data = transform_adata(query, preprocessing, batch_encoder=encoder, mod=mod)
    features = pd.Index(preprocessing["feature_names"])
    missing_genes = int((~features.isin(fields.feature_names)).sum())

    kwargs = {**reference.config["model"]["kwargs"], "n_batch_extra": len(new)}
    module = create_model(reference.model, seed=options.seed, **kwargs)
    result = module.load_state_dict(read_weights(reference.path), strict=False)
    module.init_extra_batches()
    trainable = module.freeze_reference(unfreeze)
    if result.unexpected_keys or not set(result.missing_keys) <= set(trainable):
        msg = (
            f"The reference weights in {str(reference.path)!r} do not fit its own model "
            f"({reference.model}): {result}. The bundle is damaged or was written by another "
            "scdlkit; retrain the reference."
        )
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
        spec=spec, seed=options.seed, raw_counts=True,
        covariates=Covariates.from_dict(preprocessing.get("covariates")),
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
    record = {
        "reference": reference_identity(reference),
        "new_batches": new,
        "missing_genes": missing_genes,
        "min_gene_overlap": float(min_gene_overlap),
        "trainable": trainable,
        "unfreeze": list(unfreeze),
    }
    return MappedQuery(run=run, record=record, data=data, mod=mod)


def reference_path(reference: AnnData | MuData | str | Path, key: str) -> Path:
    """Return the bundle of ``reference``: a path as is, or the checkpoint of its run ``uns[key]``."""
    if isinstance(reference, AnnData | MuData):
        return run_checkpoint(reference, key)[0]
    return Path(str(reference))
