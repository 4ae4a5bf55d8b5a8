"""scdlkit: deep-learning models for single-cell data, on AnnData and MuData.

Importing the package is cheap: submodules (and torch/scanpy behind them) load
on first use of a name.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("scdlkit")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

_SUBMODULES = ("data", "datasets")

#: Public name -> module that defines it (imported on first access).
_LAZY = {
    "CategoryEncoder": "scdlkit.data",
    "MinibatchLoader": "scdlkit.data",
    "PreparedData": "scdlkit.data",
    "SplitData": "scdlkit.data",
    "prepare_data": "scdlkit.data",
    "transform_adata": "scdlkit.data",
}

__all__ = ["__version__", *_SUBMODULES, *_LAZY]

if TYPE_CHECKING:
    from . import data, datasets
    from .data import (
        CategoryEncoder,
        MinibatchLoader,
        PreparedData,
        SplitData,
        prepare_data,
        transform_adata,
    )


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
