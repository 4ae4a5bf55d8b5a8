"""The one path under every front: task ↔ model, build, fit, bundle save/load, outputs.

``tl.fit``/``tl.predict``/``tl.evaluate``, ``TaskRunner``, ``compare_models``
and the ``scdlkit`` command all call these functions; none of them assembles a
model, a :class:`~scdlkit.Trainer` or a bundle by itself. The scGPT annotation
path (``adapt_annotation``), whose input is gene tokens rather than prepared
matrices, shares the layers under this one: :class:`~scdlkit.data.DataSpec`,
:class:`~scdlkit.train.TrainerOptions` with ``Trainer.from_options``, the
record/handler writers and the evaluation metrics.

Data flows down once (a :class:`~scdlkit.data.DataSpec` and
:class:`~scdlkit.train.TrainerOptions` → :func:`fit`), results flow up once
(a :class:`FittedRun` or :class:`LoadedRun` → arrays the fronts write).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg
from torch import nn

from ._errors import format_names
from ._version import __version__
from .data import CategoryEncoder, PreparedData, SplitData, prepare_data, transform_adata
from .data.fields import ModSpec
from .data.prepare import raw_counts_message
from .data.record import history_record
from .data.spec import DataSpec, Preprocessing
from .models import create_model, get_model_class
from .tasks import get_task
from .train import Trainer
from .train.bundle import read_config
from .train.options import TrainerOptions

#: Default parent folder of checkpoint bundles, relative to the working directory.
DEFAULT_CHECKPOINT_DIR = "scdlkit_checkpoints"

#: What ``outputs=`` may ask for, and the model output each one needs.
OUTPUTS = {
    "latent": "latent",
    "reconstruction": "reconstruction",
    "logits": "logits",
    "probabilities": "logits",
    "prediction": "logits",
}
#: Marks a ``layer``/``mod`` argument left to what the model was trained on.
TRAINED: Any = object()

#: Outputs written when none are asked for, per task.
DEFAULT_OUTPUTS = {
    "representation": ("latent", "reconstruction"),
    "reconstruction": ("latent", "reconstruction"),
    "classification": ("latent", "logits", "probabilities", "prediction"),
}


def model_name(model: str | nn.Module) -> str:
    """Registry name of a model argument, or the class name of an instance."""
    return model if isinstance(model, str) else type(model).__name__


def input_kind(model: str | nn.Module) -> str:
    """Return ``"counts"`` for count models (they read raw counts), else ``"transformed"``."""
    cls = get_model_class(model) if isinstance(model, str) else model
    return str(getattr(cls, "input_kind", "transformed"))


def data_spec_for(model: str | nn.Module, spec: DataSpec | None) -> DataSpec:
    """Return the spec to prepare data with: count models read raw counts (``counts=True``)."""
    spec = spec or DataSpec()
    if input_kind(model) == "counts" and not spec.counts:
        return spec.replace(counts=True)
    return spec


def _data_sized_kwargs(model: str, prepared: PreparedData, task: str) -> dict[str, Any]:
    """Return the constructor options the data decides (classes, batches, covariates)."""
    accepted = inspect.signature(get_model_class(model)).parameters
    sized: dict[str, Any] = {}
    if task == "classification":
        sized["num_classes"] = prepared.label_encoder.n_categories
    if "n_batch" in accepted and prepared.batch_encoder is not None:
        sized["n_batch"] = prepared.batch_encoder.n_categories
    if "n_cats_per_cov" in accepted and prepared.covariates.categorical:
        sized["n_cats_per_cov"] = list(prepared.covariates.n_cats_per_cov)
    if "n_continuous_cov" in accepted and prepared.covariates.continuous:
        sized["n_continuous_cov"] = prepared.covariates.n_continuous
    return sized


def resolve_task(model: str | nn.Module, task: str | None) -> str:
    """Return the task to train, checked against the model before any data is read.

    Raises
    ------
    ValueError
        The model does not support ``task``, or declares no task at all.
    """
    if not isinstance(model, str) and task is not None:
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


def check_labels(task: str, prepared: PreparedData) -> None:
    """Refuse classification without labels or with a single class."""
    if task != "classification":
        return
    label_key = prepared.spec.label_key
    if prepared.label_encoder is None:
        msg = "task='classification' needs label_key= (the .obs column with the cell labels)."
        raise ValueError(msg)
    if prepared.label_encoder.n_categories < 2:
        msg = (
            f"label_key {label_key!r} has a single class ({prepared.label_encoder.categories[0]!r}); "
            "classification needs at least two."
        )
        raise ValueError(msg)


def build_model(
    model: str | nn.Module,
    prepared: PreparedData,
    *,
    task: str,
    model_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Create a registry model sized to the prepared data, or check an instance against it.

    ``num_classes`` is filled in from the labels for classification, and
    ``n_batch``/``n_cats_per_cov``/``n_continuous_cov`` from the batches and
    covariates for models that take them (count models).

    Raises
    ------
    ValueError
        ``model_kwargs`` with a model instance, or an instance whose ``input_dim``
        differs from the prepared data.
    """
    if isinstance(model, str):
        kwargs = {**_data_sized_kwargs(model, prepared, task), **dict(model_kwargs or {})}
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


