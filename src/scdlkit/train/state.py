"""Training states on disk: the snapshots a stopped or killed run resumes from.

A :class:`~scdlkit.Trainer` with ``state_dir`` writes its full training state
there every ``save_every`` epochs, every ``save_every_minutes`` minutes and
when SIGTERM or Ctrl-C stops it. Each state is a checkpoint bundle
(:mod:`.bundle`) written atomically, with a manifest of SHA-256 checksums::

    <state_dir>/
        state-000012-00000000/   after 12 epochs (step 0 of the next one)
            config.json          as in any bundle (history, data fields, ...)
            model.pt             the best weights so far: predict with it as with a bundle
            training_state.pt    weights, optimizer, scheduler, scaler, RNG states,
                                 epoch, position in the epoch, history
            manifest.json        size and SHA-256 of the files above
        state-000011-00000000/   the previous state, kept in case the newest is damaged

Only the two newest states are kept. :func:`find_state` picks the newest that
matches its manifest and warns about any damaged one it passes over.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import SplitData
from .bundle import (
    CONFIG_FILE,
    TRAINING_STATE_FILE,
    DamagedCheckpointError,
    verify_bundle,
    write_bundle,
)

#: Name of the state folder inside a run's checkpoint folder (``tl.fit``, ``TaskRunner``, CLI).
STATE_FOLDER = "state"
#: States kept in a state folder: the newest and the one before it.
KEEP = 2
_PREFIX = "state-"
#: Settings that may change on resume: a larger ``epochs`` trains further.
RESUMABLE_CHANGES = ("epochs",)
#: Data fields of a bundle that must match on resume.
_DATA_FIELDS = ("feature_names", "data_spec", "preprocessing", "label_encoder", "batch_encoder")


def state_name(epochs_run: int, step: int) -> str:
    """Folder name of the state after ``epochs_run`` epochs and ``step`` steps of the next one.

    Names sort in training order.

    Examples
    --------
    >>> state_name(12, 0)
    'state-000012-00000000'
    """
    return f"{_PREFIX}{epochs_run:06d}-{step:08d}"


def is_state(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one state written by :func:`write_state` (by its name)."""
    return Path(path).name.startswith(_PREFIX)


def list_states(state_dir: str | os.PathLike) -> list[Path]:
    """Return the states in ``state_dir``, newest first (none: an empty list)."""
    folder = Path(state_dir)
    if not folder.is_dir():
        return []
    states = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)]
    return sorted(states, key=lambda p: p.name, reverse=True)


