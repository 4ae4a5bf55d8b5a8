"""Training: the ``Trainer`` loop, checkpoint bundles, callbacks and device handling."""

from .bundle import read_config
from .callbacks import Callback
from .device import resolve_device
from .distributed import is_main_process
from .options import TrainerOptions
from .preemption import TrainingInterrupted
from .trainer import Trainer

__all__ = [
    "Callback",
    "Trainer",
    "TrainerOptions",
    "TrainingInterrupted",
    "is_main_process",
    "read_config",
    "resolve_device",
]
