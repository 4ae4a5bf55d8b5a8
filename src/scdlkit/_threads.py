"""Keep torch's thread count when scanpy's numba kernels start their OpenMP pool."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore ``torch.get_num_threads()`` after the block.

    numba's OpenMP threading layer (used by scanpy's parallel kernels, e.g.
    ``normalize_total`` and ``highly_variable_genes``) sets OpenMP's thread
    count to every core when its pool starts, and torch shares that runtime: a
    user's ``torch.set_num_threads(1)`` would silently become ``n_cores``, which
    makes training many times slower on a busy machine.

    Examples
    --------
    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with keep_torch_threads():
    ...     torch.set_num_threads(before + 1)
    >>> torch.get_num_threads() == before
    True
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