@dataclass
class FittedRun:
    """A trained model with everything needed to save and record it.

    Attributes
    ----------
    trainer
        The fitted :class:`~scdlkit.Trainer` (holding the best weights).
    prepared
        The :class:`~scdlkit.data.PreparedData` it was trained on.
    model
        Registry name (or class name) of the model.
    task
        Task name.
    model_kwargs
        The model options the user gave.
    seconds
        Wall-clock seconds of training.
    checkpoint
        The bundle, once :func:`save_run` has written it.
    """

    trainer: Trainer
    prepared: PreparedData
    model: str
    task: str
    model_kwargs: dict[str, Any]
    seconds: float
    checkpoint: Path | None = None

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes files (all but ranks > 0 under ``torchrun``)."""
        return self.trainer.is_main_process

    def params(self, options: TrainerOptions, given: Collection[str] = ()) -> dict[str, Any]:
        """Return the run's parameters as recorded in ``.uns[key]["params"]`` and in the bundle.

        ``given`` names Trainer options beyond the common ones that the user set.
        """
        settings = self.trainer.settings()
        common = {"epochs", "batch_size", "lr", "seed"}
        return {
            "model": self.model,
            "task": self.task,
            **self.prepared.spec.to_kwargs(),
            "model_kwargs": dict(self.model_kwargs),
            **{name: getattr(options, name) for name in sorted(common)},
            "device": str(self.trainer.device),
            **{k: v for k, v in settings.items() if k in given and k not in common},
        }

    def record(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Return the run record written to ``.uns[key_added]`` (also what ``pl`` reads)."""
        module = self.trainer.model
        model_config = getattr(module, "config", None) or {"name": None, "kwargs": {}}
        record: dict[str, Any] = {
            "params": dict(params),
            "history": history_record(self.trainer.history_frame),
            "checkpoint": "" if self.checkpoint is None else str(self.checkpoint),
            "model": model_config.get("name") or type(module).__name__,
            "model_config": model_config.get("kwargs", {}),
            "task": self.task,
            "best_epoch": self.trainer.best_epoch,
            "best_loss": self.trainer.best_loss,
            "epochs_run": self.trainer.epochs_run,
            "version": __version__,
        }
        encoder = self.prepared.label_encoder
        if encoder is not None:
            record["label_key"] = encoder.key
            record["label_categories"] = list(encoder.categories)
        return record


def warn_raw_counts(prepared: PreparedData, module: nn.Module) -> None:
    """Warn (scanpy's logger) when raw counts reach a model trained with a squared-error loss."""
    if prepared.raw_counts and getattr(module, "input_kind", "transformed") != "counts":
        logg.warning(raw_counts_message(prepared.source))


