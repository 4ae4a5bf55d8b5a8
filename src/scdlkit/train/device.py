"""Device selection and mixed-precision contexts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into CUDA, then MPS, then CPU; validate anything else.

    Parameters
    ----------
    device
        ``"auto"``, a device string such as ``"cpu"``/``"cuda:1"``, or a :class:`torch.device`.

    Raises
    ------
    ValueError
        A string torch does not understand, or a CUDA/MPS device that is not available.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        msg = f"device={device!r} is not a device torch knows; use 'auto', 'cpu', 'cuda' or 'mps'."
        raise ValueError(msg) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        msg = f"device={device!r} was requested but CUDA is not available; use device='auto' or 'cpu'."
        raise ValueError(msg)
    if resolved.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        msg = (
            f"device={device!r} was requested but MPS is not available; use device='auto' or 'cpu'."
        )
        raise ValueError(msg)
    return resolved


def autocast_dtype(device: torch.device, mixed_precision: bool | str) -> torch.dtype | None:
    """Return the autocast dtype for ``mixed_precision`` on ``device`` (``None``: full precision).

    ``True`` means float16 on CUDA (with a gradient scaler) and nothing elsewhere:
    bfloat16 autocast on CPU is slower than float32 on most CPUs, so it is only
    used when asked for explicitly with ``"bf16"``.
    """
    if mixed_precision is False or mixed_precision is None:
        return None
    choices = {True: "auto", "auto": "auto", "fp16": "fp16", "bf16": "bf16"}
    if mixed_precision not in choices:
        msg = f"mixed_precision must be True, False, 'fp16' or 'bf16', got {mixed_precision!r}."
        raise ValueError(msg)
    kind = choices[mixed_precision]
    if device.type == "cuda":
        return torch.bfloat16 if kind == "bf16" else torch.float16
    if kind == "bf16":
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op when ``dtype`` is ``None``."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