def write_state(
    state_dir: str | os.PathLike,
    name: str,
    *,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    training_state: dict[str, Any],
) -> Path:
    """Write one state atomically, then delete all but the :data:`KEEP` newest.

    Leftovers of writes cut off by a kill (hidden temporary folders) are removed too.
    """
    folder = Path(state_dir)
    path = write_bundle(
        folder / name,
        config=config,
        weights=weights,
        training_state=training_state,
        overwrite=True,
    )
    for old in list_states(folder)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in folder.glob(f".{_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return path


def find_state(path: str | os.PathLike) -> Path:
    """Return the bundle to resume from: ``path`` itself, or the newest valid state in it.

    ``path`` may be a state or any bundle with ``training_state.pt``, a state
    folder, or a run folder holding a ``state/`` folder. States that do not
    match their manifest are passed over with a warning.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist or holds no training state.
    DamagedCheckpointError
        Every state found is damaged (the message lists why).
    """
    path = Path(path)
    if not path.exists():
        msg = f"Cannot resume from {str(path)!r}: it does not exist."
        raise FileNotFoundError(msg)
    if (path / CONFIG_FILE).is_file():
        if not (path / TRAINING_STATE_FILE).is_file():
            msg = (
                f"Cannot resume from {str(path)!r}: the bundle has no {TRAINING_STATE_FILE} "
                "(it was saved with include_training_state=False)."
            )
            raise FileNotFoundError(msg)
        if is_state(path):
            verify_bundle(path)
        return path
    folder = path / STATE_FOLDER if (path / STATE_FOLDER).is_dir() else path
    states = list_states(folder)
    if not states:
        msg = f"Cannot resume from {str(path)!r}: it holds no training state ({_PREFIX}* folders)."
        raise FileNotFoundError(msg)
    problems = []
    for state in states:
        try:
            verify_bundle(state)
        except DamagedCheckpointError as error:
            problems.append(str(error))
            continue
        if problems:
            warnings.warn(
                f"Skipped a damaged training state ({'; '.join(problems)}); resuming from the "
                f"previous one, {str(state)!r}.",
                UserWarning,
                stacklevel=2,
            )
        return state
    msg = f"Every training state in {str(folder)!r} is damaged: {'; '.join(problems)}"
    raise DamagedCheckpointError(msg)


def describe_data(data: Any) -> dict[str, Any] | None:
    """Describe the cells of a split so that a resumed run can check it gets the same ones.

    ``SplitData``: the number of cells and a SHA-256 of their names (of their
    rows when the names are unknown); a sized ``Dataset``: the number of cells;
    anything else: ``None`` (not checked).

    Examples
    --------
    >>> import scdlkit
    >>> prepared = scdlkit.prepare_data(scdlkit.datasets.pbmc68k_reduced())
    >>> describe_data(prepared.val)["cells"]
    105
    """
    if isinstance(data, SplitData):
        names = data.obs_names
        digest = hashlib.sha256()
        if names is None:
            digest.update(np.ascontiguousarray(data.rows).tobytes())
        else:
            digest.update("\0".join(map(str, names)).encode())
        return {"cells": len(data), "sha256": digest.hexdigest()}
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return {"cells": len(data)}
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _list_difference(name: str, saved: list, now: list) -> str:
    if len(saved) != len(now):
        return f"{name}: {len(saved)} saved, {len(now)} now"
    first = next(i for i, (a, b) in enumerate(zip(saved, now, strict=True)) if a != b)
    return f"{name}: position {first} is {_short(saved[first])} saved, {_short(now[first])} now"


def differences(name: str, saved: Any, now: Any) -> list[str]:
    """List how ``now`` differs from ``saved`` (one entry per differing key), for messages.

    Examples
    --------
    >>> differences("settings", {"lr": 0.001, "seed": 0}, {"lr": 0.003, "seed": 0})
    ['settings lr: 0.001 saved, 0.003 now']
    """
    if saved == now:
        return []
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        found = []
        for key in sorted(set(saved) | set(now), key=str):
            found += differences(f"{name} {key}", saved.get(key), now.get(key))
        return found
    if isinstance(saved, list) and isinstance(now, list):
        return [_list_difference(name, saved, now)]
    if name.endswith(" sha256"):
        return [f"{name.removesuffix(' sha256')}: other cells (their names differ)"]
    return [f"{name}: {_short(saved)} saved, {_short(now)} now"]


def check_resumable(path: str | os.PathLike, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume when the model, task, settings or data differ from the saved run.

    ``saved`` is the ``config.json`` of the state, ``now`` the same fields of
    the run that would continue it; a field missing on either side is not
    compared (older bundles, or data given without its fields).

    Raises
    ------
    ValueError
        Something differs; the message names every difference.
    """
    found: list[str] = []
    for key in ("model", "model_class", "task", "training_data", *_DATA_FIELDS):
        if key in saved and key in now:
            found += differences(key.replace("_", " "), saved[key], now[key])
    if "trainer" in saved and "trainer" in now:
        settings = {k: v for k, v in saved["trainer"].items() if k not in RESUMABLE_CHANGES}
        current = {k: v for k, v in now["trainer"].items() if k not in RESUMABLE_CHANGES}
        found += differences("setting", settings, current)
    if found:
        shown = "; ".join(found[:8]) + (f"; ... ({len(found) - 8} more)" if len(found) > 8 else "")
        msg = (
            f"Cannot resume from {str(path)!r}: the run differs from the saved one ({shown}). "
            "Resume with the same data, model and settings, or start a new run."
        )
        raise ValueError(msg)


@dataclass
class SaveSchedule:
    """When a trainer writes its state: every ``every`` epochs and/or ``minutes`` minutes.

    Parameters
    ----------
    state_dir
        Folder of the states.
    every
        Write after every ``every`` epochs (``None``: not by epochs).
    minutes
        Write after any step once this many minutes passed since the last write
        (``None``: not by time).
    """

    state_dir: Path
    every: int | None = None
    minutes: float | None = None
    _last: float = field(default_factory=time.monotonic)

    def epoch_due(self, epochs_run: int) -> bool:
        """Whether the end of epoch ``epochs_run`` (1-based) is a save point."""
        return self.every is not None and epochs_run % self.every == 0

    def time_due(self) -> bool:
        """Whether ``minutes`` have passed since the last write."""
        return self.minutes is not None and time.monotonic() - self._last >= 60 * self.minutes

    def saved(self) -> None:
        """Restart the clock after a write."""
        self._last = time.monotonic()
