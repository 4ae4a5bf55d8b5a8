"""``scdlkit.tl.predict``: run a trained model over an AnnData/MuData and write the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg
from torch import nn

from .._docs import doc_adata, doc_copy, doc_mod, doc_params
from .._errors import MissingKeyError, format_names
from ..data import CategoryEncoder, transform_adata
from ..data.fields import ModSpec
from ..train.distributed import is_main_process
from ._handler import DataHandler, check_writable

#: What ``outputs=`` may ask for, and the model output each one needs.
OUTPUTS = {
    "latent": "latent",
    "reconstruction": "reconstruction",
    "logits": "logits",
    "probabilities": "logits",
    "prediction": "logits",
}
_DEFAULT_OUTPUTS = {
    "representation": ("latent", "reconstruction"),
    "reconstruction": ("latent", "reconstruction"),
    "classification": ("latent", "logits", "probabilities", "prediction"),
}
_UNSET: Any = object()


def _find_checkpoint(
    target: AnnData | MuData, key: str, checkpoint: str | Path | None
) -> tuple[Path, dict]:
    record = target.uns.get(key)
    if checkpoint is None:
        if not isinstance(record, dict) or "checkpoint" not in record:
            msg = (
                f"Did not find a scdlkit run under .uns[{key!r}]. Run scdlkit.tl.fit(adata, ..., "
                f"key_added={key!r}) first, pass key= of an earlier run, or checkpoint=<path> of a "
                "trained model."
            )
            raise MissingKeyError(msg)
        checkpoint = record["checkpoint"]
    path = Path(str(checkpoint))
    if not path.is_dir():
        msg = (
            f"The checkpoint {str(path)!r} does not exist (moved or deleted?). Pass checkpoint=<new "
            "location> to predict with it."
        )
        raise FileNotFoundError(msg)
    return path, record if isinstance(record, dict) else {}


def _record_holder(adata: AnnData | MuData, key: str, mod: Any) -> AnnData | MuData:
    """Return the object whose ``.uns[key]`` holds the run (AnnData, a modality or the MuData)."""
    if isinstance(adata, AnnData):
        return adata
    if mod is not _UNSET and mod is not None:
        return DataHandler(adata, mod).target
    if key in adata.uns:
        return adata
    holders = [name for name, modality in adata.mod.items() if key in modality.uns]
    if len(holders) > 1:
        msg = f"Modalities {format_names(holders)} each hold a run under key {key!r}; pass mod= to choose."
        raise ValueError(msg)
    return adata.mod[holders[0]] if holders else adata


def _check_outputs(outputs: Any, task: str) -> tuple[str, ...]:
    if outputs is None:
        return _DEFAULT_OUTPUTS[task]
    requested = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    unknown = [name for name in requested if name not in OUTPUTS]
    if unknown:
        msg = f"Unknown outputs {format_names(unknown)}; choose from {format_names(OUTPUTS)}."
        raise ValueError(msg)
    return requested


def _full_rows(values: np.ndarray, rows: pd.Index | None, target_obs: pd.Index) -> np.ndarray:
    """Place per-cell results in the target's cell order (NaN for cells without a result)."""
    if rows is None or rows.equals(target_obs):
        return values
    out = np.full((target_obs.shape[0], *values.shape[1:]), np.nan, dtype=np.float32)
    out[target_obs.get_indexer(rows)] = values
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def _stage_reconstruction(
    handler: DataHandler, prefix: str, values: np.ndarray, features: list[str], record: dict
) -> str:
    """Reconstruction goes to ``.layers`` when its features are genes of the target, else ``.obsm``."""
    target = handler.target
    var_names = getattr(target, "var_names", None)
    positions = None if var_names is None else var_names.get_indexer(features)
    if positions is not None and (positions >= 0).all():
        if positions.shape[0] == var_names.shape[0] and np.array_equal(
            positions, np.arange(positions.shape[0])
        ):
            layer = values
        else:
            layer = np.full((values.shape[0], var_names.shape[0]), np.nan, dtype=np.float32)
            layer[:, positions] = values
        handler.stage("layers", f"{prefix}_reconstruction", layer)
        record["reconstruction_features"] = features
        return f"'{prefix}_reconstruction' (layers)"
    handler.stage("obsm", f"{prefix}_reconstruction", values)
    record["reconstruction_features"] = features
    return f"'{prefix}_reconstruction' (obsm; its features are in uns['{prefix}']['reconstruction_features'])"


