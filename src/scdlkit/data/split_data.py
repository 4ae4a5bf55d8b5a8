"""``SplitData``: the cells of one split, read lazily from the source matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .loaders import Batch, MinibatchLoader
from .matrix import SourceMatrix, is_backed, read_row_block
from .transform import FeatureTransform, fit_block_rows, iter_selected_rows


class SplitData(Dataset):
    """The cells of one split (train, val, test or a query), ready for a model.

    Holds a *reference* to the source matrix, the source rows of its cells and the
    :class:`~scdlkit.data.transform.FeatureTransform` that turns rows into model
    input; nothing is densified until a minibatch is asked for. It is a regular
    :class:`torch.utils.data.Dataset` of per-cell dictionaries, and
    :meth:`loader` gives the fast path that slices whole minibatches at once.

    Parameters
    ----------
    matrix
        Source matrix (dense, CSR or backed).
    rows
        Source rows of the cells, int64.
    transform
        Feature transform (gene selection, normalisation, scaling).
    y
        Encoded labels aligned with ``rows``, or ``None``.
    batch
        Encoded batches aligned with ``rows``, or ``None``.
    name
        Split name, for messages.
    obs_names
        Names of all source rows (``obs_names[rows]`` are this split's cells), when known.
    covariates
        Further per-cell arrays aligned with ``rows`` that every minibatch carries
        under their key: ``library`` (n, 1), ``cat_covs`` (n, k), ``cont_covs`` (n, m)
        for count models.

    Examples
    --------
    >>> import scdlkit
    >>> prepared = scdlkit.prepare_data(scdlkit.datasets.pbmc68k_reduced(), label_key="bulk_labels")
    >>> cell = prepared.train[0]
    >>> sorted(cell), cell["x"].shape
    (['index', 'x', 'y'], torch.Size([765]))
    """

    def __init__(
        self,
        matrix: SourceMatrix,
        rows: np.ndarray,
        transform: FeatureTransform,
        *,
        y: np.ndarray | None = None,
        batch: np.ndarray | None = None,
        name: str = "data",
        obs_names: pd.Index | None = None,
        covariates: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.matrix = matrix
        self.rows = np.asarray(rows, dtype=np.int64)
        self.transform = transform
        self.y = None if y is None else np.asarray(y, dtype=np.int64)
        self.batch = None if batch is None else np.asarray(batch, dtype=np.int64)
        self.name = name
        self.source_obs_names = obs_names
        self.covariates = {
            key: np.ascontiguousarray(value) for key, value in (covariates or {}).items()
        }
        for key, value in self.covariates.items():
            if value.shape[0] != self.rows.shape[0]:
                msg = f"Covariate {key!r} has {value.shape[0]} rows for {self.rows.shape[0]} cells."
                raise ValueError(msg)

    @property
    def obs_names(self) -> pd.Index | None:
        """Names of this split's cells, in split order (``None`` when unknown)."""
        return None if self.source_obs_names is None else self.source_obs_names[self.rows]

    def __repr__(self) -> str:
        keys = [k for k in ("y", "batch") if getattr(self, k) is not None] + list(self.covariates)
        keys = ", ".join(keys) or "no labels"
        backed = ", backed" if is_backed(self.matrix) else ""
        return f"SplitData({self.name!r}: {len(self)} cells x {self.n_features} features, {keys}{backed})"

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def subset(self, positions: np.ndarray, name: str) -> SplitData:
        """Return the cells at ``positions`` (of this split) as a split of their own.

        Examples
        --------
        >>> import scdlkit
        >>> prepared = scdlkit.prepare_data(
        ...     scdlkit.datasets.pbmc68k_reduced(), label_key="bulk_labels"
        ... )
        >>> part = prepared.train.subset(np.arange(10), "part")
        >>> len(part), bool((part.y == prepared.train.y[:10]).all())
        (10, True)
        """
        positions = np.asarray(positions, dtype=np.int64)
        return SplitData(
            self.matrix, self.rows[positions], self.transform, name=name,
            y=None if self.y is None else self.y[positions],
            batch=None if self.batch is None else self.batch[positions],
            obs_names=self.source_obs_names,
            covariates={key: value[positions] for key, value in self.covariates.items()},
        )  # fmt: skip

    @property
    def X(self) -> np.ndarray:  # noqa: N802 (scDLKit 0.1.6 name, like AnnData.X)
        """All cells as a dense float32 array after preprocessing (see :meth:`to_numpy`)."""
        return self.to_numpy()

    @property
    def labels(self) -> np.ndarray | None:
        """Encoded labels of the cells (alias of ``y``, the scDLKit 0.1.6 name)."""
        return self.y

    @property
    def batches(self) -> np.ndarray | None:
        """Encoded batches of the cells (alias of ``batch``, the scDLKit 0.1.6 name)."""
        return self.batch

    @property
    def n_obs(self) -> int:
        """Number of cells."""
        return len(self)

    @property
    def n_features(self) -> int:
        """Number of model input features."""
        return self.transform.n_features

    def __getitem__(self, position: int) -> Batch:
        if not -len(self) <= position < len(self):
            msg = f"Cell {position} is out of range for a split of {len(self)} cells."
            raise IndexError(msg)
        position = position % len(self)
        row = int(self.rows[position])
        if is_backed(self.matrix):
            x = self.transform.transform_rows(
                read_row_block(self.matrix, row, row + 1), np.zeros(1, np.int64)
            )
        else:
            x = self.transform.transform_rows(self.matrix, self.rows[position : position + 1])
        cell = self.batch_dict(x, np.array([position]))
        return {key: value[0] for key, value in cell.items()}

    def batch_dict(self, x: np.ndarray, positions: np.ndarray) -> Batch:
        """Assemble the batch dictionary for already transformed ``x`` of cells at ``positions``."""
        batch = {"x": torch.from_numpy(x), "index": torch.from_numpy(self.rows[positions])}
        if self.y is not None:
            batch["y"] = torch.from_numpy(self.y[positions])
        if self.batch is not None:
            batch["batch"] = torch.from_numpy(self.batch[positions])
        for key, values in self.covariates.items():
            batch[key] = torch.from_numpy(values[positions])
        return batch

    def loader(
        self,
        batch_size: int = 256,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        block_rows: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        even_shards: bool = True,
    ) -> MinibatchLoader:
        """Return a :class:`~scdlkit.data.MinibatchLoader` over these cells (see its parameters)."""
        return MinibatchLoader(
            self, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, block_rows=block_rows,
            num_replicas=num_replicas, rank=rank, even_shards=even_shards,
        )  # fmt: skip

    def to_numpy(self) -> np.ndarray:
        """All cells as one dense float32 array (cells x features), in split order.

        Only for splits that fit in memory densely, e.g. for a baseline model.
        """
        out = np.empty((len(self), self.n_features), dtype=np.float32)
        order = np.argsort(self.rows, kind="stable")
        block_rows = fit_block_rows(self.n_features)
        done = 0
        for chunk, block, local in iter_selected_rows(
            self.matrix, self.rows[order], block_rows=block_rows
        ):
            out[order[done : done + chunk.shape[0]]] = self.transform.transform_rows(block, local)
            done += chunk.shape[0]
        return out
