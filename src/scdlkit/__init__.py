"""scdlkit: deep-learning models for single-cell data, on AnnData and MuData.

Importing the package is cheap: submodules (and torch/scanpy behind them) load
on first use of a name. The public names of scDLKit 0.1.6 (``AnnotationRunner``,
``adapt_annotation``, ``inspect_annotation_data``, ``BaseModel``,
``BenchmarkResult``) are available here too, so code written for it runs unchanged.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_SUBMODULES = (
    "adapters",
    "data",
    "datasets",
    "evaluation",
    "foundation",
    "models",
    "pipeline",
    "pl",
    "pp",
    "tasks",
    "tl",
    "train",
    "workflows",
)

#: Public name -> module that defines it (imported on first access).
_LAZY = {
    "TaskRunner": "scdlkit.workflows",
    "Trainer": "scdlkit.train",
    "TrainerOptions": "scdlkit.train.options",
    "compare_models": "scdlkit.workflows",
    "create_model": "scdlkit.models",
    "list_models": "scdlkit.models",
    "register_model": "scdlkit.models",
    "get_task": "scdlkit.tasks",
    "list_tasks": "scdlkit.tasks",
    "register_task": "scdlkit.tasks",
    "wrap_classification_module": "scdlkit.adapters",
    "wrap_reconstruction_module": "scdlkit.adapters",
    "CategoryEncoder": "scdlkit.data",
    "DataSpec": "scdlkit.data.spec",
    "MinibatchLoader": "scdlkit.data",
    "PreparedData": "scdlkit.data",
    "SplitData": "scdlkit.data",
    "prepare_data": "scdlkit.data",
    "transform_adata": "scdlkit.data",
    # the public names of scDLKit 0.1.6
    "AnnotationRunner": "scdlkit.foundation",
    "adapt_annotation": "scdlkit.foundation",
    "inspect_annotation_data": "scdlkit.foundation",
    "BaseModel": "scdlkit.models",
    "BenchmarkResult": "scdlkit.evaluation._benchmark_result",
}

__all__ = ["__version__", *_SUBMODULES, *_LAZY]

if TYPE_CHECKING:
    from . import adapters as adapters
    from . import data as data
    from . import datasets as datasets
    from . import evaluation as evaluation
    from . import foundation as foundation
    from . import models as models
    from . import pipeline as pipeline
    from . import pl as pl
    from . import pp as pp
    from . import tasks as tasks
    from . import tl as tl
    from . import train as train
    from . import workflows as workflows
    from .adapters import wrap_classification_module as wrap_classification_module
    from .adapters import wrap_reconstruction_module as wrap_reconstruction_module
    from .data import CategoryEncoder as CategoryEncoder
    from .data import MinibatchLoader as MinibatchLoader
    from .data import PreparedData as PreparedData
    from .data import SplitData as SplitData
    from .data import prepare_data as prepare_data
    from .data import transform_adata as transform_adata
    from .data.spec import DataSpec as DataSpec
    from .evaluation._benchmark_result import BenchmarkResult as BenchmarkResult
    from .foundation import AnnotationRunner as AnnotationRunner
    from .foundation import adapt_annotation as adapt_annotation
    from .foundation import inspect_annotation_data as inspect_annotation_data
    from .models import BaseModel as BaseModel
    from .models import create_model as create_model
    from .models import list_models as list_models
    from .models import register_model as register_model
    from .tasks import get_task as get_task
    from .tasks import list_tasks as list_tasks
    from .tasks import register_task as register_task
    from .train import Trainer as Trainer
    from .train.options import TrainerOptions as TrainerOptions
    from .workflows import TaskRunner as TaskRunner
    from .workflows import compare_models as compare_models


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"scdlkit.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    msg = f"module 'scdlkit' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(__all__)
