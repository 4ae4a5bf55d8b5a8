"""``scdlkit.tl.evaluate``: score a run's outputs stored in an AnnData/MuData."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg
from torch import nn

from .. import pipeline
from .._defaults import DEFAULT_SEED
from .._docs import doc_adata, doc_copy, doc_mod, doc_params
from .._errors import MissingKeyError
from ..data import get_obs_column
from ..data.counts import row_sums
from ..data.handler import DataHandler, check_writable
from ..data.record import (
    align_rows,
    get_record,
    has_true_label,
    latent_key,
    read_reconstruction,
    record_holder,
    where,
)
from ._predict import UNSET

_SPLITS = ("train", "val", "test")
_PREDICT_HINT = "Run scdlkit.tl.predict(adata, key={key!r}) first"


def _modality_spec(
    adata: AnnData | MuData, holder: AnnData | MuData, params: Mapping[str, Any]
) -> Any:
    """Return the ``mod`` that makes a :class:`DataHandler` write into ``holder``."""
    if isinstance(adata, AnnData):
        return None
    if holder is adata:
        trained_on = params.get("mod")
        names = list(adata.mod) if trained_on is None else [str(m) for m in np.ravel(trained_on)]
        return names
    return next(name for name, modality in adata.mod.items() if modality is holder)


def _read_record(holder: AnnData | MuData, key: str) -> Mapping[str, Any]:
    """Return the run record under ``key``, checked to name the task it was trained for."""
    hint = (
        f"Run scdlkit.tl.fit(adata, ..., key_added={key!r}) and scdlkit.tl.predict(adata, "
        f"key={key!r}) first, or pass key= of an earlier run."
    )
    record = get_record(holder, key, hint=hint)
    if "task" not in record:
        msg = f"{where(holder)}.uns[{key!r}] is not a scdlkit run record (it names no task). {hint}"
        raise MissingKeyError(msg)
    return record


def _cell_masks(
    adata: AnnData | MuData,
    obs_names: pd.Index,
    *,
    split: str | None,
    split_column: str,
    mod: Any,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Return the evaluated cells, the kNN reference cells (or ``None``) and a description."""
    if split is not None and split != "auto" and split not in _SPLITS:
        msg = f"split must be 'auto', 'train', 'val', 'test' or None, got {split!r}."
        raise ValueError(msg)
    everything = np.ones(len(obs_names), dtype=bool)
    if split is None:
        return everything, None, "all cells"
    try:
        column = get_obs_column(adata, split_column, obs_names, mod=mod, role="split column")
    except KeyError:
        if split == "auto":
            return everything, None, "all cells"
        msg = (
            f"split={split!r} needs the split column {split_column!r} written by scdlkit.tl.fit; "
            "it is not in .obs. Pass split=None to evaluate every cell."
        )
        raise MissingKeyError(msg) from None
    values = column.astype(str).str.lower().to_numpy()
    values = np.where(np.isin(values, ("training",)), "train", values)
    values = np.where(np.isin(values, ("validation",)), "val", values)
    if split == "auto":
        split = "test" if np.any(values == "test") else None
        if split is None:
            return everything, None, "all cells"
    evaluated = values == split
    if not evaluated.any():
        msg = f"No cell of .obs[{split_column!r}] is in the {split!r} split; choose another split."
        raise ValueError(msg)
    reference = values == "train" if split != "train" else None
    return evaluated, reference, f"{split} cells"


def _load_run(record: Mapping[str, Any], key: str, model: nn.Module | None) -> pipeline.LoadedRun:
    """Return the run's bundle (its configuration only; weights are not read)."""
    checkpoint = record.get("checkpoint")
    if not checkpoint:
        msg = (
            f".uns[{key!r}] names no checkpoint; the model input cannot be rebuilt. Record one "
            f"with scdlkit.tl.predict(adata, key={key!r}, checkpoint=<bundle path>)."
        )
        raise MissingKeyError(msg)
    return pipeline.load_run(checkpoint, device="cpu", model=model)


