"""Turn what users pass to ``fit``/``predict_dataset`` into an epoch-wise source of batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data import MinibatchLoader, SplitData
from ..data.device_data import DeviceBatches

Batch = dict[str, torch.Tensor]


@dataclass
class BatchSource:
    """Re-iterable batches of one input, reshuffled per epoch where the input allows it.

    Parameters
    ----------
    data
        ``SplitData``, a ``MinibatchLoader``, a map-style ``Dataset`` of per-cell
        dictionaries, a ``DataLoader`` or any re-iterable of batch dictionaries.
    batch_size
        Cells per batch where scdlkit builds the batches.
    shuffle
        Shuffle cells every epoch (ignored for inputs that already are batches).
    seed
        Seed of the shuffling order (epoch ``e`` uses ``(seed, e)``).
    num_workers
        Worker processes for a plain ``Dataset`` (passed to ``DataLoader``).
    role
        ``"train"``, ``"val"`` or ``"predict"``, for messages.
    num_replicas, rank
        Under DDP: the number of ranks and this rank. ``SplitData`` and plain
        ``Dataset`` inputs are sharded (training shards are padded to equal
        length); ``DataLoader``/``MinibatchLoader``/lists are used as given, so
        shard those yourself (e.g. with a ``DistributedSampler``).
    device
        Build the batches of a ``SplitData`` on this device from a copy of its
        rows kept there (:class:`~scdlkit.data.device_data.DeviceBatches`);
        ``None`` builds them on the host.
    """

    data: Any
    batch_size: int
    shuffle: bool
    seed: int
    num_workers: int = 0
    role: str = "train"
    num_replicas: int = 1
    rank: int = 0
    device: torch.device | None = None

    def __post_init__(self) -> None:
        data = self.data
        self.on_device = isinstance(data, SplitData) and self.device is not None
        if self.on_device:
            self._loader = DeviceBatches(
                data, self.device, self.batch_size, shuffle=self.shuffle, seed=self.seed,
                num_replicas=self.num_replicas, rank=self.rank, even_shards=self.role == "train",
            )  # fmt: skip
        elif isinstance(data, SplitData):
            self._loader = data.loader(
                self.batch_size, shuffle=self.shuffle, seed=self.seed,
                num_replicas=self.num_replicas, rank=self.rank, even_shards=self.role == "train",
            )  # fmt: skip
        elif isinstance(data, MinibatchLoader | DataLoader):
            self._loader = data
        elif isinstance(data, Dataset) and hasattr(data, "__len__"):
            self._loader = None  # built per epoch so the shuffle is seeded per epoch
        elif isinstance(data, Iterable) and not isinstance(data, str | bytes | dict):
            if iter(data) is data:
                msg = (
                    f"The {self.role} data is a one-shot iterator (e.g. a generator); it would be "
                    "empty after the first epoch. Pass a list, a Dataset or a DataLoader instead."
                )
                raise TypeError(msg)
            self._loader = data
        else:
            msg = (
                f"Cannot read {self.role} data of type {type(data).__name__}. Pass a SplitData "
                "(from scdlkit.prepare_data), a torch Dataset of dictionaries, a DataLoader or a "
                "list of batch dictionaries with an 'x' tensor."
            )
            raise TypeError(msg)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Batches of ``epoch`` as dictionaries of tensors."""
        loader = self._loader
        if loader is None and self.num_replicas > 1:
            sampler = DistributedSampler(
                self.data, self.num_replicas, self.rank, shuffle=self.shuffle, seed=self.seed
            )
            sampler.set_epoch(epoch)
            loader = DataLoader(
                self.data, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers
            )
        elif loader is None:
            generator = torch.Generator().manual_seed(
                int(np.random.default_rng([self.seed, epoch]).integers(2**62))
            )
            loader = DataLoader(
                self.data,
                batch_size=self.batch_size,
                shuffle=self.shuffle,
                generator=generator,
                num_workers=self.num_workers,
            )
        elif hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)  # a user's DistributedSampler
        for batch in loader:
            yield as_batch_dict(batch, role=self.role)


def as_batch_dict(batch: object, *, role: str = "train") -> Batch:
    """Check one batch and convert numpy arrays in it to tensors."""
    if not isinstance(batch, dict) or "x" not in batch:
        kind = type(batch).__name__
        keys = f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""
        msg = (
            f"Each {role} batch must be a dictionary with at least an 'x' tensor (cells x "
            f"features), got a {kind}{keys}."
        )
        raise TypeError(msg)
    out = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        out[key] = value
    x = out["x"]
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        msg = f"The {role} batch's 'x' must be a 2-D tensor (cells x features), got {type(x).__name__}."
        raise TypeError(msg)
    if not torch.is_floating_point(x):
        out["x"] = x.float()
    return out


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of ``batch`` to ``device`` (non-blocking from pinned memory)."""
    if device.type == "cpu":
        return batch
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }
