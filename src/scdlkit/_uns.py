"""Make values safe to store in ``.uns`` (``.h5ad``/``.h5mu`` files) and in JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd


def json_safe(value: Any) -> Any:
    """Convert ``value`` to plain JSON types (NaN becomes ``None``, ``Path`` a string).

    Examples
    --------
    >>> json_safe({"dims": (64, np.int64(32)), "loss": float("nan")})
    {'dims': [64, 32], 'loss': None}
    """
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, PurePath):
        return str(value)
    return value


def h5ad_safe(value: Any, *, where: str = "value") -> Any:
    """Convert ``value`` to types that survive ``write_h5ad`` → ``read_h5ad`` unchanged.

    ``Path`` becomes ``str``; tuples, sets and lists become numpy arrays (a list
    of dictionaries stays a dict keyed ``"0"``, ``"1"``, ...); numpy scalars become
    Python scalars; ``Series``/``Index`` become arrays; dictionary keys become
    strings; ``None`` entries are dropped.

    Raises
    ------
    ValueError
        A dictionary key containing ``/`` (HDF5 would read it as a path) or a
        value that cannot be stored.

    Examples
    --------
    >>> h5ad_safe({"dims": (64, 32), "path": PurePath("a/b"), "skip": None})
    {'dims': array([64, 32]), 'path': 'a/b'}
    """
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            key = str(key)
            if "/" in key:
                msg = f"Cannot store {where}: key {key!r} contains '/', which HDF5 reads as a path."
                raise ValueError(msg)
            if item is None:
                continue
            out[key] = h5ad_safe(item, where=f"{where}[{key!r}]")
        return out
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else float("nan")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Series | pd.Index):
        value = value.to_numpy()
    if isinstance(value, list | tuple | set):
        items = list(value)
        if any(isinstance(item, Mapping) for item in items):
            return {str(i): h5ad_safe(item, where=f"{where}[{i}]") for i, item in enumerate(items)}
        if all(isinstance(item, str) for item in items):
            return np.asarray(items, dtype=object) if items else np.asarray([], dtype=object)
        value = np.asarray([np.nan if item is None else item for item in items])
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufO" or value.dtype.kind == "U":
            return value.astype(object) if value.dtype.kind == "U" else value
        msg = f"Cannot store {where} with dtype {value.dtype} in .uns."
        raise ValueError(msg)
    msg = f"Cannot store {where} of type {type(value).__name__} in .uns."
    raise ValueError(msg)
