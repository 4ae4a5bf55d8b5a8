"""Minibatch loading: whole minibatches sliced from the source matrix in one operation.

Each batch is the dictionary of DESIGN §2: ``x`` (float32, cells x features),
``y`` and ``batch`` (int64, when known) and ``index`` (int64 source rows).
In-memory matrices are indexed directly with the batch's rows. Backed
matrices are read in contiguous row blocks, visited in shuffled order and
shuffled inside each block, so memory is bounded by the block size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .matrix import is_backed, read_row_block

if TYPE_CHECKING:
    from .split_data import SplitData

Batch = dict[str, torch.Tensor]


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """Return the random generator of one epoch; the same ``(seed, epoch)`` gives the same order."""
    return np.random.default_rng([seed, epoch])


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
        For backed matrices: source rows read from disk at once. Defaults to
        ``max(64 * batch_size, 8192)``.

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
        split: SplitData,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        block_rows: int | None = None,
    ) -> None:
        if int(batch_size) < 1:
            msg = f"batch_size must be a positive integer, got {batch_size!r}."
            raise ValueError(msg)
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.block_rows = block_rows or max(64 * self.batch_size, 8192)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order of ``epoch`` (called by the Trainer every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if is_backed(self.split.matrix):
            return self._iter_blocks()
        return self._iter_in_memory()

    def _iter_in_memory(self) -> Iterator[Batch]:
        n = len(self.split)
        order = epoch_rng(self.seed, self.epoch).permutation(n) if self.shuffle else np.arange(n)
        stop = len(self) * self.batch_size if self.drop_last else n
        matrix, transform = self.split.matrix, self.split.transform
        for start in range(0, stop, self.batch_size):
            positions = order[start : start + self.batch_size]
            rows = self.split.rows[positions]
            yield self.split.batch_dict(transform.transform_rows(matrix, rows), positions)

    def _iter_blocks(self) -> Iterator[Batch]:
        rng = epoch_rng(self.seed, self.epoch)
        rows = self.split.rows
        n = rows.shape[0]
        sorted_positions = np.argsort(rows, kind="stable")
        chunks = [sorted_positions[s : s + self.block_rows] for s in range(0, n, self.block_rows)]
        if self.shuffle:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        pending = 0
        transform = self.split.transform
        for chunk in chunks:
            if self.shuffle:
                chunk = chunk[rng.permutation(chunk.shape[0])]
            low = int(rows[chunk].min())
            block = read_row_block(self.split.matrix, low, int(rows[chunk].max()) + 1)
            cursor = 0
            while cursor < chunk.shape[0]:
                take = chunk[cursor : cursor + self.batch_size - pending]
                cursor += take.shape[0]
                parts.append((transform.transform_rows(block, rows[take] - low), take))
                pending += take.shape[0]
                if pending == self.batch_size:
                    yield self._join(parts)
                    parts, pending = [], 0
        if parts and not self.drop_last:
            yield self._join(parts)

    def _join(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
        if len(parts) == 1:
            return self.split.batch_dict(*parts[0])
        x = np.concatenate([x for x, _ in parts])
        positions = np.concatenate([p for _, p in parts])
        return self.split.batch_dict(x, positions)
