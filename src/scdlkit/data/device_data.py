"""Minibatches built on the accelerator from a copy of the split kept there (whole-dataset-on-GPU).

When a split's rows fit in GPU memory, copying them there once removes the
per-batch host work and host-to-device copy: every minibatch is gathered from
the CSR arrays, normalised, log-transformed and scaled with a few vectorised
torch operations on the device. The batches equal those of
:class:`~scdlkit.data.MinibatchLoader` (same order for the same seed and epoch,
same values up to float rounding).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from .loaders import Batch, epoch_rng, shard, shard_bounds
from .matrix import is_backed

if TYPE_CHECKING:
    from .split_data import SplitData

#: Share of the free device memory a split may take.
_MEMORY_SHARE = 0.5


def device_bytes(split: SplitData) -> int:
    """Bytes the split's rows take on the device (float32 values, int64 indices)."""
    matrix = split.matrix
    if sp.issparse(matrix):
        lengths = np.diff(matrix.indptr)[split.rows]
        return int(lengths.sum()) * 12 + 8 * (len(split) + 1)
    return len(split) * matrix.shape[1] * 4


def fits_on_device(split: SplitData, device: torch.device) -> bool:
    """Whether ``split`` is in memory and takes under half of ``device``'s free memory."""
    if device.type != "cuda" or is_backed(split.matrix):
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return device_bytes(split) < _MEMORY_SHARE * free


class DeviceBatches:
    """Iterate over a split in minibatch dictionaries built on ``device``.

    Parameters
    ----------
    split
        The cells (an in-memory CSR or dense source matrix).
    device
        Where the rows are copied and the batches built.
    batch_size, shuffle, seed, num_replicas, rank, even_shards
        As for :class:`~scdlkit.data.MinibatchLoader`.

    Examples
    --------
    >>> import scdlkit
    >>> prepared = scdlkit.prepare_data(scdlkit.datasets.pbmc68k_reduced())
    >>> batches = DeviceBatches(prepared.train, torch.device("cpu"), batch_size=128)
    >>> next(iter(batches))["x"].shape
    torch.Size([128, 765])
    """

    def __init__(
        self,
        split: SplitData,
        device: torch.device,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        even_shards: bool = True,
    ) -> None:
        if is_backed(split.matrix):
            msg = (
                "A backed matrix cannot be copied to the device: pass data_on_device='auto' or "
                "False to the Trainer (minibatches are then read from disk block by block), or "
                "load the AnnData into memory first."
            )
            raise ValueError(msg)
        self.split, self.device = split, device
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, seed
        self.num_replicas, self.rank, self.even_shards = num_replicas, rank, even_shards
        self.epoch = 0
        transform = split.transform
        rows = split.matrix[split.rows]  # this split's rows only, in split order
        if sp.issparse(rows):
            rows = sp.csr_matrix(rows)
            self._indptr = torch.from_numpy(rows.indptr.astype(np.int64)).to(device)
            self._indices = torch.from_numpy(rows.indices.astype(np.int64)).to(device)
            self._data = torch.from_numpy(rows.data.astype(np.float32)).to(device)
            self._dense = None
        else:
            self._dense = torch.from_numpy(np.asarray(rows, dtype=np.float32)).to(device)
        self._positions = self._columns = None
        if transform.columns is not None:
            self._positions = torch.from_numpy(transform.column_positions).to(device)
            self._columns = torch.from_numpy(transform.columns).to(device)
        self._mean = self._std = None
        if transform.mean is not None:
            self._mean = torch.from_numpy(transform.mean).to(device)
            self._std = torch.from_numpy(transform.std).to(device)
        self._labels = {
            key: torch.from_numpy(values).to(device)
            for key, values in (
                ("index", split.rows), ("y", split.y), ("batch", split.batch),
                *split.covariates.items(),
            )
            if values is not None
        }  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        start, stop = shard_bounds(
            len(self.split), self.rank, self.num_replicas, even=self.even_shards
        )
        return -(-(stop - start) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.split)
        order = epoch_rng(self.seed, self.epoch).permutation(n) if self.shuffle else np.arange(n)
        order = shard(order, self.rank, self.num_replicas, even=self.even_shards)
        order = torch.from_numpy(order).to(self.device)
        for start in range(0, order.shape[0], self.batch_size):
            positions = order[start : start + self.batch_size]
            batch = {key: values[positions] for key, values in self._labels.items()}
            batch["x"] = self._transform(positions)
            yield batch

    def _transform(self, positions: torch.Tensor) -> torch.Tensor:
        transform = self.split.transform
        if self._dense is None:
            x = self._sparse_rows(positions)
        else:
            x = self._dense[positions]
            if transform.normalize:
                x = x * self._size_factors(x.sum(dim=1))[:, None]
            if self._columns is not None:
                x = x[:, self._columns]
            if transform.log1p:
                x = x.log1p()
        if self._mean is not None:
            x = (x - self._mean) / self._std
            if transform.max_value is not None:
                x = x.clamp(-transform.max_value, transform.max_value)
        return x

    def _size_factors(self, totals: torch.Tensor) -> torch.Tensor:
        target = float(self.split.transform.target_sum)
        return torch.where(totals > 0, target / totals.clamp_min(1e-30), torch.zeros_like(totals))

    def _sparse_rows(self, positions: torch.Tensor) -> torch.Tensor:
        transform = self.split.transform
        n_rows = positions.shape[0]
        starts = self._indptr[positions]
        lengths = self._indptr[positions + 1] - starts
        row_of = torch.repeat_interleave(torch.arange(n_rows, device=self.device), lengths)
        first = torch.cumsum(lengths, 0) - lengths  # where each row's entries begin in the batch
        offsets = torch.arange(row_of.shape[0], device=self.device) - first[row_of] + starts[row_of]
        cols, values = self._indices[offsets], self._data[offsets]
        if transform.normalize:
            totals = torch.zeros(n_rows, device=self.device).index_add_(0, row_of, values)
            values = values * self._size_factors(totals)[row_of]
        if self._positions is not None:
            cols = self._positions[cols]
            keep = cols >= 0
            row_of, cols, values = row_of[keep], cols[keep], values[keep]
        x = torch.zeros(n_rows, transform.n_features, device=self.device)
        x.index_put_((row_of, cols), values, accumulate=True)  # duplicates are summed
        return x.log1p_() if transform.log1p else x
