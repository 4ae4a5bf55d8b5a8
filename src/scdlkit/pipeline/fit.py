"""Fit: prepare → build → train with the Trainer → bundle on disk → the run record.

Also where a run lives on disk: ``<checkpoint_dir>/<key>_<timestamp>/`` holds
its training states (``state/``) while it trains and its bundle once it is
done; :func:`resume_point` finds the run and state a resumed call continues.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg
from torch import nn

from .._version import __version__
from ..data import PreparedData, prepare_data
from ..data.prepare import raw_counts_message
from ..data.record import history_record
from ..data.spec import DataSpec
from ..train import Trainer
from ..train.bundle import read_config
from ..train.options import TrainerOptions
from ..train.state import STATE_FOLDER, find_state, is_state, list_states
from .build import build_model, check_labels, data_spec_for, model_name, resolve_task
from .calibrate import calibrate
from .initialize import (
    check_source_data,
    initialized_kwargs,
    initialized_spec,
    load_source_weights,
    source_run,
)
from .load import LoadedRun

DEFAULT_CHECKPOINT_DIR = "scdlkit_checkpoints"
_TIMESTAMP = r"\d{8}-\d{6}-\d{6}"


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
    calibration
        The temperature scaling of a classifier's logits (:func:`~scdlkit.pipeline.calibrate.calibrate`).
    init_from
        The bundle whose weights the model started from.
    """

    trainer: Trainer
    prepared: PreparedData
    model: str
    task: str
    model_kwargs: dict[str, Any]
    seconds: float
    checkpoint: Path | None = None
    calibration: dict[str, Any] | None = None
    init_from: Path | None = None

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes files (all but ranks > 0 under ``torchrun``)."""
        return self.trainer.is_main_process

    def loaded(self) -> LoadedRun:
        """View the saved run as a :class:`LoadedRun`, keeping its trainer (no reload).

        Raises
        ------
        ValueError
            The run has not been saved (:func:`save_run`) yet.
        """
        if self.checkpoint is None:
            msg = "The run has no bundle yet; save it with pipeline.save_run(run, path) first."
            raise ValueError(msg)
        loaded = LoadedRun(
            path=self.checkpoint,
            config=read_config(self.checkpoint),
            device=str(self.trainer.device),
        )
        loaded.__dict__["trainer"] = self.trainer  # fills the cached property
        return loaded

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
            if encoder.unlabeled is not None:
                record["unlabeled_category"] = encoder.unlabeled
        if self.calibration is not None:
            record["calibration"] = dict(self.calibration)
        if self.init_from is not None:
            record["init_from"] = str(self.init_from)
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
    resume_from: str | os.PathLike | None = None,
    init_from: LoadedRun | None = None,
) -> FittedRun:
    """Build the model for ``prepared`` and train it with the :class:`~scdlkit.Trainer`.

    The seed of ``options`` also fixes the initial weights; ``init_from`` (a
    trained run on the same genes and batches) gives them instead, and
    ``resume_from`` (a training state, see :func:`resume_point`) continues a
    stopped run. Models with a ``temperature`` are calibrated on the validation
    cells afterwards.
    """
    options = options or TrainerOptions()
    task_name = resolve_task(model, task)
    check_labels(task_name, prepared)
    if init_from is not None:
        check_source_data(prepared, init_from)
        model_kwargs = initialized_kwargs(init_from, model_kwargs)
    module = build_model(
        model, prepared, task=task_name, model_kwargs=model_kwargs, seed=options.seed
    )
    if init_from is not None:
        load_source_weights(module, init_from)
    warn_raw_counts(prepared, module)
    trainer = Trainer.from_options(module, task or task_name, options)
    started = time.perf_counter()
    if resume_from is not None:
        logg.info(f"    resuming from {resume_from}")
    trainer.fit(prepared.train, prepared.val, resume_from=resume_from, prepared=prepared)
    return FittedRun(
        trainer=trainer,
        prepared=prepared,
        model=model_name(model),
        task=task_name,
        model_kwargs=dict(model_kwargs or {}),
        seconds=time.perf_counter() - started,
        calibration=calibrate(trainer, prepared.val),
        init_from=None if init_from is None else init_from.path,
    )


def fit(
    adata: AnnData | MuData,
    model: str | nn.Module,
    *,
    task: str | None = None,
    spec: DataSpec | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    options: TrainerOptions | None = None,
    resume_from: str | os.PathLike | None = None,
    init_from: str | os.PathLike | None = None,
) -> FittedRun:
    """Prepare ``adata`` as ``spec`` says and :func:`train` a model on it (only states are written).

    The task is checked against the model before any data is read; the split
    uses the seed of ``options``. ``init_from`` (a run key of ``adata.uns`` or a
    bundle) starts from that run's weights, reading the data as it did, on its genes.
    """
    options = options or TrainerOptions()
    resolve_task(model, task)
    spec = data_spec_for(model, spec)
    source = None if init_from is None else source_run(adata, init_from)
    features = None
    if source is not None:
        spec, features = initialized_spec(spec, source), source.config["feature_names"]
    prepared = prepare_data(adata, **spec.to_kwargs(), seed=options.seed, features=features)
    return train(
        prepared,
        model,
        task=task,
        model_kwargs=model_kwargs,
        options=options,
        resume_from=resume_from,
        init_from=source,
    )


def checkpoint_path(checkpoint_dir: str | Path | None, key: str) -> Path:
    """``<checkpoint_dir>/<key>_<timestamp>`` (``./scdlkit_checkpoints`` by default)."""
    parent = (
        Path(checkpoint_dir) if checkpoint_dir is not None else Path.cwd() / DEFAULT_CHECKPOINT_DIR
    )
    return parent / f"{key}_{datetime.now():%Y%m%d-%H%M%S-%f}"


def latest_run(checkpoint_dir: str | Path | None, key: str) -> Path | None:
    """Return the newest ``<key>_<timestamp>`` folder under ``checkpoint_dir`` (``None``: none)."""
    parent = (
        Path(checkpoint_dir) if checkpoint_dir is not None else Path.cwd() / DEFAULT_CHECKPOINT_DIR
    )
    if not parent.is_dir():
        return None
    pattern = re.compile(rf"{re.escape(key)}_{_TIMESTAMP}")
    runs = sorted(p for p in parent.iterdir() if p.is_dir() and pattern.fullmatch(p.name))
    return runs[-1] if runs else None


def resume_point(
    checkpoint_dir: str | Path | None, key: str, resume: bool | str | os.PathLike
) -> tuple[Path, Path | None]:
    """Return the run folder to train into and the state to resume from (``None``: start anew).

    ``resume=False`` starts a new run folder (:func:`checkpoint_path`);
    ``resume=True`` continues the newest run of ``key`` under ``checkpoint_dir``
    when it holds a training state (it stopped before the end) and starts a new
    one otherwise; a path (a run folder, its ``state/`` folder, one state, or
    a finished bundle to train further) continues that run.

    Raises
    ------
    FileNotFoundError
        ``resume`` is a path that does not exist or holds no training state.
    DamagedCheckpointError
        Every state of the run is damaged.
    """
    if resume is False or resume is None:
        return checkpoint_path(checkpoint_dir, key), None
    if resume is True:
        run = latest_run(checkpoint_dir, key)
        if run is None or not list_states(run / STATE_FOLDER):
            where = checkpoint_dir or DEFAULT_CHECKPOINT_DIR
            logg.info(f"    no stopped run of {key!r} in {where}; starting a new one")
            return checkpoint_path(checkpoint_dir, key), None
        return run, find_state(run)
    state = find_state(resume)
    if state.parent.name == STATE_FOLDER:
        return state.parent.parent, state
    if is_state(state):  # a state folder of the Trainer's, outside any run folder
        return checkpoint_path(checkpoint_dir, key), state
    return state, state  # a finished bundle, trained further in place


def save_run(
    run: FittedRun,
    path: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    include_training_state: bool = True,
) -> Path:
    """Write the run's bundle (best weights, data spec, preprocessing, encoders); return its path."""
    metadata = dict(metadata or {})
    if run.calibration is not None:
        metadata["calibration"] = dict(run.calibration)
    run.checkpoint = run.trainer.save_checkpoint(
        path,
        prepared=run.prepared,
        metadata=metadata,
        overwrite=overwrite,
        include_training_state=include_training_state,
    ).resolve()
    return run.checkpoint
