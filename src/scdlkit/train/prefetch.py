"""Background preparation of minibatches while the model computes on the previous ones."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import torch

Batch = dict[str, torch.Tensor]

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def pin(batch: Batch) -> Batch:
    """Copy the host tensors of ``batch`` into page-locked memory (for non-blocking GPU copies)."""
    return {
        key: value.pin_memory()
        if isinstance(value, torch.Tensor) and value.device.type == "cpu"
        else value
        for key, value in batch.items()
    }


def prefetch(batches: Iterator[Batch], depth: int, *, pin_memory: bool = False) -> Iterator[Batch]:
    """Yield ``batches`` while a background thread prepares up to ``depth`` batches ahead.

    scdlkit's minibatch kernels release the GIL, so the next batches are sliced,
    normalised (and pinned, with ``pin_memory=True``) on another core while the
    model trains on the current one. The order of the batches is unchanged;
    an error raised while preparing a batch is raised here. Stopping early
    (``break``, an exception, ``Ctrl-C``) stops the thread.

    Parameters
    ----------
    batches
        The batch iterator (consumed in the background thread only).
    depth
        Batches prepared ahead; ``0`` prepares them in the calling thread.
    pin_memory
        Pin every batch (only useful when the model is on a CUDA device).

    Examples
    --------
    >>> import torch
    >>> source = ({"x": torch.full((2, 3), float(i))} for i in range(4))
    >>> [int(b["x"][0, 0]) for b in prefetch(source, depth=2)]
    [0, 1, 2, 3]
    """
    if depth <= 0:
        for batch in batches:
            yield pin(batch) if pin_memory else batch
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for batch in batches:
                put(pin(batch) if pin_memory else batch)
                if stop.is_set():
                    return
            put(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer and raised there
            put(_Failure(error))

    thread = threading.Thread(target=work, name="scdlkit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
