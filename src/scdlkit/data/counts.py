"""Count-model inputs: raw-count checks, library sizes, covariates and highly variable genes.

Count models (``input_kind = "counts"``, e.g. ``count_vae``) read the raw
counts themselves (no normalisation, log1p or scaling) and need per cell the
observed library size and, optionally, extra covariates from ``.obs``. These are
per-cell arrays carried by :class:`~scdlkit.data.SplitData` next to the matrix
and added to every minibatch under ``library``, ``cat_covs`` and ``cont_covs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from .._errors import format_names
from .._threads import keep_torch_threads
from .encoders import CategoryEncoder
from .fields import Fields, ModSpec, get_obs_column
from .matrix import SCAN_BLOCK_ROWS, MatrixSummary, SourceMatrix, iter_row_blocks
from .transform import iter_selected_rows

#: Batch-dictionary keys of the per-cell count-model inputs.
LIBRARY, CAT_COVS, CONT_COVS = "library", "cat_covs", "cont_covs"


def check_counts(summary: MatrixSummary, source: str) -> None:
    """Refuse non-integer or negative values for a count model.

    Raises
    ------
    ValueError
        The matrix holds negative or non-integer values (e.g. log-normalised data).
    """
    if summary.min_value < 0:
        msg = (
            f"{source} has negative values (minimum {summary.min_value:g}); count models need raw "
            'counts (integers >= 0). Pass the layer that holds them, e.g. layer="counts".'
        )
        raise ValueError(msg)
    if not summary.is_integer:
        msg = (
            f"{source} holds non-integer values (log-normalised or scaled data?); count models "
            'need raw counts. Pass the layer that holds them, e.g. layer="counts", or use_raw=True '
            "when .raw keeps the counts."
        )
        raise ValueError(msg)


def check_transforms(*, normalize: bool, log1p: bool, scale: bool) -> None:
    """Refuse per-minibatch transforms for a count model (it reads the counts themselves)."""
    on = [
        name
        for name, flag in (("normalize", normalize), ("log1p", log1p), ("scale", scale))
        if flag
    ]
    if on:
        msg = (
            f"Count models read raw counts and model library size themselves; pass "
            f"{', '.join(f'{name}=False' for name in on)}."
        )
        raise ValueError(msg)


def row_sums(matrix: SourceMatrix, columns: np.ndarray | None = None) -> np.ndarray:
    """Per-row totals (over ``columns`` only, when given), block by block, as float64.

    Examples
    --------
    >>> row_sums(sp.csr_matrix(np.array([[1, 2], [0, 3]]))).tolist()
    [3.0, 3.0]
    """
    totals = np.empty(matrix.shape[0], dtype=np.float64)
    for start, block in iter_row_blocks(matrix):
        if columns is not None:
            block = block[:, columns]
        totals[start : start + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
    return totals


def check_nonzero_cells(totals: np.ndarray, obs_names: pd.Index, source: str, n_genes: int) -> None:
    """Refuse cells whose selected genes sum to zero (a count likelihood cannot fit them).

    Raises
    ------
    ValueError
        With the number of such cells, the first names, and the scanpy call that filters them.
    """
    empty = np.flatnonzero(totals <= 0)
    if empty.size:
        msg = (
            f"{empty.size} cells of {source} have no counts in the {n_genes} selected genes "
            f"(e.g. {format_names(obs_names[empty[:5]].astype(str))}); a count model cannot fit "
            "them. Remove them first, e.g. sc.pp.filter_cells(adata, min_counts=1) (for all genes), "
            "or select more genes (n_top_genes)."
        )
        raise ValueError(msg)


def select_hvg_counts(
    fields: Fields, train_rows: np.ndarray, batches: pd.Series | None, n_top_genes: int
) -> np.ndarray:
    """Source columns of the ``n_top_genes`` highly variable genes of the training cells' counts.

    Ranked with :func:`scanpy.pp.highly_variable_genes` (``flavor="seurat_v3"``,
    on raw counts, per batch when ``batches`` is given).
    """
    n_features = fields.matrix.shape[1]
    if n_top_genes >= n_features:
        return np.arange(n_features)
    rows = np.sort(train_rows)
    blocks = [
        sp.csr_matrix(block[local]) if not sp.issparse(block) else block[local]
        for _, block, local in iter_selected_rows(fields.matrix, rows, block_rows=SCAN_BLOCK_ROWS)
    ]
    training = AnnData(sp.vstack(blocks, format="csr").astype(np.float32))
    training.var_names = fields.feature_names
    batch_key = None
    if batches is not None:
        training.obs["batch"] = pd.Categorical(batches.iloc[rows].astype(str).to_numpy())
        batch_key = "batch"
    _check_hvg_batches(training, batch_key, fields.source)
    try:
        with keep_torch_threads():
            sc.pp.highly_variable_genes(
                training, n_top_genes=n_top_genes, flavor="seurat_v3", batch_key=batch_key
            )
    except ValueError as err:  # skmisc's loess on too few distinct (mean, variance) points
        msg = (
            f"Could not rank highly variable genes (flavor='seurat_v3') on the training cells of "
            f"{fields.source} (loess fit failed: {err}). It fits a loess curve per batch, which "
            "fails when a batch has few cells; remove or merge small batches, or select genes "
            "yourself and pass use_hvg=False."
        )
        raise ValueError(msg) from err
    ranked = training.var["highly_variable"].to_numpy()
    return np.flatnonzero(ranked)


#: Fewest genes that must vary within a batch before scanpy's seurat_v3 loess runs on it
#: (skmisc's loess crashes the process on 3 points or fewer, and fails on few distinct ones).
MIN_VARYING_GENES = 10


def _check_hvg_batches(training: AnnData, batch_key: str | None, source: str) -> None:
    """Refuse batches whose training cells cannot be ranked by ``flavor="seurat_v3"``.

    A batch with one training cell, or with fewer than ``MIN_VARYING_GENES``
    genes that vary among its cells, would crash skmisc's loess (a segmentation
    fault, not an exception) inside :func:`scanpy.pp.highly_variable_genes`.

    Raises
    ------
    ValueError
        Naming the batches, their training cells and varying genes, and the fixes.
    """
    matrix = training.X
    groups = (
        {"all training cells": np.ones(matrix.shape[0], dtype=bool)}
        if batch_key is None
        else {
            str(name): (training.obs[batch_key] == name).to_numpy()
            for name in training.obs[batch_key].cat.categories
        }
    )
    small = []
    for name, mask in groups.items():
        block = matrix[mask]
        n_cells = int(mask.sum())
        varying = (
            0 if n_cells < 2 else int((block.max(axis=0) != block.min(axis=0)).toarray().sum())
        )
        if n_cells < 2 or varying < MIN_VARYING_GENES:
            small.append(f"{name!r} ({n_cells} cell(s), {varying} varying genes)")
    if small:
        where = "the training split" if batch_key is None else "batches of the training split"
        msg = (
            f"Cannot rank highly variable genes (flavor='seurat_v3') of {source}: {where} "
            f"{', '.join(small)} need at least 2 cells and {MIN_VARYING_GENES} genes that vary "
            "among them. Remove or merge small batches, or select genes yourself and pass "
            "use_hvg=False."
        )
        raise ValueError(msg)


@dataclass(frozen=True)
class Covariates:
    """The extra ``.obs`` covariates of a count model: fitted category codes and continuous columns.

    Parameters
    ----------
    categorical
        One encoder per categorical covariate column, in ``categorical_covariate_keys`` order.
    continuous
        Continuous covariate columns, in order.

    Examples
    --------
    >>> obs = pd.DataFrame(
    ...     {"donor": ["a", "b", "a"], "pct_mito": [0.1, 0.2, 0.3]}, index=["c1", "c2", "c3"]
    ... )
    >>> adata = AnnData(obs=obs)
    >>> covs = Covariates.fit(adata, ["donor"], ["pct_mito"], adata.obs_names)
    >>> covs.n_cats_per_cov, covs.encode(adata, adata.obs_names)["cat_covs"].ravel().tolist()
    ((2,), [0, 1, 0])
    """

    categorical: tuple[CategoryEncoder, ...] = ()
    continuous: tuple[str, ...] = ()

    @classmethod
    def fit(
        cls,
        data: AnnData | MuData,
        categorical_keys: Sequence[str],
        continuous_keys: Sequence[str],
        obs_names: pd.Index,
        *,
        mod: ModSpec = None,
    ) -> Covariates:
        """Learn the categories of the categorical covariates (missing values raise)."""
        encoders = tuple(
            CategoryEncoder.fit(
                get_obs_column(data, key, obs_names, mod=mod, role="categorical covariate"), key=key
            )
            for key in categorical_keys
        )
        return cls(encoders, tuple(continuous_keys))

    @property
    def n_cats_per_cov(self) -> tuple[int, ...]:
        """Number of categories of each categorical covariate."""
        return tuple(encoder.n_categories for encoder in self.categorical)

    @property
    def n_continuous(self) -> int:
        """Number of continuous covariates."""
        return len(self.continuous)

    def encode(
        self, data: AnnData | MuData, obs_names: pd.Index, *, mod: ModSpec = None
    ) -> dict[str, np.ndarray]:
        """``cat_covs`` (int64, cells x k) and ``cont_covs`` (float32, cells x m), when any.

        Raises
        ------
        ValueError
            Unseen categories, or missing, NaN or non-numeric continuous values (naming the column).
        """
        out: dict[str, np.ndarray] = {}
        if self.categorical:
            out[CAT_COVS] = np.stack(
                [
                    encoder.encode(
                        get_obs_column(
                            data, encoder.key, obs_names, mod=mod, role="categorical covariate"
                        )
                    )
                    for encoder in self.categorical
                ],
                axis=1,
            ).astype(np.int64)
        if self.continuous:
            columns = []
            for key in self.continuous:
                column = get_obs_column(data, key, obs_names, mod=mod, role="continuous covariate")
                values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
                bad = ~np.isfinite(values)
                if bad.any():
                    msg = (
                        f"Continuous covariate {key!r} has {int(bad.sum())} missing, NaN or "
                        f"non-numeric values (e.g. cell {str(obs_names[np.flatnonzero(bad)[0]])!r}). "
                        "Fill or remove them, or drop the column from continuous_covariate_keys."
                    )
                    raise ValueError(msg)
                columns.append(values)
            out[CONT_COVS] = np.stack(columns, axis=1).astype(np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in bundles)."""
        return {
            "categorical": [encoder.to_dict() for encoder in self.categorical],
            "continuous": list(self.continuous),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Covariates:
        """Rebuild from :meth:`to_dict` output (``None`` gives no covariates)."""
        if not values:
            return cls()
        return cls(
            tuple(CategoryEncoder.from_dict(item) for item in values.get("categorical", [])),
            tuple(values.get("continuous", [])),
        )


def count_inputs(
    data: AnnData | MuData,
    fields: Fields,
    covariates: Covariates,
    columns: np.ndarray | None,
    *,
    mod: ModSpec = None,
) -> dict[str, np.ndarray]:
    """Per-cell count-model inputs of every source row: ``library`` (+ ``cat_covs``/``cont_covs``).

    ``library`` is each cell's total count over the model's genes (``columns``
    of the source matrix; all of them for ``None``), as in scvi-tools: the
    decoder's softmax spreads exactly this total over those genes, so a total
    over genes the model does not see would inflate every expected count.
    """
    library = row_sums(fields.matrix, columns).astype(np.float32)[:, None]
    return {LIBRARY: library, **covariates.encode(data, fields.obs_names, mod=mod)}
