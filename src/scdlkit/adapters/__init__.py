"""Adapters: use plain PyTorch modules with the scdlkit tasks and Trainer."""

from .modules import (
    ClassificationModuleAdapter,
    ReconstructionModuleAdapter,
    TorchModuleAdapter,
    wrap_classification_module,
    wrap_reconstruction_module,
)

__all__ = [
    "ClassificationModuleAdapter",
    "ReconstructionModuleAdapter",
    "TorchModuleAdapter",
    "wrap_classification_module",
    "wrap_reconstruction_module",
]