def train(
    prepared: PreparedData,
    model: str | nn.Module,
    *,
    task: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    options: TrainerOptions | None = None,
) -> FittedRun:
    """Build the model for ``prepared`` and train it with the :class:`~scdlkit.Trainer`.

    The seed of ``options`` also fixes the initial weights.
    """
    options = options or TrainerOptions()
    task_name = resolve_task(model, task)
    check_labels(task_name, prepared)
    module = build_model(
        model, prepared, task=task_name, model_kwargs=model_kwargs, seed=options.seed
    )
    warn_raw_counts(prepared, module)
    trainer = Trainer.from_options(module, task or task_name, options)
    started = time.perf_counter()
    trainer.fit(prepared.train, prepared.val)
    return FittedRun(
        trainer=trainer,
        prepared=prepared,
        model=model_name(model),
        task=task_name,
        model_kwargs=dict(model_kwargs or {}),
        seconds=time.perf_counter() - started,
    )


def fit(
    adata: AnnData | MuData,
    model: str | nn.Module,
    *,
    task: str | None = None,
    spec: DataSpec | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    options: TrainerOptions | None = None,
) -> FittedRun:
    """Prepare ``adata`` as ``spec`` says and :func:`train` a model on it (nothing is written).

    The task is checked against the model before any data is read; the split
    uses the seed of ``options``.
    """
    options = options or TrainerOptions()
    resolve_task(model, task)
    spec = data_spec_for(model, spec)
    prepared = prepare_data(adata, **spec.to_kwargs(), seed=options.seed)
    return train(prepared, model, task=task, model_kwargs=model_kwargs, options=options)


def checkpoint_path(checkpoint_dir: str | Path | None, key: str) -> Path:
    """``<checkpoint_dir>/<key>_<timestamp>`` (``./scdlkit_checkpoints`` by default)."""
    parent = (
        Path(checkpoint_dir) if checkpoint_dir is not None else Path.cwd() / DEFAULT_CHECKPOINT_DIR
    )
    return parent / f"{key}_{datetime.now():%Y%m%d-%H%M%S-%f}"


def save_run(
    run: FittedRun,
    path: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    include_training_state: bool = True,
) -> Path:
    """Write the run's bundle (best weights, data spec, preprocessing, encoders); return its path."""
    run.checkpoint = run.trainer.save_checkpoint(
        path,
        prepared=run.prepared,
        metadata=dict(metadata or {}),
        overwrite=overwrite,
        include_training_state=include_training_state,
    ).resolve()
    return run.checkpoint


