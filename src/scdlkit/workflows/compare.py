"""``compare_models``: train several models on the same split and score them next to baselines."""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from .. import pipeline
from .._defaults import DEFAULT_SEED
from .._errors import format_names
from ..data import PreparedData, prepare_data
from ..data.spec import DataSpec
from ..evaluation import COMPARISON_COLUMNS, comparison_rows
from ..evaluation._task import metric_groups, output_metrics
from ..train.options import TrainerOptions
from ._scoring import decoded, held_out, held_out_inputs
from .runner import TaskRunner

PCA_BASELINE = "PCA-{n} (baseline)"
LOGREG_BASELINE = "logistic regression (baseline)"


def _candidates(models: Sequence[str] | Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Return ``{row label: model options}`` from a list of names or a mapping of labels to options."""
    if isinstance(models, str):
        models = [models]
    if isinstance(models, Mapping):
        candidates = {}
        for label, options in models.items():
            if not isinstance(options, Mapping):
                msg = (
                    f"models[{label!r}] must be a dict of TaskRunner options (e.g. "
                    f"{{'model': 'vae', 'model_kwargs': {{'kl_weight': 1.0}}}}), got {options!r}."
                )
                raise TypeError(msg)
            shared = sorted(set(options) & set(DataSpec.option_names()))
            if shared:
                msg = (
                    f"models[{label!r}] sets the data option(s) {format_names(shared)}; every model "
                    "is trained on the same prepared data, so pass them to compare_models itself."
                )
                raise ValueError(msg)
            candidates[str(label)] = {"model": str(label), **dict(options)}
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


def _runner(options: Mapping[str, Any], shared: Mapping[str, Any]) -> TaskRunner:
    """Return a :class:`TaskRunner` holding one model's settings.

    Trainer options that are not TaskRunner arguments go to its ``trainer_kwargs``.
    """
    arguments = set(inspect.signature(TaskRunner).parameters)
    merged = {**shared, **options}
    unknown = sorted(set(merged) - set(TrainerOptions.option_names()) - arguments)
    if unknown:
        accepted = {*DataSpec.option_names(), *TrainerOptions.option_names(), *arguments}
        msg = (
            f"compare_models got unexpected option(s) {format_names(unknown)}; accepted: "
            f"{format_names(sorted(accepted), limit=len(accepted))}."
        )
        raise ValueError(msg)
    extra = {k: merged.pop(k) for k in list(merged) if k not in arguments}
    if extra:
        merged["trainer_kwargs"] = {**dict(merged.get("trainer_kwargs") or {}), **extra}
    return TaskRunner(**merged)


def _parameters(run: pipeline.FittedRun) -> int:
    return int(sum(p.numel() for p in run.trainer.model.parameters() if p.requires_grad))


def _baseline_rows(
    prepared: PreparedData,
    task: str,
    groups: Sequence[str],
    *,
    n_pcs: int,
    seed: int,
    metric_options: dict[str, Any],
) -> list[dict[str, Any]]:
    """Return the rows of the PCA (representation, reconstruction) or logistic-regression baseline."""
    evaluated, reference = held_out(prepared)
    started = time.perf_counter()
    x_train = prepared.train.to_numpy()
    x_eval = evaluated.to_numpy()
    encoder = prepared.label_encoder
    labels = decoded(encoder, evaluated.y)
    reference_labels = None if reference is None else decoded(encoder, reference.y)
    batches = decoded(prepared.batch_encoder, evaluated.batch)
    seconds = time.perf_counter() - started
    if task == "classification":
        from sklearn.linear_model import LogisticRegression

        started = time.perf_counter()
        classifier = LogisticRegression(max_iter=1000, random_state=seed)
        classifier.fit(x_train, decoded(encoder, prepared.train.y))
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
        return comparison_rows(
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
    return comparison_rows(label, metrics, baseline=True, seconds=seconds, parameters=parameters)


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
    seed: int = DEFAULT_SEED,
    **options: Any,
) -> pd.DataFrame:
    """Train several models on the same split and score them, next to simple baselines.

    The data is prepared once (:func:`~scdlkit.prepare_data`), so every model
    sees the same training, validation and test cells and the same input.
    Each model is trained by the one training path (:func:`scdlkit.pipeline.train`,
    as in :class:`~scdlkit.TaskRunner` and :func:`scdlkit.tl.fit`) and scored on the
    test cells like :meth:`TaskRunner.evaluate <scdlkit.TaskRunner.evaluate>`.
    With ``baselines=True`` reference rows are added, fitted on the same
    training cells and input:

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
        model options (:class:`~scdlkit.TaskRunner` arguments other than data
        options) to compare variants, e.g.
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
        Options shared by every model: data preparation (any
        :class:`~scdlkit.data.DataSpec` option: ``layer``, ``use_raw``,
        ``use_hvg``, ``normalize``, ``log1p``, ...), training (any
        :class:`~scdlkit.train.TrainerOptions` option: ``epochs``,
        ``batch_size``, ``lr``, ``device``, ``weight_decay``, ...) and
        ``latent_dim``, ``model_kwargs``, ``trainer_kwargs``.

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
        model, classification without ``label_key``, an invalid option, or a
        data option given for one model only; all checked before anything is trained.
    TypeError
        A value of the ``models`` dict that is not a dict of options.

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
    spec, training = DataSpec.from_options(
        {"label_key": label_key, "batch_key": batch_key, **options}
    )
    shared = {"task": task, "label_key": label_key, "seed": seed, **training}
    runners = {
        label: _runner(model_options, shared)
        for label, model_options in _candidates(models).items()
    }
    tasks = sorted({runner.task for runner in runners.values()})
    if len(tasks) > 1:
        msg = f"All models must be trained for one task; the options ask for {format_names(tasks)}."
        raise ValueError(msg)
    groups = metric_groups(tasks[0], metrics)
    prepared = prepare_data(adata, **spec.to_kwargs(), seed=seed)
    metric_options = {"n_neighbors": n_neighbors, "clustering": clustering}
    rows: list[dict[str, Any]] = []
    for label, runner in runners.items():
        run = pipeline.train(
            prepared,
            runner.model,
            task=runner.task,
            model_kwargs=runner.model_kwargs,
            options=runner.options,
        )
        inputs, _ = held_out_inputs(run.trainer, prepared)
        result = output_metrics(groups, seed=runner.seed, **metric_options, **inputs)
        rows += comparison_rows(
            label, result, baseline=False, seconds=run.seconds, parameters=_parameters(run)
        )
    if baselines:
        rows += _baseline_rows(
            prepared, tasks[0], groups, n_pcs=n_pcs, seed=seed, metric_options=metric_options
        )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
