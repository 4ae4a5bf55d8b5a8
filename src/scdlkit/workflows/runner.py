"""``TaskRunner``: train, evaluate, plot and save a bundled model in a few calls.

A thin front on :mod:`scdlkit.pipeline`: its keyword arguments become a
:class:`~scdlkit.data.DataSpec` and :class:`~scdlkit.train.TrainerOptions`,
training is :func:`scdlkit.pipeline.fit`, the bundle is written by
:func:`scdlkit.pipeline.save_run` and read back by
:func:`scdlkit.pipeline.load_run`. The plot methods live in :mod:`._plots`,
the Markdown report in :mod:`.report`.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from .. import pipeline
from .._atomic import atomic_directory
from .._defaults import DEFAULT_SEED
from .._uns import json_safe
from .._version import __version__
from ..data import PreparedData
from ..data.fields import ModSpec
from ..data.spec import DataSpec
from ..evaluation._task import metric_groups, output_metrics
from ..train.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_PATIENCE,
    TrainerOptions,
)
from ..train.preemption import TrainingInterrupted
from ..train.state import STATE_FOLDER, find_state, list_states
from ._plots import RunnerPlots
from ._scoring import class_predictions, held_out_inputs, output_inputs
from .report import write_report

_RUNNER_FILE = "runner.json"
_CHECKPOINT = "checkpoint"
_ARRAY_METRICS = ("classes", "confusion_matrix")


class TaskRunner(RunnerPlots):
    """Train, evaluate, plot and save one of the bundled models, beginner style.

    A thin front on the one training path (:mod:`scdlkit.pipeline`, the same as
    :func:`scdlkit.tl.fit`), the metrics of :mod:`scdlkit.evaluation` and the
    plots of :mod:`scdlkit.pl`. The runner never writes into the data it is
    given; use :func:`scdlkit.tl.fit` to keep results in an AnnData.

    Parameters
    ----------
    model
        Registry name of a bundled or registered model (see :func:`scdlkit.list_models`).
    task
        ``"representation"``, ``"reconstruction"`` or ``"classification"``.
    label_key
        ``.obs`` column with cell labels: the target for classification; otherwise
        used to stratify the split and to score the latent space.
    batch_key
        ``.obs`` column with batches, for the batch-mixing metrics.
    layer, mod, use_raw, use_hvg, n_top_genes, normalize, log1p, scale, split_key, val_size, test_size
        Where the matrix is and how it is prepared, as for :func:`~scdlkit.prepare_data`.
    latent_dim
        Size of the latent space; ``None`` keeps the model's default.
    epochs
        Maximum number of epochs; early stopping on the validation loss usually
        ends training sooner.
    batch_size
        Cells per minibatch.
    lr
        Learning rate.
    device
        ``"auto"`` (CUDA, then MPS, then CPU) or a device string.
    mixed_precision
        Use float16 autocast on CUDA (a no-op on CPU).
    early_stopping_patience
        Epochs without improvement of the validation loss before training stops
        (``None`` trains all ``epochs``); the best weights are kept.
    model_kwargs
        Further options of the model (``hidden_dims``, ``dropout``, ``kl_weight``, ...).
    trainer_kwargs
        Further :class:`~scdlkit.Trainer` options (``weight_decay``, ``scheduler``,
        ``progress``, ...); ``save_every``/``save_every_minutes`` write the
        training state into ``<output_dir>/checkpoint/state`` while training
        (see :meth:`fit` for resuming).
    output_dir
        Folder for the checkpoint bundle (``<output_dir>/checkpoint``); ``None``
        uses a temporary folder that is removed with the runner.
    seed
        Seed of the split, the initial weights and training.

    Attributes
    ----------
    spec
        The :class:`~scdlkit.data.DataSpec` built from the data arguments.
    options
        The :class:`~scdlkit.train.TrainerOptions` built from the training arguments.
    trainer_
        The fitted :class:`~scdlkit.Trainer` (``None`` before :meth:`fit`).
    prepared_
        The :class:`~scdlkit.PreparedData` of the fitted data (``None`` after :meth:`load`).
    checkpoint_
        The checkpoint bundle of the fitted model.
    metrics_
        The metrics of the last :meth:`evaluate`.

    Raises
    ------
    ValueError
        An unknown model, a model that does not support ``task``, classification
        without ``label_key``, ``latent_dim`` given twice, or a TaskRunner argument
        (``seed``, ``epochs``, ...) in ``trainer_kwargs``.
    TypeError
        ``model`` is not a registry name, or ``trainer_kwargs`` holds an unknown option.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> runner = scdlkit.TaskRunner("vae", label_key="bulk_labels", use_raw=True, epochs=5)
    >>> runner = runner.fit(adata)
    >>> runner.encode(adata).shape
    (700, 32)
    >>> metrics = runner.evaluate()  # held-out test cells
    >>> 0.0 <= metrics["knn_accuracy"] <= 1.0
    True
    """

    def __init__(
        self,
        model: str = "vae",
        task: str = "representation",
        *,
        label_key: str | None = None,
        batch_key: str | None = None,
        layer: str | None = None,
        mod: ModSpec = None,
        use_raw: bool = False,
        use_hvg: bool = False,
        n_top_genes: int = 2000,
        normalize: bool = False,
        log1p: bool = False,
        scale: bool = False,
        split_key: str | None = None,
        val_size: float = 0.15,
        test_size: float = 0.15,
        latent_dim: int | None = None,
        epochs: int = DEFAULT_EPOCHS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        lr: float = DEFAULT_LR,
        device: str = "auto",
        mixed_precision: bool = False,
        early_stopping_patience: int | None = DEFAULT_PATIENCE,
        model_kwargs: Mapping[str, Any] | None = None,
        trainer_kwargs: Mapping[str, Any] | None = None,
        output_dir: str | os.PathLike | None = None,
        seed: int = DEFAULT_SEED,
    ) -> None:
        if not isinstance(model, str):
            msg = (
                f"TaskRunner takes a registry name such as 'vae', got {type(model).__name__}. "
                "Train your own module with scdlkit.tl.fit(adata, model=module) or scdlkit.Trainer."
            )
            raise TypeError(msg)
        self.task = pipeline.resolve_task(model, task)
        if self.task in pipeline.LABEL_TASKS and label_key is None:
            msg = f"task={self.task!r} needs label_key= (the .obs column with the cell labels)."
            raise ValueError(msg)
        trainer_kwargs = dict(trainer_kwargs or {})
        clash = sorted({"model", "task", *_TRAINER_ARGUMENTS} & set(trainer_kwargs))
        if clash:
            msg = f"Pass {', '.join(clash)} to TaskRunner itself, not in trainer_kwargs."
            raise ValueError(msg)
        model_kwargs = dict(model_kwargs or {})
        if latent_dim is not None:
            if model_kwargs.get("latent_dim", latent_dim) != latent_dim:
                msg = (
                    f"latent_dim={latent_dim} and model_kwargs['latent_dim']="
                    f"{model_kwargs['latent_dim']} disagree; pass it once."
                )
                raise ValueError(msg)
            model_kwargs["latent_dim"] = int(latent_dim)
        self.model = model
        self.model_kwargs = model_kwargs
        self.spec = DataSpec(
            layer=layer, mod=mod, use_raw=use_raw, label_key=label_key, batch_key=batch_key,
            split_key=split_key, use_hvg=use_hvg, n_top_genes=n_top_genes, normalize=normalize,
            log1p=log1p, scale=scale, val_size=val_size, test_size=test_size,
        )  # fmt: skip
        self._trainer_kwargs = trainer_kwargs
        self.options = TrainerOptions.from_kwargs(
            {"progress": False, **trainer_kwargs, "epochs": epochs, "batch_size": batch_size,
             "lr": lr, "device": device, "mixed_precision": mixed_precision,
             "early_stopping_patience": early_stopping_patience, "seed": int(seed)}
        )  # fmt: skip
        self.output_dir = None if output_dir is None else Path(output_dir)

        self.prepared_: PreparedData | None = None
        self.metrics_: dict[str, Any] | None = None
        self.fit_seconds_: float | None = None
        self._run: pipeline.FittedRun | None = None
        self._bundle: pipeline.LoadedRun | None = None
        self._adata: AnnData | MuData | None = None
        self._temporary: tempfile.TemporaryDirectory | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        return f"TaskRunner(model={self.model!r}, task={self.task!r}, {state})"

    # ------------------------------------------------------------------ settings
    def get_params(self) -> dict[str, Any]:
        """Return the constructor arguments, as JSON-able values (what :meth:`save` stores)."""
        spec = self.spec.to_kwargs()
        return {
            "model": self.model,
            "task": self.task,
            **{name: spec[name] for name in _SPEC_ARGUMENTS},
            "model_kwargs": dict(self.model_kwargs),
            **{name: getattr(self.options, name) for name in _TRAINER_ARGUMENTS},
            "trainer_kwargs": dict(self._trainer_kwargs),
            "output_dir": None if self.output_dir is None else str(self.output_dir),
        }

    # ------------------------------------------------------------------ training
    def fit(self, adata: AnnData | MuData, *, resume: bool = False) -> TaskRunner:
        """Prepare the data, build the model and train it; returns ``self``.

        The cells are split into train/validation/test (``seed``); the model is
        trained on the training cells with early stopping on the validation
        cells, and the test cells are kept for :meth:`evaluate`. ``adata`` is not
        modified. The best weights are written as a checkpoint bundle
        (:attr:`checkpoint_`).

        Parameters
        ----------
        adata
            The cells to train on.
        resume
            Continue from the training state in ``<output_dir>/checkpoint/state``
            when a run stopped there (killed, SIGTERM, Ctrl-C; see
            ``save_every`` in ``trainer_kwargs``), else train from the start.

        Raises
        ------
        MissingKeyError
            A layer, modality or ``.obs`` column that does not exist.
        ValueError
            Invalid data (see :func:`~scdlkit.prepare_data`), a single class for
            classification, an option the model does not accept, ``save_every`` or
            ``resume`` without ``output_dir``, or a state of another run.
        TrainingInterrupted
            SIGTERM or Ctrl-C stopped training with ``save_every``/``resume``;
            the state was written.
        """
        options, resume_from = self._state_options(resume)
        try:
            run = pipeline.fit(
                adata,
                self.model,
                task=self.task,
                spec=self.spec,
                model_kwargs=self.model_kwargs,
                options=options,
                resume_from=resume_from,
            )
        except TrainingInterrupted as stopped:
            raise stopped.with_hint("Resume with runner.fit(adata, resume=True).") from None
        pipeline.save_run(
            run,
            self._checkpoint_dir(),
            overwrite=True,
            include_training_state=False,
            metadata={"runner": json_safe(self.get_params())},
        )
        self._run, self._bundle = run, run.loaded()
        self.prepared_, self._adata = run.prepared, adata
        self.metrics_, self.fit_seconds_ = None, run.seconds
        return self

    def _state_options(self, resume: bool) -> tuple[TrainerOptions, Path | None]:
        """Return the options with the state folder set, and the state to resume from."""
        if not (self.options.saves_state or resume):
            return self.options, None
        if self.output_dir is None or self.options.state_dir is not None:
            msg = (
                "save_every/save_every_minutes and resume need output_dir= (the states go to "
                "<output_dir>/checkpoint/state, a folder that outlives the process), not state_dir=."
            )
            raise ValueError(msg)
        state_dir = self._checkpoint_dir() / STATE_FOLDER
        resume_from = find_state(state_dir) if resume and list_states(state_dir) else None
        return self.options.replace(state_dir=state_dir), resume_from

    def _checkpoint_dir(self) -> Path:
        if self.output_dir is not None:
            return self.output_dir / _CHECKPOINT
        if self._temporary is None:
            self._temporary = tempfile.TemporaryDirectory(
                prefix="scdlkit-runner-", ignore_cleanup_errors=True
            )
        return Path(self._temporary.name) / _CHECKPOINT

    # ------------------------------------------------------------------ inference
    def encode(self, adata: AnnData | MuData) -> np.ndarray:
        """Latent representation of every cell of ``adata`` (cells x ``latent_dim``, float32).

        Genes are matched by name with those the model was trained on (extra genes
        are ignored, missing genes are an error); the training preprocessing is applied.
        """
        self._check_fitted("encode()")
        return self._outputs(self._query(adata), needed=("latent",))["latent"]

    def reconstruct(self, adata: AnnData | MuData) -> np.ndarray:
        """Reconstruction of every cell (cells x model features, in the model's input space).

        Raises
        ------
        ValueError
            The runner trains a classifier.
        """
        self._check_fitted("reconstruct()")
        self._check_reconstructs("reconstruct()")
        return self._outputs(self._query(adata), needed=("reconstruction",))["reconstruction"]

    def predict(self, adata: AnnData | MuData) -> pd.Categorical | np.ndarray:
        """Predicted labels (classification, as a categorical) or the reconstruction (otherwise)."""
        self._check_fitted("predict()")
        if self.task not in pipeline.LABEL_TASKS:
            return self.reconstruct(adata)
        logits = self._outputs(self._query(adata), needed=("logits",))["logits"]
        return class_predictions(logits, self.classes_)[1]

    def predict_proba(self, adata: AnnData | MuData) -> pd.DataFrame:
        """Class probabilities of every cell (a DataFrame, one column per class).

        Raises
        ------
        ValueError
            The runner does not train a classifier.
        """
        self._check_fitted("predict_proba()")
        self._check_classifies("predict_proba()")
        data = self._query(adata)
        logits = self._outputs(data, needed=("logits",))["logits"]
        probabilities = class_predictions(logits, self.classes_)[0]
        return pd.DataFrame(probabilities, index=data.obs_names, columns=self.classes_)

    # ------------------------------------------------------------------ evaluation
    def _evaluation_inputs(self, adata: AnnData | MuData | None) -> tuple[dict[str, Any], str]:
        """Return the model outputs, labels and kNN reference of the evaluated cells, and which cells they are."""
        if adata is None:
            if self.prepared_ is None:
                msg = (
                    "This runner was loaded from disk and keeps no training data; pass the cells "
                    "to score, e.g. runner.evaluate(adata)."
                )
                raise ValueError(msg)
            return held_out_inputs(self._bundle.trainer, self.prepared_)
        evaluated = self._query(adata)
        encoder = self._bundle.encoder("label")
        inputs = output_inputs(
            self._outputs(evaluated, include_inputs=True),
            None if encoder is None else list(encoder.categories),
        )
        inputs["labels"] = self._obs(adata, self.label_key, evaluated.obs_names)
        inputs["batches"] = self._obs(adata, self.batch_key, evaluated.obs_names)
        return inputs, "all cells"

    def evaluate(
        self,
        adata: AnnData | MuData | None = None,
        *,
        metrics: str | Sequence[str] | None = None,
        n_neighbors: int = 15,
        clustering: Literal["leiden", "kmeans"] = "leiden",
        resolution: float = 1.0,
    ) -> dict[str, Any]:
        """Score the model, by default on the held-out test cells of the fitted data.

        Parameters
        ----------
        adata
            Cells to score instead (all of them), e.g. another dataset; its
            ``label_key``/``batch_key`` columns are used when present.
        metrics
            Metric groups: any of ``"reconstruction"``, ``"representation"``,
            ``"classification"``; defaults to reconstruction and representation
            for autoencoders and classification for classifiers.
        n_neighbors, clustering, resolution
            See :func:`scdlkit.evaluation.representation_metrics`.

        Returns
        -------
        Metric name → value (see :mod:`scdlkit.evaluation`), also kept in
        :attr:`metrics_`. The kNN classifier of the representation metrics
        (:func:`scdlkit.evaluation.knn_accuracy`) learns from the training cells
        when scoring the fitted data, and is cross-validated on ``adata`` otherwise.

        Raises
        ------
        RuntimeError
            The runner is not fitted.
        ValueError
            ``adata=None`` for a runner loaded from disk, or classification metrics
            for cells without labels.
        """
        self._check_fitted("evaluate()")
        groups = metric_groups(self.task, metrics)
        inputs, where = self._evaluation_inputs(adata)
        if "classification" in groups and inputs["labels"] is None:
            msg = (
                f"Classification metrics need the true labels in .obs[{self.label_key!r}], which "
                "the scored cells lack."
            )
            raise ValueError(msg)
        result = output_metrics(
            groups,
            n_neighbors=n_neighbors,
            clustering=clustering,
            resolution=resolution,
            seed=self.seed,
            **inputs,
        )
        result["evaluated"] = where
        self.metrics_ = result
        return result

    # ------------------------------------------------------------------ reports and files
    def save_report(
        self,
        path: str | os.PathLike,
        *,
        latent_method: Literal["umap", "tsne", "pca", "latent"] = "umap",
    ) -> Path:
        """Write a Markdown report with the metrics (also as CSV) and the figures.

        Evaluates on the held-out cells first when :meth:`evaluate` has not run.
        Files written into the folder ``path``: ``report.md``, ``metrics.csv``
        (columns ``metric``, ``value``), ``losses.png``, and when the data is at
        hand ``latent.png``, ``reconstruction.png`` (autoencoders) or
        ``confusion_matrix.png`` with ``per_class.csv`` (classifiers).

        Returns
        -------
        Path of ``report.md``.
        """
        self._check_fitted("save_report()")
        if self.metrics_ is None:
            self.evaluate()
        return write_report(self, Path(path), latent_method=latent_method)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the fitted runner to the folder ``path`` (its settings, metrics and model).

        The folder holds ``runner.json`` and the checkpoint bundle ``checkpoint/``
        (weights-only, loadable without running code). The training data is not saved.

        Raises
        ------
        RuntimeError
            The runner is not fitted.
        FileExistsError
            ``path`` exists and ``overwrite`` is ``False``.
        """
        self._check_fitted("save()")
        with atomic_directory(path, overwrite=overwrite, what="Runner folder") as staging:
            shutil.copytree(self.checkpoint_, staging / _CHECKPOINT)
            payload = {
                "format": "scdlkit.TaskRunner",
                "scdlkit_version": __version__,
                "params": self.get_params(),
                "metrics": self.metrics_,
                "fit_seconds": self.fit_seconds_,
            }
            (staging / _RUNNER_FILE).write_text(json.dumps(json_safe(payload), indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto") -> TaskRunner:
        """Load a runner written by :meth:`save`; it can encode, predict, evaluate and plot new data.

        Folders written by earlier scdlkit versions load too.

        Raises
        ------
        FileNotFoundError
            ``path`` is not a saved runner.
        """
        path = Path(path)
        settings_file = path / _RUNNER_FILE
        if not settings_file.is_file():
            msg = f"{str(path)!r} is not a saved TaskRunner (no {_RUNNER_FILE}); save one with runner.save(path)."
            raise FileNotFoundError(msg)
        payload = json.loads(settings_file.read_text())
        runner = cls(**{**payload["params"], "device": device})
        runner._bundle = pipeline.load_run(path / _CHECKPOINT, device=device)
        runner.fit_seconds_ = payload.get("fit_seconds")
        metrics = payload.get("metrics")
        if metrics is not None:
            for key in _ARRAY_METRICS:
                if key in metrics:
                    metrics[key] = np.asarray(metrics[key])
            if "per_class" in metrics:
                metrics["per_class"] = {k: np.asarray(v) for k, v in metrics["per_class"].items()}
        runner.metrics_ = metrics
        return runner


_SIGNATURE = tuple(inspect.signature(TaskRunner.__init__).parameters)
#: TaskRunner arguments that are data options (the rest of the DataSpec keeps its defaults).
_SPEC_ARGUMENTS = tuple(name for name in _SIGNATURE if name in DataSpec.option_names())
#: TaskRunner arguments that are Trainer options (the others go in ``trainer_kwargs``).
_TRAINER_ARGUMENTS = tuple(name for name in _SIGNATURE if name in TrainerOptions.option_names())
