"""Train/validation/test split assignment: from an ``.obs`` column or drawn reproducibly."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import format_names

SPLIT_NAMES = ("train", "val", "test")

_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def split_categorical(assignment: np.ndarray) -> pd.Categorical:
    """Per-cell split names as a categorical with categories ``train, val, test``."""
    return pd.Categorical(assignment, categories=list(SPLIT_NAMES))


def parse_split_column(values: pd.Series, *, key: str) -> np.ndarray:
    """Normalise a user's split column to ``"train"``/``"val"``/``"test"``.

    Accepted values (case-insensitive, surrounding spaces ignored): ``train``,
    ``training``, ``val``, ``valid``, ``validation``, ``test``, ``testing``.

    Raises
    ------
    ValueError
        Any other value or a missing value; the message lists the bad values.

    Examples
    --------
    >>> parse_split_column(pd.Series(["Train", "validation", "TEST"]), key="split").tolist()
    ['train', 'val', 'test']
    """
    as_text = values.astype("string").str.strip().str.lower()
    mapped = as_text.map(_ALIASES)
    bad = mapped.isna()
    if bad.any():
        bad_values = pd.unique(values[bad.to_numpy()].astype(str))
        msg = (
            f"split_key {key!r} has {int(bad.sum())} cells with values that are not a split name: "
            f"{format_names(bad_values)}. Use 'train', 'val' or 'test' "
            "(also 'training', 'validation'; case-insensitive)."
        )
        raise ValueError(msg)
    return mapped.to_numpy(dtype=object).astype(str)


def _largest_remainder(quotas: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
    """Integer allocation summing to ``total`` that follows ``quotas`` without exceeding ``caps``."""
    counts = np.minimum(np.floor(quotas).astype(np.int64), caps)
    remaining = total - int(counts.sum())
    order = np.argsort(-(quotas - np.floor(quotas)), kind="stable")
    while remaining > 0:
        room = order[counts[order] < caps[order]]
        if room.size == 0:
            break
        for group in room[:remaining]:
            counts[group] += 1
        remaining = total - int(counts.sum())
    return counts


def _stratified(groups: np.ndarray, val_size: float, test_size: float, rng) -> np.ndarray:
    assignment = np.full(groups.shape[0], "train", dtype=object)
    uniques, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    caps = sizes - 1  # keep at least one cell of every group in train
    n = groups.shape[0]
    n_test = _largest_remainder(sizes * test_size, round(n * test_size), caps)
    n_val = _largest_remainder(sizes * val_size, round(n * val_size), caps - n_test)
    for group in range(uniques.shape[0]):
        members = rng.permutation(np.flatnonzero(inverse == group))
        assignment[members[: n_test[group]]] = "test"
        assignment[members[n_test[group] : n_test[group] + n_val[group]]] = "val"
    return assignment


def _by_batch(batches: np.ndarray, val_size: float, test_size: float, rng) -> np.ndarray:
    """Hold out whole batches: every batch lands in exactly one split."""
    assignment = np.full(batches.shape[0], "train", dtype=object)
    uniques, inverse, sizes = np.unique(batches, return_inverse=True, return_counts=True)
    order = rng.permutation(uniques.shape[0])
    n = batches.shape[0]
    position = 0
    for name, size in (("test", test_size), ("val", val_size)):
        taken = 0
        while size > 0 and position < order.shape[0] and (taken == 0 or taken < size * n):
            group = order[position]
            assignment[inverse == group] = name
            taken += sizes[group]
            position += 1
    return assignment


def draw_split(
    n_obs: int,
    *,
    labels: np.ndarray | None = None,
    batches: np.ndarray | None = None,
    val_size: float = 0.15,
    test_size: float = 0.15,
    stratify: bool = True,
    batch_aware: bool = False,
    seed: int = 42,
) -> np.ndarray:
    """Draw a reproducible split.

    Parameters
    ----------
    n_obs
        Number of cells.
    labels
        Integer label codes; with ``stratify=True`` each label keeps its share in
        every split and always keeps at least one cell in train.
    batches
        Integer batch codes; needed for ``batch_aware=True``.
    val_size, test_size
        Fractions of cells for validation and test.
    stratify
        Stratify on ``labels`` (ignored when ``labels`` is ``None``).
    batch_aware
        Hold out whole batches (each batch lands in one split), so validation and
        test measure generalisation to unseen batches. Stratification does not
        apply then.
    seed
        Seed; the same seed gives the same split.

    Returns
    -------
    Array of ``"train"``/``"val"``/``"test"`` per cell.

    Raises
    ------
    ValueError
        Sizes out of range, ``batch_aware`` without ``batches``, or a requested
        split that ends up with no cells.
    """
    check_split_sizes(val_size, test_size)
    rng = np.random.default_rng(seed)
    if batch_aware:
        if batches is None:
            msg = "batch_aware_split=True needs batch_key= (the column whose batches are held out)."
            raise ValueError(msg)
        assignment = _by_batch(batches, val_size, test_size, rng)
    elif stratify and labels is not None:
        assignment = _stratified(labels, val_size, test_size, rng)
    else:
        assignment = _stratified(np.zeros(n_obs, dtype=np.int64), val_size, test_size, rng)
    check_nonempty(assignment, val_size=val_size, test_size=test_size, batch_aware=batch_aware)
    return assignment.astype(str)


def check_split_sizes(val_size: float, test_size: float) -> None:
    """Validate split fractions: each in ``[0, 1)`` and together below 1."""
    for name, value in (("val_size", val_size), ("test_size", test_size)):
        if not 0 <= value < 1:
            msg = f"{name} must be a fraction in [0, 1), got {value!r}."
            raise ValueError(msg)
    if val_size + test_size >= 1:
        msg = (
            f"val_size + test_size must be below 1 so cells remain for training, got "
            f"{val_size} + {test_size} = {val_size + test_size}."
        )
        raise ValueError(msg)


def check_nonempty(
    assignment: np.ndarray, *, val_size: float, test_size: float, batch_aware: bool = False
) -> None:
    """Raise when train, or a split that was asked for, holds no cells."""
    requested = {"train": 1.0, "val": val_size, "test": test_size}
    for name, size in requested.items():
        if size > 0 and not np.any(assignment == name):
            if batch_aware:
                hint = (
                    "there are too few batches to give every split its own; pass val_size=0 or "
                    "test_size=0, or batch_aware_split=False"
                )
            elif name == "train":
                hint = "lower val_size and test_size"
            else:
                hint = f"{assignment.shape[0]} cells are too few; use more cells or {name}_size=0"
            msg = f"The {name!r} split ended up empty: {hint}."
            raise ValueError(msg)