@doc_params(doc_adata=doc_adata, doc_mod=doc_mod, doc_copy=doc_copy)
def predict(
    adata: AnnData | MuData,
    *,
    key: str = "scdlkit",
    checkpoint: str | Path | None = None,
    outputs: str | list[str] | None = None,
    mod: ModSpec = _UNSET,
    layer: str | None = _UNSET,
    batch_size: int = 1024,
    device: str = "auto",
    key_added: str | None = None,
    model: nn.Module | None = None,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Run a trained model over every cell and write its outputs into ``adata``.

    After :func:`scdlkit.tl.fit` nothing but the AnnData is needed (also after
    ``write_h5ad`` → ``read_h5ad``): the checkpoint is found through
    ``.uns[key]["checkpoint"]`` and the preprocessing is rebuilt from it. With
    ``checkpoint=path`` a new (query) dataset is mapped onto a trained model:
    genes are matched by name, extra genes are ignored, missing genes are an error.

    Parameters
    ----------
    {doc_adata}
    key
        ``key_added`` of the :func:`~scdlkit.tl.fit` run to use.
    checkpoint
        Checkpoint directory to use instead of the one recorded under ``key``.
    outputs
        What to write: any of ``"latent"``, ``"reconstruction"``, ``"logits"``,
        ``"probabilities"``, ``"prediction"``. Defaults to latent and
        reconstruction for representation/reconstruction models, and latent,
        logits, probabilities and prediction for classifiers.
    {doc_mod}
        Defaults to the modality the model was trained on.
    layer
        Layer to read; defaults to the layer the model was trained on.
    batch_size
        Cells per inference batch.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    key_added
        Prefix of the written keys; defaults to ``key``.
    model
        Only for checkpoints of wrapped/custom modules, which cannot be rebuilt
        by name: a module of the same architecture.
    {doc_copy}

    Under ``torchrun`` only rank 0 predicts and writes; other ranks return
    without changing ``adata``.

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Sets, with
    ``prefix = key_added or key``:

    ``.obsm[f"X_{prefix}"]`` : float32 array
        Latent space (use with ``sc.pp.neighbors(adata, use_rep=f"X_{prefix}")``).
    ``.layers[f"{prefix}_reconstruction"]`` : float32 array
        Reconstruction in the model's input space (after its preprocessing),
        genes in ``.var`` order; genes the model does not use are NaN. When the
        model's features are not genes of this object (``use_raw``, several
        modalities) it goes to ``.obsm`` instead.
    ``.obsm[f"{prefix}_logits"]``, ``.obsm[f"{prefix}_probabilities"]`` : float32 arrays
        Classifier outputs, columns in ``.uns[prefix]["label_categories"]`` order.
    ``.obs[f"{prefix}_prediction"]`` : categorical, ``.obs[f"{prefix}_confidence"]`` : float
        Predicted label (original class names) and its probability.
    ``.uns[prefix]["outputs"]``
        What was written.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> scdlkit.tl.fit(adata, "mlp_classifier", label_key="bulk_labels", epochs=5)
    >>> scdlkit.tl.predict(adata)
    >>> adata.obs["scdlkit_prediction"].cat.categories.equals(
    ...     adata.obs["bulk_labels"].cat.categories
    ... )
    True
    """
    from .. import __version__
    from ..train import Trainer

    check_writable(adata)
    adata = adata.copy() if copy else adata
    if not is_main_process():
        logg.info("tl.predict: skipped on this rank; rank 0 of the torchrun job writes the outputs")
        return adata if copy else None
    prefix = key_added or key
    start = logg.info(f"predicting with scdlkit run {key!r}")
    path, record = _find_checkpoint(_record_holder(adata, key, mod), key, checkpoint)
    trainer = Trainer.load_checkpoint(
        path, device=device, model=model, progress=False, strategy="single"
    )
    config = trainer.checkpoint_config
    if "preprocessing" not in config:
        msg = (
            f"Checkpoint {str(path)!r} has no preprocessing record (it was saved without prepared=); "
            "predict on it with Trainer.predict_dataset(...) instead."
        )
        raise ValueError(msg)
    preprocessing = config["preprocessing"]
    mod = preprocessing.get("mod") if mod is _UNSET else mod
    if isinstance(adata, AnnData):
        mod = None
    handler = DataHandler(adata, mod)
    requested = _check_outputs(outputs, config["task"])
    if (
        outputs is None
        and getattr(handler.target, "isbacked", False)
        and "reconstruction" in requested
    ):
        requested = tuple(name for name in requested if name != "reconstruction")
        logg.info(
            "    backed AnnData: the reconstruction (dense cells x genes) is not computed by default; "
            "pass outputs=[..., 'reconstruction'] to write it"
        )
    data = transform_adata(
        adata, preprocessing, layer=preprocessing.get("layer") if layer is _UNSET else layer, mod=mod,
        use_raw=bool(preprocessing.get("use_raw")),
    )  # fmt: skip
    needed = {OUTPUTS[name] for name in requested}
    results = trainer.predict_dataset(
        data, batch_size=batch_size, include_inputs=False, outputs=needed
    )
    missing = sorted(needed - set(results))
    if missing:
        msg = f"The model does not produce {format_names(missing)}; it produces {format_names(results)}."
        raise ValueError(msg)

    target_obs = handler.target.obs_names
    new_record = dict(record) if prefix == key and record else {}
    new_record.update(
        {"checkpoint": str(path), "task": config["task"], "version": __version__,
         "model": config["model"].get("name") or config.get("model_class", "")}
    )  # fmt: skip
    existing = handler.clear_previous(prefix)
    written = []
    if "latent" in requested:
        handler.stage(
            "obsm", f"X_{prefix}", _full_rows(results["latent"], data.obs_names, target_obs)
        )
        written.append(f"'X_{prefix}' (obsm)")
    if "reconstruction" in requested:
        values = _full_rows(results["reconstruction"], data.obs_names, target_obs)
        written.append(
            _stage_reconstruction(
                handler, prefix, values, preprocessing["feature_names"], new_record
            )
        )
    if {"logits", "probabilities", "prediction"} & set(requested):
        encoder = CategoryEncoder.from_dict(config["label_encoder"])
        logits = _full_rows(results["logits"], data.obs_names, target_obs)
        probabilities = _softmax(np.nan_to_num(logits))
        new_record["label_categories"] = list(encoder.categories)
        new_record.setdefault("label_key", encoder.key)
        if "logits" in requested:
            handler.stage("obsm", f"{prefix}_logits", logits)
            written.append(f"'{prefix}_logits' (obsm)")
        if "probabilities" in requested:
            handler.stage("obsm", f"{prefix}_probabilities", probabilities)
            written.append(f"'{prefix}_probabilities' (obsm)")
        if "prediction" in requested:
            codes = probabilities.argmax(axis=1)
            has_result = ~np.isnan(logits).any(axis=1)
            labels = pd.Categorical.from_codes(
                np.where(has_result, codes, -1), list(encoder.categories)
            )
            confidence = np.where(has_result, probabilities.max(axis=1), np.nan)
            handler.stage("obs", f"{prefix}_prediction", pd.Series(labels, index=target_obs))
            handler.stage("obs", f"{prefix}_confidence", pd.Series(confidence, index=target_obs))
            written.append(f"'{prefix}_prediction', '{prefix}_confidence' (obs)")
    new_record["outputs"] = list(requested)
    handler.stage("uns", prefix, new_record)
    handler.log_overwrite(prefix, existing)
    handler.commit()
    logg.info("    finished", time=start, deep="added " + ", ".join(written))
    return adata if copy else None
