"""Collect per-batch model outputs into whole arrays without an extra copy at the end."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import numpy as np
import torch

from .batches import to_device


class OutputCollector:
    """Gather batches of outputs into one array per key, in arrival order.

    When the number of cells is known up front, every batch is written in place
    into an array allocated once (no list of parts and no final concatenation,
    which would briefly hold every output twice); otherwise the parts are
    concatenated at the end.

    Parameters
    ----------
    n_cells
        Rows expected in all (``None`` when unknown).

    Examples
    --------
    >>> collector = OutputCollector(5)
    >>> collector.add("latent", np.ones((3, 2)))
    >>> collector.add("latent", np.zeros((2, 2)))
    >>> collector.result()["latent"].sum()
    np.float64(6.0)
    """

    def __init__(self, n_cells: int | None) -> None:
        self.n_cells = n_cells
        self._arrays: dict[str, np.ndarray] = {}
        self._filled: dict[str, int] = {}
        self._parts: dict[str, list[np.ndarray]] = {}

    def add(self, key: str, value: np.ndarray) -> None:
        """Append the rows of ``value`` to output ``key``."""
        if key in self._parts or self.n_cells is None:
            self._parts.setdefault(key, []).append(value)
            return
        filled = self._filled.get(key, 0)
        if key not in self._arrays:
            self._arrays[key] = np.empty((self.n_cells, *value.shape[1:]), dtype=value.dtype)
        array = self._arrays[key]
        stop = filled + value.shape[0]
        if (
            stop > array.shape[0]
            or value.shape[1:] != array.shape[1:]
            or value.dtype != array.dtype
        ):
            # more rows or another shape than announced: keep what came so far as a part
            self._parts[key] = [array[:filled], value]
            del self._arrays[key]
            return
        array[filled:stop] = value
        self._filled[key] = stop

    def result(self) -> dict[str, np.ndarray]:
        """Return the arrays, in the order their keys first arrived."""
        out = {key: array[: self._filled[key]] for key, array in self._arrays.items()}
        out.update({key: np.concatenate(parts) for key, parts in self._parts.items()})
        return out


def collect_predictions(
    batches: Iterable[dict[str, torch.Tensor]],
    predict: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    *,
    device: torch.device,
    n_cells: int | None,
    outputs: Collection[str] | None = None,
    include_inputs: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``predict`` on every batch (moved to ``device``) and gather the outputs as numpy arrays.

    ``outputs`` keeps only those keys; ``include_inputs`` adds the batch tensors
    (``x``, ``y``, ``batch``, ``index``). Floating outputs are returned as float32.

    Raises
    ------
    ValueError
        ``batches`` is empty.
    """
    collected = OutputCollector(n_cells)
    n_batches = 0
    for batch in batches:
        n_batches += 1
        produced = predict(to_device(batch, device))
        if outputs is not None:
            produced = {k: v for k, v in produced.items() if k in outputs}
        if include_inputs:
            produced = {
                **{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)},
                **produced,
            }
        for key, value in produced.items():
            value = value.detach()
            if torch.is_floating_point(value):
                value = value.float()
            collected.add(key, value.cpu().numpy())
    if n_batches == 0:
        msg = "predict_dataset got no batches; the data is empty."
        raise ValueError(msg)
    return collected.result()
