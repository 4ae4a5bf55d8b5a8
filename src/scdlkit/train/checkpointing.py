"""Checkpoint bundles of the :class:`~scdlkit.Trainer`: save, load and resume.

The loop lives in :mod:`scdlkit.train.trainer`; this mixin holds the part of
the Trainer that turns its state into a bundle (through :mod:`.bundle`) and
back. It knows nothing about AnnData: data fields come from any object with
``bundle_fields()`` (:class:`~scdlkit.train.bundle.BundleData`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import torch
from torch import nn

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

T = TypeVar("T", bound="CheckpointMixin")


class CheckpointMixin:
    """Bundle I/O of the Trainer (see :class:`~scdlkit.Trainer` for the attributes it uses)."""

    model: nn.Module
    device: torch.device
    epochs: int
    checkpoint: bool
    history: list[dict[str, float]]
    history_frame: pd.DataFrame
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
        best = (
            self._best_state
            if self.checkpoint and self._best_state is not None
            else self._last_state
        )
        config = bundle_config(
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
        )
        training_state = self._training_state() if include_training_state else None
        return write_bundle(
            path, config=config, weights=best, training_state=training_state, overwrite=overwrite
        )

    def _training_state(self) -> dict[str, Any]:
        return {
            "last_weights": self._last_state,
            "best_weights": self._best_state,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self._scaler.state_dict() if self._scaler.is_enabled() else None,
            "history": self.history,
            "epochs_run": self.epochs_run,
            "bad_epochs": self._bad_epochs,
            "best_epoch": self.best_epoch,
            "best_loss": self.best_loss,
            "rng_state": self._rng_state,
        }

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

    def _restore_training_state(self, resume_from: str | os.PathLike) -> None:
        """Load weights, optimizer, scheduler, scaler, history and RNG state of a bundle."""
        state = read_training_state(resume_from, map_location=self.device)
        self.model.load_state_dict(state["last_weights"])
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
        torch.set_rng_state(state["rng_state"])
        if self.epochs_run >= self.epochs:
            msg = (
                f"The checkpoint already ran {self.epochs_run} epochs and epochs={self.epochs}; "
                "pass a larger epochs= to train further."
            )
            raise ValueError(msg)
