"""Training: the ``Trainer`` loop, checkpoint bundles, callbacks and device handling."""

from .callbacks import Callback
from .checkpoint import read_config
from .device import resolve_device
from .trainer import Trainer

__all__ = ["Callback", "Trainer", "read_config", "resolve_device"]
