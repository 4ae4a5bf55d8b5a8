"""``compare_models``: train several models on the same split and score them next to baselines."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from .._errors import format_names
from ._tables import scalar_metrics
from ._task import metric_groups, output_metrics

#: Columns of the table :func:`compare_models` returns.
COLUMNS = ("model", "baseline", "metric", "value", "seconds", "parameters")
PCA_BASELINE = "PCA-{n} (baseline)"
LOGREG_BASELINE = "logistic regression (baseline)"

#: ``compare_models`` options that are passed to every :class:`~scdlkit.TaskRunner`.
_DATA_OPTIONS = (
    "layer", "mod", "use_raw", "use_hvg", "n_top_genes", "normalize", "log1p", "scale",
    "split_key", "val_size", "test_size",
)  # fmt: skip


def _candidates(models: Sequence[str] | Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """``{row label: TaskRunner options}`` from a list of names or a mapping of labels to options."""
    if isinstance(models, str):
        models = [models]
    if isinstance(models, Mapping):
        out = {}
        for label, options in models.items():
            if not isinstance(options, Mapping):
                msg = (
                    f"models[{label!r}] must be a dict of TaskRunner options (e.g. "
                    f"{{'model': 'vae', 'model_kwargs': {{'kl_weight': 1.0}}}}), got {options!r}."
                )
                raise TypeError(msg)
            out[str(label)] = {"model": str(label), **dict(options)}
        candidates = out
    else:
        names = [str(name) for name in models]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            msg = (
                f"models lists {format_names(duplicated)} twice; pass a dict of labels to options "
                "to compare variants of one model."
            )
            raise ValueError(msg)
        candidates = {name: {"model": name} for name in names}
    if not candidates:
        msg = "models is empty; name at least one model (scdlkit.list_models() shows them)."
        raise ValueError(msg)
    return candidates


def _rows(
    label: str, metrics: Mapping[str, Any], *, baseline: bool, seconds: float, parameters: int
) -> list[dict[str, Any]]:
    return [
        {
            "model": label,
            "baseline": baseline,
            "metric": name,
            "value": value,
            "seconds": seconds,
            "parameters": parameters,
        }  # fmt: skip
        for name, value in scalar_metrics(metrics).items()
    ]


def _baseline_rows(
    prepared: Any,
    task: str,
    groups: Sequence[str],
    *,
    n_pcs: int,
    seed: int,
    metric_options: dict[str, Any],
) -> list[dict[str, Any]]:
    """PCA (representation, reconstruction) or logistic regression (classification) baselines."""
    from ..runner import held_out

    evaluated, reference = held_out(prepared)
    started = time.perf_counter()
    x_train = prepared.train.to_numpy()
    x_eval = evaluated.to_numpy()
    encoder = prepared.label_encoder
    labels = None if evaluated.y is None else np.asarray(encoder.decode(evaluated.y), dtype=str)
    reference_labels = None
    if reference is not None and reference.y is not None:
        reference_labels = np.asarray(encoder.decode(reference.y), dtype=str)
    batches = None
    if evaluated.batch is not None:
        batches = np.asarray(prepared.batch_encoder.decode(evaluated.batch), dtype=str)
    seconds = time.perf_counter() - started
    if task == "classification":
        from sklearn.linear_model import LogisticRegression

        started = time.perf_counter()
        classifier = LogisticRegression(max_iter=1000, random_state=seed)
        classifier.fit(x_train, np.asarray(encoder.decode(prepared.train.y), dtype=str))
        probabilities = np.zeros((x_eval.shape[0], encoder.n_categories))
        columns = [list(encoder.categories).index(name) for name in classifier.classes_]
        probabilities[:, columns] = classifier.predict_proba(x_eval)
        predictions = classifier.predict(x_eval)
        seconds += time.perf_counter() - started
        metrics = output_metrics(
            groups, labels=labels, predictions=predictions, probabilities=probabilities,
            classes=list(encoder.categories), seed=seed, **metric_options,
        )  # fmt: skip
        parameters = int(classifier.coef_.size + classifier.intercept_.size)
        return _rows(
            LOGREG_BASELINE, metrics, baseline=True, seconds=seconds, parameters=parameters
        )
    from sklearn.decomposition import PCA

    n_components = max(1, min(int(n_pcs), x_train.shape[0] - 1, x_train.shape[1]))
    started = time.perf_counter()
    pca = PCA(n_components=n_components, random_state=seed).fit(x_train)
    latent = pca.transform(x_eval)
    reconstruction = pca.inverse_transform(latent)
    reference_latent = None if reference_labels is None else pca.transform(reference.to_numpy())
    seconds += time.perf_counter() - started
    metrics = output_metrics(
        groups, observed=x_eval, reconstruction=reconstruction, latent=latent, labels=labels,
        batches=batches, reference_latent=reference_latent, reference_labels=reference_labels,
        seed=seed, **metric_options,
    )  # fmt: skip
    parameters = int(pca.components_.size + pca.mean_.size)
    label = PCA_BASELINE.format(n=n_components)
    return _rows(label, metrics, baseline=True, seconds=seconds, parameters=parameters)


def compare_models(
    adata: AnnData | MuData,
    models: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("autoencoder", "vae"),
    *,
    task: str = "representation",
    baselines: bool = True,
    label_key: str | None = None,
    batch_key: str | None = None,
    metrics: str | Sequence[str] | None = None,
    n_pcs: int = 50,
    n_neighbors: int = 15,
    clustering: Literal["leiden", "kmeans"] = "leiden",
    seed: int = 42,
    **options: Any,
) -> pd.DataFrame:
    """Train several models on the same split and score them, next to simple baselines.

    The data is prepared once (:func:`~scdlkit.prepare_data`), so every model
    sees the same training, validation and test cells and the same input.
    Each model is trained by a :class:`~scdlkit.TaskRunner` and scored on the
    test cells (:meth:`~scdlkit.TaskRunner.evaluate`). With ``baselines=True``
    reference rows are added, fitted on the same training cells and input:

    - representation / reconstruction: PCA with ``n_pcs`` components
      (:class:`sklearn.decomposition.PCA`); its reconstruction is the inverse
      transform;
    - classification: :class:`sklearn.linear_model.LogisticRegression`
      (``max_iter=1000``) on the model input (log-normalised expression when
      you prepare it so).

    A deep model that does not beat its baseline is not worth its cost.

    Parameters
    ----------
    adata
        AnnData or MuData with cells as rows.
    models
        Registry names (``["autoencoder", "vae"]``), or a dict of row labels to
        :class:`~scdlkit.TaskRunner` options to compare variants, e.g.
        ``{"vae": {}, "vae, KL 1": {"model": "vae", "model_kwargs": {"kl_weight": 1.0}}}``
        (``model`` defaults to the label).
    task
        ``"representation"``, ``"reconstruction"`` or ``"classification"``.
    baselines
        Add the baseline rows.
    label_key, batch_key
        ``.obs`` columns with labels (required for classification) and batches.
    metrics
        Metric groups (see :func:`scdlkit.tl.evaluate`); defaults to the task's.
    n_pcs
        Components of the PCA baseline.
    n_neighbors, clustering
        See :func:`~scdlkit.evaluation.representation_metrics`.
    seed
        Seed of the split, the initial weights, training and the metrics.
    **options
        Further :class:`~scdlkit.TaskRunner` options shared by every model:
        preparation (``layer``, ``use_raw``, ``use_hvg``, ``normalize``, ``log1p``, ...)
        and training (``epochs``, ``batch_size``, ``lr``, ``device``, ...).

    Returns
    -------
    A tidy DataFrame, one row per model and metric, with columns ``model``,
    ``baseline`` (bool), ``metric``, ``value``, ``seconds`` (time to fit the
    model or baseline, not to score it) and ``parameters`` (trainable parameters, or
    fitted coefficients of a baseline). Plot it with :func:`scdlkit.pl.compare`;
    pivot it with ``frame.pivot(index="model", columns="metric", values="value")``.

    Raises
    ------
    ValueError
        An unknown model or one that does not support ``task``, a repeated
        model, classification without ``label_key``, or an invalid option; all
        checked before anything is trained.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> frame = scdlkit.compare_models(
    ...     adata, ["vae"], label_key="bulk_labels", use_raw=True, epochs=5, clustering="kmeans"
    ... )
    >>> sorted(frame["model"].unique())
    ['PCA-50 (baseline)', 'vae']
    """
    from ..data import prepare_data
    from ..runner import TaskRunner

    unknown = sorted(set(options) - set(_DATA_OPTIONS) - set(_RUNNER_OPTIONS))
    if unknown:
        msg = (
            f"compare_models got unexpected option(s) {format_names(unknown)}; accepted: "
            f"{format_names([*_DATA_OPTIONS, *_RUNNER_OPTIONS])}."
        )
        raise ValueError(msg)
    shared = {"task": task, "label_key": label_key, "batch_key": batch_key, "seed": seed, **options}
    runners = {
        label: TaskRunner(**{**shared, **spec}) for label, spec in _candidates(models).items()
    }
    tasks = sorted({runner.task for runner in runners.values()})
    if len(tasks) > 1:
        msg = f"All models must be trained for one task; the options ask for {format_names(tasks)}."
        raise ValueError(msg)
    groups = metric_groups(tasks[0], metrics)
    data_options = {key: options[key] for key in _DATA_OPTIONS if key in options}
    prepared = prepare_data(
        adata, label_key=label_key, batch_key=batch_key, random_state=seed, **data_options
    )
    metric_options = {"n_neighbors": n_neighbors, "clustering": clustering}
    rows: list[dict[str, Any]] = []
    for label, runner in runners.items():
        runner._fit_prepared(adata, prepared)
        result = runner.evaluate(metrics=list(groups), **metric_options)
        rows += _rows(
            label, result, baseline=False, seconds=runner.fit_seconds_,
            parameters=runner.n_parameters_,
        )  # fmt: skip
        runner.trainer_ = runner.prepared_ = None  # free the model and data references
    if baselines:
        rows += _baseline_rows(
            prepared, tasks[0], groups, n_pcs=n_pcs, seed=seed,
            metric_options=metric_options,
        )  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))


#: TaskRunner options (besides data preparation) that compare_models passes through.
_RUNNER_OPTIONS = (
    "latent_dim", "epochs", "batch_size", "lr", "device", "mixed_precision",
    "early_stopping_patience", "model_kwargs", "trainer_kwargs",
)  # fmt: skip
