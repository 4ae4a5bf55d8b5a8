"""Minibatch loading: whole minibatches sliced from the source matrix in one operation.

Each batch is the batch dictionary: ``x`` (float32, cells x features), ``y``
and ``batch`` (int64, when known), ``index`` (int64 source rows) and, for
count models, ``library``, ``cat_covs`` and ``cont_covs``.
In-memory matrices are indexed directly with the batch's rows. Backed
matrices are read in contiguous row blocks, visited in shuffled order and
shuffled inside each block, so memory is bounded by the block size.

For multi-process training each process (rank) iterates over its own shard of
the epoch's order: a contiguous slice, so a rank of a backed run reads only its
share of the blocks. With ``even_shards=True`` the order is padded by wrapping
around (as :class:`torch.utils.data.DistributedSampler` does), so every rank
runs the same number of steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from .matrix import SourceMatrix, is_backed, read_row_block
from .transform import FeatureTransform

Batch = dict[str, torch.Tensor]


class RowSource(Protocol):
    """What the loader needs of a split (:class:`~scdlkit.data.SplitData` is one)."""

    matrix: SourceMatrix
    rows: np.ndarray
    transform: FeatureTransform

    def __len__(self) -> int: ...

    def batch_dict(self, x: np.ndarray, positions: np.ndarray) -> Batch:
        """Assemble the batch dictionary of transformed ``x`` for cells at ``positions``."""


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """Return the random generator of one epoch; the same ``(seed, epoch)`` gives the same order."""
    return np.random.default_rng([seed, epoch])


def shard_bounds(n: int, rank: int, num_replicas: int, *, even: bool) -> tuple[int, int]:
    """Return ``(start, stop)`` of rank ``rank``'s slice of ``n`` entries (padded when ``even``).

    Examples
    --------
    >>> shard_bounds(5, 1, 2, even=True), shard_bounds(5, 1, 2, even=False)
    ((3, 6), (2, 5))
    >>> [shard_bounds(5, rank, 2, even=False) for rank in range(2)]
    [(0, 2), (2, 5)]
    """
    if even:
        per_rank = -(-n // num_replicas)
        return rank * per_rank, (rank + 1) * per_rank
    return round(rank * n / num_replicas), round((rank + 1) * n / num_replicas)


def shard(order: np.ndarray, rank: int, num_replicas: int, *, even: bool) -> np.ndarray:
    """Return rank ``rank``'s contiguous slice of ``order`` out of ``num_replicas``.

    With ``even=True`` the order is first padded by wrapping around so that every
    rank gets ``ceil(n / num_replicas)`` entries; otherwise the slices differ in
    length by at most one and together hold every entry once.

    Examples
    --------
    >>> shard(np.arange(5), 1, 2, even=True)
    array([3, 4, 0])
    >>> [shard(np.arange(5), rank, 2, even=False) for rank in range(2)]
    [array([0, 1]), array([2, 3, 4])]
    """
    if num_replicas == 1:
        return order
    n = order.shape[0]
    start, stop = shard_bounds(n, rank, num_replicas, even=even)
    if n and stop > n:
        order = np.resize(order, stop)  # pads by repeating from the start
    return order[start:stop]


class MinibatchLoader:
    """Iterate over a :class:`~scdlkit.data.SplitData` in minibatch dictionaries.

    Parameters
    ----------
    split
        The cells to load.
    batch_size
        Cells per batch.
    shuffle
        Visit cells in a new random order every epoch.
    drop_last
        Skip the last batch when it has fewer than ``batch_size`` cells.
    seed
        Seed of the shuffling; the order of epoch ``e`` depends only on ``(seed, e)``.
    block_rows
        For backed matrices: the source rows are cut into blocks of this many
        consecutive rows, and each block is read from disk at once (only the
        rows between the block's first and last cell of this split). Defaults
        to ``max(64 * batch_size, 8192)``, at most 32768, so memory stays
        bounded by the block whatever the size of the file or of the split.
    num_replicas, rank
        Number of processes sharing the epoch and this process's rank (set by
        the :class:`~scdlkit.Trainer` under ``torchrun``); every rank must use
        the same ``seed``.
    even_shards
        Pad the epoch by wrapping around so that every rank gets the same number
        of cells (training); ``False`` visits every cell exactly once (evaluation).

    Examples
    --------
    >>> import scdlkit
    >>> prepared = scdlkit.prepare_data(scdlkit.datasets.pbmc68k_reduced())
    >>> loader = prepared.train.loader(batch_size=128, shuffle=True)
    >>> batch = next(iter(loader))
    >>> batch["x"].shape
    torch.Size([128, 765])
    """

    def __init__(
        self,
        split: RowSource,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        block_rows: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        even_shards: bool = True,
    ) -> None:
        if int(batch_size) < 1:
            msg = f"batch_size must be a positive integer, got {batch_size!r}."
            raise ValueError(msg)
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            msg = f"rank must be in [0, num_replicas), got rank={rank!r}, num_replicas={num_replicas!r}."
            raise ValueError(msg)
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.block_rows = block_rows or min(max(64 * self.batch_size, 8192), 32768)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.even_shards = even_shards

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order of ``epoch`` (called by the Trainer every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        start, stop = shard_bounds(
            len(self.split), self.rank, self.num_replicas, even=self.even_shards
        )
        n = stop - start
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if is_backed(self.split.matrix):
            return self._iter_blocks()
        return self._iter_in_memory()

    def _iter_in_memory(self) -> Iterator[Batch]:
        n = len(self.split)
        order = epoch_rng(self.seed, self.epoch).permutation(n) if self.shuffle else np.arange(n)
        order = shard(order, self.rank, self.num_replicas, even=self.even_shards)
        stop = len(self) * self.batch_size if self.drop_last else order.shape[0]
        matrix, transform = self.split.matrix, self.split.transform
        for start in range(0, stop, self.batch_size):
            positions = order[start : start + self.batch_size]
            rows = self.split.rows[positions]
            yield self.split.batch_dict(transform.transform_rows(matrix, rows), positions)

    def _iter_blocks(self) -> Iterator[Batch]:
        rows = self.split.rows
        order, block_of = self._block_order()
        if self.drop_last:
            keep = len(self) * self.batch_size
            order, block_of = order[:keep], block_of[:keep]
        transform = self.split.transform
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        pending = 0
        # runs of consecutive positions from the same block: one contiguous read each
        starts = np.flatnonzero(np.diff(block_of, prepend=-1))
        for begin, end in zip(starts, [*starts[1:], order.shape[0]], strict=True):
            run = order[begin:end]
            low = int(rows[run].min())
            block = read_row_block(self.split.matrix, low, int(rows[run].max()) + 1)
            cursor = 0
            while cursor < run.shape[0]:
                take = run[cursor : cursor + self.batch_size - pending]
                cursor += take.shape[0]
                parts.append((transform.transform_rows(block, rows[take] - low), take))
                pending += take.shape[0]
                if pending == self.batch_size:
                    yield self._join(parts)
                    parts, pending = [], 0
        if parts:
            yield self._join(parts)

    def _block_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Return this rank's positions in visiting order and the block of each."""
        rng = epoch_rng(self.seed, self.epoch)
        n = len(self.split)
        sorted_positions = np.argsort(self.split.rows, kind="stable")
        # cells grouped by the block of source rows they fall in (empty blocks skipped)
        source_block = self.split.rows[sorted_positions] // self.block_rows
        bounds = np.flatnonzero(np.diff(source_block)) + 1
        groups = np.split(sorted_positions, bounds) if n else []
        visit = rng.permutation(len(groups)) if self.shuffle else np.arange(len(groups))
        chunks, block_of = [], []
        for block in visit:
            chunk = groups[block]
            if self.shuffle:
                chunk = chunk[rng.permutation(chunk.shape[0])]
            chunks.append(chunk)
            block_of.append(np.full(chunk.shape[0], block, dtype=np.int64))
        if not chunks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        order, block_of = np.concatenate(chunks), np.concatenate(block_of)
        if self.num_replicas > 1:
            indices = shard(np.arange(n), self.rank, self.num_replicas, even=self.even_shards)
            order, block_of = order[indices], block_of[indices]
        return order, block_of

    def _join(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
        if len(parts) == 1:
            return self.split.batch_dict(*parts[0])
        x = np.concatenate([x for x, _ in parts])
        positions = np.concatenate([p for _, p in parts])
        return self.split.batch_dict(x, positions)
