"""Stage a loaded run's outputs for a dataset into an AnnData (shared by ``tl.predict`` and ``tl.map_query``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .. import pipeline
from .._version import __version__
from ..data import SplitData
from ..data.handler import DataHandler
from ..data.record import align_rows, latent_key, reconstruction_key, reconstruction_location
from ..evaluation._probabilities import predicted_codes, softmax
from ..pipeline.load import transform_batch_names


def stage_genes(
    handler: DataHandler,
    prefix: str,
    name: str,
    values: np.ndarray,
    features: list[str],
    record: dict,
) -> str:
    """Stage a cells x model-genes output where :func:`~scdlkit.data.record.reconstruction_location` says."""
    target = handler.target
    record["reconstruction_features"] = features
    slot, positions = reconstruction_location(target, prefix, features)
    if slot == "obsm":
        handler.stage("obsm", name, values)
        return f"'{name}' (obsm; its features are in uns['{prefix}']['reconstruction_features'])"
    n_vars = target.var_names.shape[0]
    if positions.shape[0] == n_vars and np.array_equal(positions, np.arange(n_vars)):
        layer = values
    else:
        layer = np.full((values.shape[0], n_vars), np.nan, dtype=np.float32)
        layer[:, positions] = values
    handler.stage("layers", name, layer)
    return f"'{name}' (layers)"


def stage_outputs(
    handler: DataHandler,
    loaded: pipeline.LoadedRun,
    data: SplitData,
    prefix: str,
    requested: Sequence[str],
    new_record: dict[str, Any],
    *,
    batch_size: int,
    library_size: float | str = 1e4,
    transform_batch: Any = None,
) -> list[str]:
    """Run ``loaded`` over ``data`` (the handler's cells, from ``loaded.query``) and stage the ``requested`` outputs.

    ``new_record`` (the ``.uns[prefix]`` to write) gets the checkpoint, task,
    model, label categories and ``outputs``; nothing is committed. Returns
    what was staged, for the log.

    Raises
    ------
    ValueError
        ``"corrected"`` without ``transform_batch``, or an output the model does not give.
    """
    needed = {pipeline.OUTPUTS[name] for name in requested} - {None}
    if "corrected" in requested and transform_batch is None:
        msg = (
            "outputs='corrected' decodes every cell as if it came from one batch: pass "
            "transform_batch= a training batch (or a list of them, averaged)."
        )
        raise ValueError(msg)
    expression = {
        name: loaded.expression(
            data,
            library_size=library_size,
            batch_size=batch_size,
            transform_batch=transform_batch if name == "corrected" else None,
        )  # fmt: skip
        for name in pipeline.EXPRESSION_OUTPUTS
        if name in requested
    }
    results = loaded.outputs(data, needed=needed, batch_size=batch_size) if needed else {}

    target_obs = handler.target.obs_names
    new_record.update(
        {
            "checkpoint": str(loaded.path),
            "task": loaded.task,
            "version": __version__,
            "model": loaded.model,
        }
    )
    written = []
    if "latent" in requested:
        name = latent_key(prefix)
        handler.stage("obsm", name, align_rows(results["latent"], data.obs_names, target_obs))
        written.append(f"'{name}' (obsm)")
    if "reconstruction" in requested:
        values = align_rows(results["reconstruction"], data.obs_names, target_obs)
        written.append(
            stage_genes(
                handler,
                prefix,
                reconstruction_key(prefix),
                values,
                loaded.preprocessing["feature_names"],
                new_record,
            )  # fmt: skip
        )
    for name, values in expression.items():
        values = align_rows(values, data.obs_names, target_obs)
        written.append(
            stage_genes(
                handler,
                prefix,
                f"{prefix}_{name}",
                values,
                loaded.preprocessing["feature_names"],
                new_record,
            )  # fmt: skip
        )
    if expression:
        new_record["library_size"] = library_size
        if "corrected" in expression:
            new_record["transform_batch"] = transform_batch_names(transform_batch)
    if {"logits", "probabilities", "prediction"} & set(requested):
        encoder = loaded.encoder("label")
        logits = align_rows(results["logits"], data.obs_names, target_obs)
        probabilities = softmax(logits)
        new_record["label_categories"] = list(encoder.categories)
        new_record.setdefault("label_key", encoder.key)
        if "logits" in requested:
            handler.stage("obsm", f"{prefix}_logits", logits)
            written.append(f"'{prefix}_logits' (obsm)")
        if "probabilities" in requested:
            handler.stage("obsm", f"{prefix}_probabilities", probabilities)
            written.append(f"'{prefix}_probabilities' (obsm)")
        if "prediction" in requested:
            codes, confidence = predicted_codes(probabilities)
            labels = pd.Categorical.from_codes(codes, list(encoder.categories))
            handler.stage("obs", f"{prefix}_prediction", pd.Series(labels, index=target_obs))
            handler.stage("obs", f"{prefix}_confidence", pd.Series(confidence, index=target_obs))
            written.append(f"'{prefix}_prediction', '{prefix}_confidence' (obs)")
    new_record["outputs"] = list(requested)
    return written
