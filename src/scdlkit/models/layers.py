"""Building blocks shared by the bundled models: argument checks and the MLP builder."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral, Real

from torch import nn


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Validate an integer argument and return it as a Python ``int``.

    Parameters
    ----------
    name
        Argument name, for the message.
    value
        The value to check (``bool`` is refused).
    minimum
        Smallest allowed value.

    Returns
    -------
    The value as ``int``.

    Raises
    ------
    ValueError
        Not an integer, or below ``minimum``.

    Examples
    --------
    >>> check_int("latent_dim", 16)
    16
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        msg = f"{name} must be an integer >= {minimum}, got {value!r}."
        raise ValueError(msg)
    return int(value)


def check_float(
    name: str,
    value: object,
    *,
    low: float = 0.0,
    high: float | None = None,
    high_inclusive: bool = False,
) -> float:
    """Validate a real-valued argument in ``[low, high)`` (or ``[low, high]``) and return a ``float``.

    Parameters
    ----------
    name
        Argument name, for the message.
    value
        The value to check (``bool`` is refused).
    low
        Smallest allowed value (inclusive).
    high
        Upper bound, or ``None`` for no upper bound.
    high_inclusive
        Whether ``high`` itself is allowed.

    Returns
    -------
    The value as ``float``.

    Raises
    ------
    ValueError
        Not a finite real number, or out of range.

    Examples
    --------
    >>> check_float("dropout", 0.1, high=1.0)
    0.1
    """
    ok = isinstance(value, Real) and not isinstance(value, bool)
    if ok:
        number = float(value)
        ok = number == number and number >= low and number != float("inf")
        if ok and high is not None:
            ok = number <= high if high_inclusive else number < high
    if not ok:
        if high is None:
            allowed = f">= {low}"
        else:
            allowed = f"in [{low}, {high}{']' if high_inclusive else ')'}"
        msg = f"{name} must be a number {allowed}, got {value!r}."
        raise ValueError(msg)
    return float(value)


def check_dropout(value: object) -> float:
    """Validate a dropout probability in ``[0, 1)``.

    Examples
    --------
    >>> check_dropout(0.0)
    0.0
    """
    return check_float("dropout", value, low=0.0, high=1.0)


def check_bool(name: str, value: object) -> bool:
    """Validate a boolean flag.

    Examples
    --------
    >>> check_bool("batch_norm", True)
    True
    """
    if not isinstance(value, bool):
        msg = f"{name} must be True or False, got {value!r}."
        raise ValueError(msg)
    return value


def check_hidden_dims(value: object, *, name: str = "hidden_dims") -> tuple[int, ...]:
    """Validate hidden layer sizes: a non-empty sequence of positive integers.

    A single integer is accepted as one hidden layer.

    Examples
    --------
    >>> check_hidden_dims([256, 128])
    (256, 128)
    >>> check_hidden_dims(64)
    (64,)
    """
    if isinstance(value, Integral) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | Iterable):
        msg = f"{name} must be a non-empty sequence of positive integers such as (256, 128), got {value!r}."
        raise ValueError(msg)
    dims = tuple(value)
    if not dims:
        msg = f"{name} must list at least one layer size, such as (256, 128); got an empty {type(value).__name__}."
        raise ValueError(msg)
    return tuple(check_int(f"{name}[{i}]", dim) for i, dim in enumerate(dims))


def build_mlp(
    in_dim: int,
    hidden_dims: Sequence[int],
    *,
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> nn.Sequential:
    """Build a stack of ``Linear -> [BatchNorm1d] -> ReLU -> [Dropout]`` blocks.

    Parameters
    ----------
    in_dim
        Input features.
    hidden_dims
        Output size of each block.
    dropout
        Dropout probability after each activation (no layer when 0).
    batch_norm
        Add a ``BatchNorm1d`` after each linear layer.

    Returns
    -------
    A :class:`torch.nn.Sequential` mapping ``(n, in_dim)`` to ``(n, hidden_dims[-1])``.

    Examples
    --------
    >>> mlp = build_mlp(10, (8, 4), dropout=0.1)
    >>> import torch
    >>> mlp(torch.zeros(3, 10)).shape
    torch.Size([3, 4])
    """
    layers: list[nn.Module] = []
    previous = in_dim
    for dim in hidden_dims:
        layers.append(nn.Linear(previous, dim))
        if batch_norm:
            layers.append(nn.BatchNorm1d(dim))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        previous = dim
    return nn.Sequential(*layers)


def mlp_head(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int,
    *,
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> nn.Sequential:
    """:func:`build_mlp` followed by a linear output layer (no activation).

    Used for encoders (``input_dim -> hidden_dims -> latent_dim``) and decoders
    (``latent_dim -> reversed(hidden_dims) -> input_dim``).

    Examples
    --------
    >>> import torch
    >>> mlp_head(10, (8,), 2)(torch.zeros(3, 10)).shape
    torch.Size([3, 2])
    """
    body = build_mlp(in_dim, hidden_dims, dropout=dropout, batch_norm=batch_norm)
    last = hidden_dims[-1] if hidden_dims else in_dim
    return nn.Sequential(*body, nn.Linear(last, out_dim))