def _model_input(
    adata: AnnData | MuData,
    holder: AnnData | MuData,
    loaded: pipeline.LoadedRun,
    *,
    totals: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the model input of every cell of ``holder`` and, with ``totals``, its total counts.

    The input is rebuilt from the run's bundle (:meth:`~scdlkit.pipeline.LoadedRun.query`:
    the same reading and preprocessing as in training), in ``holder.obs_names`` order
    (NaN rows for cells the data lack). Totals are given for count models only,
    over every gene of the source matrix, as ``scanpy.pp.normalize_total`` sums
    them (not only over the model's genes).
    """
    data = loaded.query(adata)
    observed = align_rows(data.to_numpy(), data.obs_names, holder.obs_names)
    if not (totals and loaded.preprocessing.get("counts")):
        return observed, None
    sums = row_sums(data.matrix)[data.rows, None]
    return observed, align_rows(sums, data.obs_names, holder.obs_names)


def _log_normalized(counts: np.ndarray, totals: np.ndarray, target_sum: float) -> np.ndarray:
    """``log1p(counts / totals * target_sum)``: scanpy's ``normalize_total`` + ``log1p``."""
    return np.log1p(counts / totals * target_sum)


def _reconstruction(
    holder: AnnData | MuData,
    record: Mapping[str, Any],
    key: str,
    loaded: pipeline.LoadedRun,
) -> np.ndarray:
    """Return the reconstruction of every cell of ``holder`` in the model's feature order."""
    features = [str(name) for name in loaded.preprocessing["feature_names"]]
    matrix, columns = read_reconstruction(
        holder,
        key,
        record,
        hint=f"{_PREDICT_HINT.format(key=key)} with outputs including 'reconstruction'.",
    )
    positions = pd.Index(columns).get_indexer(features)
    if (positions < 0).any():
        msg = f"The reconstruction under key {key!r} lacks model features; run tl.predict again."
        raise ValueError(msg)
    return np.asarray(matrix[:, positions], dtype=np.float32)


def _obsm(holder: AnnData | MuData, name: str, key: str) -> np.ndarray:
    if name not in holder.obsm:
        msg = f"Did not find .obsm[{name!r}]. {_PREDICT_HINT.format(key=key)}."
        raise MissingKeyError(msg)
    return np.asarray(holder.obsm[name], dtype=np.float64)


def _unintegrated(
    holder: AnnData | MuData,
    name: str | None,
    model_input: tuple[np.ndarray, np.ndarray | None] | None,
    target_sum: float,
) -> np.ndarray:
    """Return the data before integration: ``.obsm[name]``, or the (log-normalised) model input."""
    if name is not None:
        if name not in holder.obsm:
            msg = (
                f"Did not find .obsm[{name!r}] (unintegrated=); it holds {sorted(holder.obsm)}. "
                "Compute it first (e.g. sc.pp.pca(adata) for 'X_pca'), or leave unintegrated=None "
                "to use the run's model input."
            )
            raise MissingKeyError(msg)
        return np.asarray(holder.obsm[name], dtype=np.float64)
    observed, totals = model_input
    return observed if totals is None else _log_normalized(observed, totals, target_sum)


def _n_metrics(result: Mapping[str, Any]) -> int:
    """Count the metrics, those of the ``integration`` sub-dictionary one by one."""
    nested = result.get("integration", {})
    return len(result) - ("integration" in result) + len(nested)


def _class_order(
    record: Mapping[str, Any], labels: np.ndarray, selected: dict[str, Any]
) -> tuple[list[str] | None, dict[str, Any]]:
    """Classes in training order, then true labels the model never saw (probability 0)."""
    trained = record.get("label_categories")
    if trained is None:
        return None, selected
    classes = [str(name) for name in trained]
    extra = sorted({str(label) for label in labels} - set(classes))
    if extra and "probabilities" in selected:
        padding = np.zeros((selected["probabilities"].shape[0], len(extra)))
        selected = {**selected, "probabilities": np.hstack([selected["probabilities"], padding])}
    return classes + extra, selected


@doc_params(doc_adata=doc_adata, doc_mod=doc_mod, doc_copy=doc_copy)
def evaluate(
    adata: AnnData | MuData,
    *,
    key: str = "scdlkit",
    split: Literal["auto", "train", "val", "test"] | None = "auto",
    metrics: str | Sequence[str] | None = None,
    label_key: str | None = None,
    batch_key: str | None = None,
    unintegrated: str | None = None,
    mod: Any = UNSET,
    n_neighbors: int = 15,
    clustering: Literal["leiden", "kmeans"] = "leiden",
    resolution: float = 1.0,
    seed: int = DEFAULT_SEED,
    model: nn.Module | None = None,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Score the outputs of a trained model and store the metrics in ``.uns[key]["metrics"]``.

    Reads what :func:`scdlkit.tl.fit` and :func:`scdlkit.tl.predict` wrote
    under ``key`` and computes the metrics of :mod:`scdlkit.evaluation`:
    reconstruction metrics (model input against ``.layers[f"{key}_reconstruction"]``),
    representation metrics of ``.obsm[f"X_{key}"]`` against ``label_key`` (and
    ``batch_key``), classification metrics of ``.obs[f"{key}_prediction"]``,
    and on request the scIB integration metrics of ``.obsm[f"X_{key}"]``
    (:func:`~scdlkit.evaluation.integration_metrics`: bio conservation, batch
    correction, total). By default only the held-out test cells are scored; the
    k-nearest-neighbour classifier of the representation metrics learns from
    the training cells.

    Parameters
    ----------
    {doc_adata}
    key
        ``key_added`` of the :func:`~scdlkit.tl.fit` run.
    split
        Cells to score, from the run's split column (``.obs[f"{key}_split"]`` or
        its ``split_key``): ``"auto"`` scores the test cells when there are any
        and every cell otherwise (e.g. a query mapped with ``checkpoint=``);
        ``"train"``, ``"val"``, ``"test"``; ``None`` scores every cell.
    metrics
        Metric groups: any of ``"reconstruction"``, ``"representation"``,
        ``"classification"``, ``"integration"``. Defaults to reconstruction and
        representation for autoencoders, classification for classifiers;
        ``"integration"`` (slower: a 90-neighbour graph, kBET, a PCA) only when
        asked for, and it needs labels and batches. The scib-metrics
        ``Benchmarker`` scores every cell: pass ``split=None`` to compare with it.
    label_key
        ``.obs`` column with the true labels; defaults to the run's ``label_key``.
    batch_key
        ``.obs`` column with batches for the batch-mixing and integration
        metrics; defaults to the run's ``batch_key``.
    unintegrated
        Integration metrics only: the ``.obsm`` key of the data before
        integration for ``pcr_comparison`` (e.g. ``"X_pca"``, used as it is).
        Defaults to the run's model input rebuilt from its bundle; for count
        models its counts log-normalised as scanpy's ``normalize_total`` (each
        cell's total over every gene of the matrix, scaled to the run's
        ``target_sum``) and ``log1p`` do. Reduced to 50 principal components
        of the scored cells.
    {doc_mod}
        Defaults to where the run was written.
    n_neighbors
        Neighbours of the kNN classifier and of the Leiden graph (representation).
    clustering
        ``"leiden"`` or ``"kmeans"``, for ARI/NMI against the labels (representation;
        the integration group uses the ``Benchmarker``'s k-means, 15/50/90
        neighbours and BRAS).
    resolution
        Leiden resolution (representation).
    seed
        Seed of clustering and cross-validation (every group).
    model
        Only for reconstruction metrics of wrapped/custom modules, whose bundle
        cannot be rebuilt by name: a module of the same architecture (as in
        :func:`~scdlkit.tl.predict`).
    {doc_copy}

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Sets

    ``.uns[key]["metrics"]`` : dict
        Metric name → value (see :func:`~scdlkit.evaluation.reconstruction_metrics`,
        :func:`~scdlkit.evaluation.representation_metrics`,
        :func:`~scdlkit.evaluation.classification_metrics`); for classifiers also
        ``classes``, ``per_class`` and ``confusion_matrix``. The integration group
        is one sub-dictionary, ``.uns[key]["metrics"]["integration"]``, named as
        :func:`~scdlkit.evaluation.integration_metrics` names them (its
        ``silhouette_label`` is rescaled to [0, 1], the representation group's is not).
    ``.uns[key]["evaluate_params"]`` : dict
        ``split``, ``metrics``, ``label_key``, ``batch_key``, ``n_neighbors``,
        ``clustering``, ``resolution``, ``seed``; with integration metrics also
        ``unintegrated`` (the ``.obsm`` key, or ``"model input"``).

    Raises
    ------
    MissingKeyError
        No run under ``key``, outputs that :func:`~scdlkit.tl.predict` has not
        written, a missing label/batch/split column.
    ValueError
        Unknown ``split`` or ``metrics``, classification metrics without labels,
        integration metrics without labels or batches, ``unintegrated`` without
        integration metrics.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> scdlkit.tl.fit(adata, "vae", use_raw=True, label_key="bulk_labels", epochs=5)
    >>> scdlkit.tl.predict(adata)
    >>> scdlkit.tl.evaluate(adata)
    >>> sorted(adata.uns["scdlkit"]["metrics"])[:4]
    ['ari', 'knn_accuracy', 'mae', 'mse']

    Integration metrics of a model trained with batches, on every cell:

    >>> counts = scdlkit.datasets.synthetic_counts(600, 300, n_batches=2, seed=0)
    >>> scdlkit.tl.fit(counts, "count_vae", batch_key="batch", epochs=5)
    >>> scdlkit.tl.predict(counts, outputs="latent")
    >>> scdlkit.tl.evaluate(counts, metrics="integration", label_key="cell_type", split=None)
    >>> scores = counts.uns["scdlkit"]["metrics"]["integration"]
    >>> sorted(scores)[:3]
    ['batch_correction', 'bio_conservation', 'bras']
    """
    from ..evaluation._task import metric_groups, output_metrics

    check_writable(adata)
    adata = adata.copy() if copy else adata
    start = logg.info(f"evaluating scdlkit run {key!r}")
    holder = record_holder(adata, key, None if mod is UNSET else mod)
    record = _read_record(holder, key)
    params = record.get("params", {})
    mod_spec = _modality_spec(adata, holder, params)
    groups = metric_groups(str(record["task"]), metrics)
    label_key = label_key or record.get("label_key") or params.get("label_key")
    batch_key = batch_key or params.get("batch_key")
    obs_names = holder.obs_names
    evaluated, reference, scored = _cell_masks(
        adata,
        obs_names,
        split=split,
        split_column=params.get("split_key") or f"{key}_split",
        mod=mod_spec,
    )

    def column(name: str, role: str) -> np.ndarray:
        return get_obs_column(adata, name, obs_names, mod=mod_spec, role=role).to_numpy()

    labels = None if label_key is None else column(str(label_key), "label_key")
    if "classification" in groups and labels is None:
        msg = (
            f"Classification metrics need the true labels: the run under {key!r} names no "
            "label_key; pass label_key=."
        )
        raise ValueError(msg)
    batches = None if batch_key is None else column(str(batch_key), "batch_key")
    integration = "integration" in groups
    if integration and (labels is None or batches is None):
        missing = " and ".join(
            f"{name} (pass {name}=)"
            for name, values in (("label_key", labels), ("batch_key", batches))
            if values is None
        )
        msg = (
            f"Integration metrics need cell-type labels and batches: the run under {key!r} "
            f"names no {missing}."
        )
        raise ValueError(msg)
    if unintegrated is not None and not integration:
        msg = (
            "unintegrated= is used by the integration metrics only; pass metrics='integration' too."
        )
        raise ValueError(msg)
    inputs: dict[str, Any] = {}
    loaded = None
    model_input = None
    baseline = integration and unintegrated is None  # the model input before integration
    if "reconstruction" in groups or baseline:
        loaded = _load_run(record, key, model)
        model_input = _model_input(adata, holder, loaded, totals=baseline)
    if "reconstruction" in groups:
        inputs["observed"] = model_input[0]
        inputs["reconstruction"] = _reconstruction(holder, record, key, loaded)
    if "representation" in groups or integration:
        inputs["latent"] = _obsm(holder, latent_key(key), key)
    if integration:
        target_sum = 1e4 if loaded is None else loaded.spec.target_sum
        inputs["unintegrated"] = _unintegrated(holder, unintegrated, model_input, target_sum)
    if "classification" in groups:
        name = f"{key}_prediction"
        if name not in holder.obs.columns:
            msg = f"Did not find .obs[{name!r}]. {_PREDICT_HINT.format(key=key)}."
            raise MissingKeyError(msg)
        inputs["predictions"] = holder.obs[name].to_numpy(dtype=object)
        probabilities = f"{key}_probabilities"
        if probabilities in holder.obsm and "label_categories" in record:
            inputs["probabilities"] = _obsm(holder, probabilities, key)
    with_result = np.ones(len(obs_names), dtype=bool)
    for name, values in inputs.items():
        if name == "predictions":
            with_result &= pd.notna(values)
        else:
            with_result &= np.isfinite(values).all(axis=1)
    if labels is not None:
        with_result &= has_true_label(labels, record)
    if integration:
        with_result &= pd.notna(batches)
    evaluated &= with_result
    if not evaluated.any():
        msg = f"None of the {scored} has a result under key {key!r}; run scdlkit.tl.predict first."
        raise ValueError(msg)
    selected = {name: values[evaluated] for name, values in inputs.items()}
    if reference is not None and labels is not None and "representation" in groups:
        reference &= with_result
        selected["reference_latent"] = inputs["latent"][reference]
        selected["reference_labels"] = labels[reference]
    classes = None
    if "classification" in groups:
        classes, selected = _class_order(record, labels[evaluated], selected)
    result = output_metrics(
        groups,
        labels=None if labels is None else labels[evaluated],
        batches=None if batches is None else batches[evaluated],
        classes=classes,
        n_neighbors=n_neighbors,
        clustering=clustering,
        resolution=resolution,
        seed=seed,
        **selected,
    )

    new_record = dict(record)
    new_record["metrics"] = result
    new_record["evaluate_params"] = {
        "split": scored,
        "metrics": list(groups),
        "label_key": label_key,
        "batch_key": batch_key,
        "n_neighbors": n_neighbors,
        "clustering": clustering,
        "resolution": resolution,
        "seed": seed,
    }
    if integration:
        new_record["evaluate_params"]["unintegrated"] = unintegrated or "model input"
    handler = DataHandler(adata, mod_spec)
    handler.stage("uns", key, new_record)
    handler.commit()
    logg.info(
        f"    finished: {_n_metrics(result)} metrics on {int(evaluated.sum())} {scored}",
        time=start,
        deep=f"added 'metrics' to uns[{key!r}]",
    )
    return adata if copy else None
