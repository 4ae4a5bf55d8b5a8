"""Small offline datasets: scanpy's bundled PBMC subset and seeded synthetic counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

__all__ = ["pbmc68k_reduced", "synthetic_counts"]

#: Cells generated at once by :func:`synthetic_counts` (bounds its memory).
_CHUNK_CELLS = 4096


def pbmc68k_reduced() -> AnnData:
    """700 PBMCs x 765 genes shipped inside scanpy (no download).

    ``.X`` holds scaled log-normalised values (with negatives), ``.raw`` the
    log-normalised values; cell types are in ``.obs["bulk_labels"]`` (10
    classes) and clusters in ``.obs["louvain"]``.

    Returns
    -------
    A new AnnData each call.

    Examples
    --------
    >>> adata = pbmc68k_reduced()
    >>> adata.shape, adata.obs["bulk_labels"].nunique()
    ((700, 765), 10)
    """
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


def synthetic_counts(
    n_cells: int = 2000,
    n_genes: int = 2000,
    n_types: int = 5,
    n_batches: int = 2,
    seed: int = 0,
    *,
    library_size: float = 1500.0,
    dispersion: float = 5.0,
) -> AnnData:
    """Seeded negative-binomial counts with cell types and batch effects, as CSR.

    Each cell type up-regulates its own marker genes; each batch scales every
    gene by its own factor; library sizes are log-normal. Counts are drawn as
    gamma-Poisson (negative binomial) in chunks, so 10^5-10^6 cells fit in memory.

    Parameters
    ----------
    n_cells, n_genes
        Matrix shape.
    n_types
        Number of cell types, in ``.obs["cell_type"]`` (``type_0``, ...).
    n_batches
        Number of batches, in ``.obs["batch"]`` (``batch_0``, ...).
    seed
        Seed; the same arguments give the same matrix.
    library_size
        Median total counts per cell.
    dispersion
        Negative-binomial inverse dispersion (larger is closer to Poisson).

    Returns
    -------
    AnnData with int32 CSR counts in ``.X``, ``obs["cell_type"]`` and ``obs["batch"]``
    (categorical) and gene names ``gene_0000``, ...

    Examples
    --------
    >>> adata = synthetic_counts(500, 200, n_types=3, n_batches=2, seed=1)
    >>> adata.shape, adata.X.format, sorted(adata.obs["cell_type"].cat.categories)
    ((500, 200), 'csr', ['type_0', 'type_1', 'type_2'])
    """
    for name, value in (
        ("n_cells", n_cells),
        ("n_genes", n_genes),
        ("n_types", n_types),
        ("n_batches", n_batches),
    ):
        if int(value) < 1:
            msg = f"{name} must be a positive integer, got {value!r}."
            raise ValueError(msg)
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0.0, 1.5, size=n_genes)
    profiles = np.tile(base, (n_types, 1))
    n_markers = max(5, n_genes // 20)
    for profile in profiles:
        markers = rng.choice(n_genes, size=min(n_markers, n_genes), replace=False)
        profile[markers] *= np.exp(rng.normal(1.5, 0.5, size=markers.shape[0]))
    batch_effects = np.exp(rng.normal(0.0, 0.3, size=(n_batches, n_genes)))
    cell_types = rng.integers(0, n_types, size=n_cells)
    batches = rng.integers(0, n_batches, size=n_cells)
    libraries = rng.lognormal(np.log(library_size), 0.4, size=n_cells)

    chunks = []
    for start in range(0, n_cells, _CHUNK_CELLS):
        stop = min(start + _CHUNK_CELLS, n_cells)
        rates = profiles[cell_types[start:stop]] * batch_effects[batches[start:stop]]
        rates *= (libraries[start:stop] / rates.sum(axis=1))[:, None]
        counts = rng.poisson(rng.gamma(dispersion, rates / dispersion))
        chunks.append(sp.csr_matrix(counts.astype(np.int32)))
    matrix = sp.vstack(chunks, format="csr")

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(
                cell_types, [f"type_{i}" for i in range(n_types)]
            ),
            "batch": pd.Categorical.from_codes(batches, [f"batch_{i}" for i in range(n_batches)]),
        },
        index=pd.Index([f"cell_{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene_{i:04d}" for i in range(n_genes)]))
    return AnnData(matrix, obs=obs, var=var)
