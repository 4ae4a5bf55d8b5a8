"""Callbacks: hooks into :class:`~scdlkit.Trainer` without subclassing it."""

from __future__ import annotations

from typing import Any, Protocol


class Trainer(Protocol):
    """What a callback sees of the :class:`~scdlkit.Trainer` (no import of the loop, no cycle)."""

    stop_training: bool
    epochs_run: int
    history: list[dict[str, float]]


class Callback:
    """Base class; override the hooks you need. Set ``trainer.stop_training = True`` to stop.

    Examples
    --------
    >>> class StopAtLoss(Callback):
    ...     def __init__(self, threshold: float) -> None:
    ...         self.threshold = threshold
    ...
    ...     def on_epoch_end(self, trainer, logs):
    ...         if logs["train_loss"] < self.threshold:
    ...             trainer.stop_training = True
    >>> from types import SimpleNamespace
    >>> trainer = SimpleNamespace(stop_training=False)
    >>> StopAtLoss(0.5).on_epoch_end(trainer, {"train_loss": 0.8})
    >>> trainer.stop_training
    False
    >>> StopAtLoss(0.5).on_epoch_end(trainer, {"train_loss": 0.4})
    >>> trainer.stop_training
    True
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        """Run once before the first epoch."""

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        """Run after every epoch with that epoch's history row."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Run once after training, also after an interruption."""