@dataclass
class LoadedRun:
    """A trained model read back from its bundle, ready to predict on new data.

    The weights are read on first use of :attr:`trainer`, so what needs only
    the bundle's configuration (preprocessing, encoders, data spec) costs no
    model rebuild.

    Attributes
    ----------
    path
        The bundle directory.
    config
        The bundle's ``config.json``.
    device
        Where the model goes.
    module
        For bundles of wrapped/custom modules: a module of the same architecture.
    """

    path: Path
    config: dict[str, Any]
    device: str = "auto"
    module: nn.Module | None = None

    @classmethod
    def from_fitted(cls, run: FittedRun) -> LoadedRun:
        """View a saved :class:`FittedRun` as a loaded one, keeping its trainer (no reload).

        Raises
        ------
        ValueError
            The run has not been saved (:func:`save_run`) yet.
        """
        if run.checkpoint is None:
            msg = "The run has no bundle yet; save it with pipeline.save_run(run, path) first."
            raise ValueError(msg)
        loaded = cls(
            path=run.checkpoint, config=read_config(run.checkpoint), device=str(run.trainer.device)
        )
        loaded.__dict__["trainer"] = run.trainer  # fills the cached property
        return loaded

    @cached_property
    def trainer(self) -> Trainer:
        """A :class:`~scdlkit.Trainer` holding the best weights (rebuilt on first use)."""
        return Trainer.load_checkpoint(
            self.path, device=self.device, model=self.module, progress=False, strategy="single"
        )

    @property
    def task(self) -> str:
        """Task the model was trained for."""
        return str(self.config["task"])

    @property
    def model(self) -> str:
        """Registry name (or class) of the model."""
        return self.config["model"].get("name") or str(self.config.get("model_class", ""))

    @property
    def preprocessing(self) -> Preprocessing:
        """The fitted preprocessing (feature names, transforms, scaling statistics)."""
        return self.config["preprocessing"]

    @property
    def spec(self) -> DataSpec:
        """The data spec of the training run (recovered for bundles written before specs)."""
        stored = self.config.get("data_spec")
        if stored is None:
            return DataSpec.from_preprocessing(self.preprocessing)
        return DataSpec.from_dict(stored)

    def encoder(self, role: str) -> CategoryEncoder | None:
        """Return the ``"label"`` or ``"batch"`` encoder of the training run, if it had one."""
        stored = self.config.get(f"{role}_encoder")
        return None if stored is None else CategoryEncoder.from_dict(stored)

    def query(
        self,
        adata: AnnData | MuData,
        *,
        layer: str | None = TRAINED,
        mod: ModSpec = TRAINED,
        encoders: bool = False,
    ) -> SplitData:
        """Every cell of ``adata`` prepared like the training cells (genes matched by name).

        ``layer``/``mod`` default to where the model was trained; with ``encoders``
        the labels/batches are encoded when their columns exist. Count models
        always get the batches (their decoder needs them) and library sizes.
        """
        preprocessing = self.preprocessing
        return transform_adata(
            adata,
            preprocessing,
            layer=preprocessing.get("layer") if layer is TRAINED else layer,
            mod=preprocessing.get("mod") if mod is TRAINED else mod,
            use_raw=bool(preprocessing.get("use_raw")),
            label_encoder=self.encoder("label") if encoders else None,
            batch_encoder=self.encoder("batch")
            if encoders or preprocessing.get("counts")
            else None,
        )

    def outputs(
        self,
        data: SplitData,
        *,
        needed: Collection[str] | None = None,
        batch_size: int | None = None,
        include_inputs: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run the model over ``data``; ``needed`` model outputs must all be produced.

        Raises
        ------
        ValueError
            The model does not produce an output in ``needed``.
        """
        results = self.trainer.predict_dataset(
            data, batch_size=batch_size, include_inputs=include_inputs, outputs=needed
        )
        missing = sorted(set(needed or ()) - set(results))
        if missing:
            msg = f"The model does not produce {format_names(missing)}; it produces {format_names(results)}."
            raise ValueError(msg)
        return results


def load_run(
    path: str | Path,
    *,
    device: str = "auto",
    model: nn.Module | None = None,
) -> LoadedRun:
    """Read a bundle written by :func:`save_run` (or ``Trainer.save_checkpoint(prepared=...)``).

    Only ``config.json`` is read here; the weights are loaded on first use of
    :attr:`LoadedRun.trainer`.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist (moved or deleted), or has no ``config.json``.
    ValueError
        The bundle has no preprocessing record (saved without data), or a damaged
        or too new ``config.json``.
    """
    path = Path(str(path))
    if not path.is_dir():
        msg = (
            f"The checkpoint {str(path)!r} does not exist (moved or deleted?). Pass checkpoint=<new "
            "location> to predict with it."
        )
        raise FileNotFoundError(msg)
    config = read_config(path)
    if "preprocessing" not in config:
        msg = (
            f"Checkpoint {str(path)!r} has no preprocessing record (it was saved without prepared=); "
            "predict on it with Trainer.predict_dataset(...) instead."
        )
        raise ValueError(msg)
    return LoadedRun(path=path, config=config, device=device, module=model)


def requested_outputs(outputs: str | Collection[str] | None, task: str) -> tuple[str, ...]:
    """Return the outputs to write: the task's defaults, or the checked request.

    Raises
    ------
    ValueError
        An unknown output name.
    """
    if outputs is None:
        return DEFAULT_OUTPUTS[task]
    requested = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    unknown = [name for name in requested if name not in OUTPUTS]
    if unknown:
        msg = f"Unknown outputs {format_names(unknown)}; choose from {format_names(OUTPUTS)}."
        raise ValueError(msg)
    return requested
