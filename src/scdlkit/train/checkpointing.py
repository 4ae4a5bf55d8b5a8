"""Checkpoint bundles and training states of the :class:`~scdlkit.Trainer`: save, load and resume.

The loop lives in :mod:`scdlkit.train.trainer`; this mixin holds the part of
the Trainer that turns its state into a bundle (through :mod:`.bundle`) and
back: the history and weight copies a bundle stores, the periodic states of
:mod:`.state` and the stop-and-save on SIGTERM/Ctrl-C (:mod:`.preemption`). It
knows nothing about AnnData: data fields come from any object with
``bundle_fields()`` (:class:`~scdlkit.train.bundle.BundleData`).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._uns import json_safe
from . import distributed
from .bundle import (
    BundleData,
    bundle_config,
    history_rows,
    read_config,
    read_training_state,
    rebuild_model,
    write_bundle,
)
from .options import TrainerOptions
from .preemption import StopSignals, TrainingInterrupted
from .state import SaveSchedule, check_resumable, find_state, state_name, write_state

T = TypeVar("T", bound="CheckpointMixin")


class CheckpointMixin:
    """Bundle I/O of the Trainer (see :class:`~scdlkit.Trainer` for the attributes it uses)."""

    model: nn.Module
    device: torch.device
    epochs: int
    checkpoint: bool
    history: list[dict[str, float]]
    epochs_run: int
    best_epoch: int | None
    best_loss: float | None
    interrupted: bool
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    checkpoint_config: dict[str, Any] | None
    _best_state: dict[str, torch.Tensor] | None
    _last_state: dict[str, torch.Tensor] | None
    _bad_epochs: int
    _rng_state: torch.Tensor | None
    _scaler: torch.amp.GradScaler
    _saves: SaveSchedule | None
    _prepared: BundleData | None
    _training_data: dict[str, Any] | None
    _position: dict[str, Any] | None
    resumed_from: Path | None
    _signals: StopSignals
    options: TrainerOptions

    def settings(self) -> dict[str, Any]:
        """Return the JSON-able constructor settings (stored in checkpoints)."""
        return self.options.to_dict()

    @property
    def history_frame(self) -> pd.DataFrame:
        """Training history as a DataFrame, one row per epoch.

        Columns: ``epoch``, ``train_loss``, ``val_loss``, each loss component
        (``train_<name>``, ``val_<name>``), ``lr`` and ``seconds``.
        """
        frame = pd.DataFrame(self.history)
        if frame.empty:
            return pd.DataFrame(columns=["epoch", "train_loss", "val_loss", "lr", "seconds"])
        if "val_loss" not in frame:
            frame["val_loss"] = np.nan
        first = ["epoch", "train_loss", "val_loss"]
        last = ["lr", "seconds"]
        middle = [c for c in frame.columns if c not in first + last]
        return frame[first + middle + last]

    def _copy_state(self, into: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Copy the current weights into preallocated buffers (allocated once)."""
        state = self.model.state_dict()
        if into is None or into.keys() != state.keys():
            return {key: value.detach().clone() for key, value in state.items()}
        for key, value in state.items():
            into[key].copy_(value)
        return into

    @classmethod
    def from_options(cls: type[T], model: nn.Module, task: str | Any, options: TrainerOptions) -> T:
        """Build a trainer from a :class:`~scdlkit.train.TrainerOptions`."""
        return cls(model, task, **options.to_kwargs())

    def save_checkpoint(
        self,
        path: str | os.PathLike,
        *,
        prepared: BundleData | None = None,
        metadata: dict[str, Any] | None = None,
        overwrite: bool = False,
        include_training_state: bool = True,
    ) -> Path:
        """Write the best weights as a checkpoint bundle, atomically.

        Parameters
        ----------
        path
            Directory to create.
        prepared
            The data the model was trained on, e.g. :class:`~scdlkit.data.PreparedData`
            (any object with ``bundle_fields()``): its feature names, preprocessing,
            data spec and encoders are stored so that predictions on new data can
            be made from the checkpoint alone.
        metadata
            Extra JSON-able information to store under ``"metadata"``.
        overwrite
            Replace an existing checkpoint at ``path``.
        include_training_state
            Also store optimizer/scheduler state and the last weights for
            ``fit(resume_from=...)``.

        Returns
        -------
        The checkpoint directory. Under DDP only rank 0 writes it; the other
        ranks return the same path without writing.

        Raises
        ------
        RuntimeError
            No checkpoint exists yet (``fit`` has not run).
        FileExistsError
            ``path`` exists and ``overwrite`` is ``False``.
        """
        if self._last_state is None:
            msg = "No checkpoint exists yet: call fit(...) before save_checkpoint(...)."
            raise RuntimeError(msg)
        if not self.is_main_process:
            return Path(path)
        config = self._bundle_config(prepared, metadata)
        training_state = (
            self._training_state(self._last_state, [{"rng_state": self._rng_state}])
            if include_training_state
            else None
        )
        return write_bundle(
            path,
            config=config,
            weights=self._best_or(self._last_state),
            training_state=training_state,
            overwrite=overwrite,
        )

    def keep_current_weights(self) -> None:
        """Make the model's current weights the ones a bundle stores.

        For changes made after :meth:`fit` (such as the temperature that
        calibration sets): bundles store the best weights kept during training.
        """
        if self._best_state is not None:
            self._best_state = self._copy_state(self._best_state)
        if self._last_state is not None:
            self._last_state = self._copy_state(self._last_state)

    def _best_or(self, last: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return the weights a bundle stores: the best ones with ``checkpoint=True``, else ``last``."""
        return self._best_state if self.checkpoint and self._best_state is not None else last

    def _bundle_config(
        self, prepared: BundleData | None, metadata: dict[str, Any] | None
    ) -> dict[str, Any]:
        return bundle_config(
            self.model,
            task=self.task.name,
            settings=self.settings(),
            summary={
                "best_epoch": self.best_epoch,
                "best_loss": self.best_loss,
                "epochs_run": self.epochs_run,
                "interrupted": self.interrupted,
            },
            history=self.history_frame,
            data=prepared,
            metadata=metadata,
            training_data=self._training_data,
        )

    def _training_state(
        self, last_weights: dict[str, torch.Tensor] | None, ranks: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Everything ``fit(resume_from=...)`` restores; ``ranks`` holds each rank's RNG state and position."""
        return {
            "last_weights": last_weights,
            "best_weights": self._best_state,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self._scaler.state_dict() if self._scaler.is_enabled() else None,
            "history": self.history,
            "epochs_run": self.epochs_run,
            "bad_epochs": self._bad_epochs,
            "best_epoch": self.best_epoch,
            "best_loss": self.best_loss,
            "rng_state": ranks[0]["rng_state"],
            "ranks": ranks,
        }

    def _save_point(self, position: dict[str, Any] | None, *, epoch_end: bool) -> None:
        """Write the state when one is due, and stop after it when a signal asked to.

        Under DDP the decision is all-reduced, so that every rank saves and
        stops at the same step.
        """
        stop = self._signals.received is not None
        due = self._saves.time_due() or (epoch_end and self._saves.epoch_due(self.epochs_run))
        if self.distributed is not None:
            stop, due = distributed.any_across_ranks([stop, due], self.device)
        if not (stop or due):
            return
        path = self._write_state(position)
        if stop:
            where = (
                f"step {position['step']} of epoch {self.epochs_run + 1}"
                if position
                else f"epoch {self.epochs_run}"
            )
            received = self._signals.received
            what = (
                f"Training stopped by {received or 'a signal to another rank'} after {where}; "
                f"its state is in {str(path)!r}."
            )
            hint = (
                f"Resume with fit(..., resume_from={str(self._saves.state_dir)!r}) and the same "
                "model, data and settings."
            )
            raise TrainingInterrupted(
                what, hint, state=path if self.is_main_process else None,
                signal_name=received or "SIGTERM",
            )  # fmt: skip

    def _write_state(self, position: dict[str, Any] | None) -> Path:
        """Write the live training state into ``state_dir`` (every rank calls this; rank 0 writes).

        ``position`` is the place in the current epoch (``step``, partial loss
        sums, cells seen) when the state is written mid-epoch, ``None`` at an
        epoch end.
        """
        local = {
            "rng_state": torch.get_rng_state(),
            "cuda_rng_state": (
                torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
            ),
            "position": None if position is None else _to_cpu(position),
        }
        ranks = [local] if self.distributed is None else distributed.gather(local)
        step = 0 if position is None else int(position["step"])
        path = self._saves.state_dir / state_name(self.epochs_run, step)
        if self.is_main_process:
            live = self.model.state_dict()
            write_state(
                self._saves.state_dir,
                path.name,
                config=self._bundle_config(self._prepared, None),
                weights=self._best_or(live),
                training_state=self._training_state(live, ranks),
            )
        if self.distributed is not None:
            distributed.barrier()  # no rank goes on (or exits) before the state is on disk
        self._saves.saved()
        return path

    @classmethod
    def load_checkpoint(
        cls: type[T],
        path: str | os.PathLike,
        *,
        model: nn.Module | None = None,
        device: str | torch.device = "auto",
        **overrides: Any,
    ) -> T:
        """Rebuild the model and a trainer from a checkpoint bundle.

        Parameters
        ----------
        path
            Directory written by :meth:`save_checkpoint`.
        model
            Required when the checkpoint holds a wrapped or custom module that
            cannot be rebuilt by name: pass a module of the same architecture.
        device
            Where to put the model.
        **overrides
            Trainer settings to change (e.g. ``epochs=100`` to train further with
            ``fit(..., resume_from=path)``).

        Returns
        -------
        A trainer holding the best weights; its ``checkpoint_config`` attribute is
        the bundle's ``config.json`` (feature names, preprocessing, encoders, history).

        Raises
        ------
        FileNotFoundError
            Missing directory or files.
        ValueError
            A model that cannot be rebuilt without ``model=``, or weights that do
            not match the architecture.
        """
        config = read_config(path)
        model = rebuild_model(path, config, model)
        options = TrainerOptions.from_settings(config["trainer"], device=device, **overrides)
        trainer = cls.from_options(model, config["task"], options)
        trainer.checkpoint_config = config
        trainer.history = history_rows(config)
        trainer.epochs_run = int(config["epochs_run"])
        trainer.best_epoch, trainer.best_loss = config["best_epoch"], config["best_loss"]
        return trainer

    def _run_fields(self, prepared: BundleData | None) -> dict[str, Any]:
        """Return the fields of this run that a resumed state must match, as read from JSON."""
        config = bundle_config(
            self.model,
            task=self.task.name,
            settings=self.settings(),
            summary={},
            history=pd.DataFrame(),
            data=prepared,
            training_data=self._training_data,
        )
        return json.loads(json.dumps(json_safe(config)))

    def _restore_training_state(
        self, resume_from: str | os.PathLike, prepared: BundleData | None = None
    ) -> None:
        """Load weights, optimizer, scheduler, scaler, history, RNG states and position of a state.

        Raises
        ------
        ValueError
            The state belongs to another model, data or settings (the message
            names the differences), or it has run all ``epochs`` already.
        """
        path = find_state(resume_from)
        check_resumable(path, read_config(path), self._run_fields(prepared))
        state = read_training_state(path, map_location=self.device)
        try:
            self.model.load_state_dict(state["last_weights"])
        except RuntimeError as error:
            msg = f"The weights in {str(path)!r} do not fit {type(self.model).__name__}: {error}"
            raise ValueError(msg) from error
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self._scaler.load_state_dict(state["scaler"])
        self.history = [dict(row) for row in state["history"]]
        self.epochs_run = int(state["epochs_run"])
        self._bad_epochs = int(state["bad_epochs"])
        self.best_epoch = state["best_epoch"]
        self.best_loss = state["best_loss"]
        self._best_state = state.get("best_weights")
        self._restore_rank_state(state.get("ranks") or [{"rng_state": state["rng_state"]}])
        self.resumed_from = path
        if self.epochs_run >= self.epochs:
            msg = (
                f"The checkpoint already ran {self.epochs_run} epochs and epochs={self.epochs}; "
                "pass a larger epochs= to train further."
            )
            raise ValueError(msg)

    def _restore_rank_state(self, ranks: list[dict[str, Any]]) -> None:
        """Restore this rank's RNG states and position in the epoch.

        Saved with another number of ranks, the shards differ: every rank
        re-seeds from (seed, rank, epoch), rank 0 takes over the partial loss
        sums, and the run goes on, no longer identical to an uninterrupted one.
        """
        rank = 0 if self.distributed is None else self.distributed.rank
        world = 1 if self.distributed is None else self.distributed.world_size
        if len(ranks) == world:
            mine = ranks[rank]
            torch.set_rng_state(mine["rng_state"].cpu())
            if mine.get("cuda_rng_state") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda_rng_state"].cpu(), self.device)
        else:
            warnings.warn(
                f"The training state was saved by {len(ranks)} processes and resumes on {world}; "
                "training goes on but is not identical to an uninterrupted run.",
                UserWarning,
                stacklevel=4,
            )
            torch.manual_seed(self.seed + 1000 * (self.epochs_run + 1) + rank)
            mine = ranks[0] if rank == 0 else {"position": _empty_position(ranks[0])}
        position = mine.get("position")
        self._position = None if position is None else _to_device(position, self.device)


def _to_cpu(position: dict[str, Any]) -> dict[str, Any]:
    return {**position, "sums": {k: v.detach().cpu() for k, v in position["sums"].items()}}


def _to_device(position: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {**position, "sums": {k: v.to(device) for k, v in position["sums"].items()}}


def _empty_position(position: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return the position of a rank that joins mid-epoch without partial sums of its own."""
    if position is None:
        return None
    return {"step": position["step"], "sums": {}, "n_cells": 0}
