"""scdlkit.datasets, and the real counts datasets the suite relies on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdlkit
from scdlkit.datasets import pbmc68k_reduced, synthetic_counts

# --------------------------------------------------------------------------- synthetic counts


def test_synthetic_counts_layout():
    adata = synthetic_counts(500, 200, n_types=4, n_batches=3, seed=1)
    assert adata.shape == (500, 200)
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.int32
    assert adata.X.data.min() > 0  # zeros are not stored
    assert list(adata.var_names[:2]) == ["gene_0000", "gene_0001"]
    assert list(adata.obs_names[:2]) == ["cell_0", "cell_1"]
    for key, prefix, n in (("cell_type", "type", 4), ("batch", "batch", 3)):
        column = adata.obs[key]
        assert isinstance(column.dtype, pd.CategoricalDtype)
        assert list(column.cat.categories) == [f"{prefix}_{i}" for i in range(n)]
        assert column.nunique() == n


def test_synthetic_counts_is_seeded():
    first = synthetic_counts(300, 50, seed=5)
    second = synthetic_counts(300, 50, seed=5)
    other = synthetic_counts(300, 50, seed=6)
    assert (first.X != second.X).nnz == 0
    pd.testing.assert_frame_equal(first.obs, second.obs)
    assert (first.X != other.X).nnz > 0


def test_synthetic_counts_chunking_does_not_change_shape_or_library_sizes():
    # more cells than one generation chunk (4096)
    adata = synthetic_counts(5000, 40, seed=0, library_size=800.0)
    assert adata.shape == (5000, 40)
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert 600 < np.median(totals) < 1000
    assert (totals > 0).all()


def test_synthetic_counts_cell_types_differ():
    adata = synthetic_counts(2000, 300, n_types=3, n_batches=1, seed=2)
    dense = adata.X.toarray().astype(np.float64)
    dense /= dense.sum(axis=1, keepdims=True)
    profiles = np.stack(
        [dense[adata.obs["cell_type"] == t].mean(axis=0) for t in ("type_0", "type_1")]
    )
    # marker genes: some genes differ more than 2-fold between two types
    ratio = (profiles[0] + 1e-6) / (profiles[1] + 1e-6)
    assert ((ratio > 2) | (ratio < 0.5)).sum() >= 5


@pytest.mark.parametrize("name", ["n_cells", "n_genes", "n_types", "n_batches"])
def test_synthetic_counts_rejects_non_positive_sizes(name):
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got 0"):
        synthetic_counts(**{name: 0})


def test_datasets_namespace():
    assert scdlkit.datasets.synthetic_counts is synthetic_counts
    assert scdlkit.datasets.pbmc68k_reduced is pbmc68k_reduced


# --------------------------------------------------------------------------- pbmc68k_reduced


def test_pbmc68k_reduced():
    adata = pbmc68k_reduced()
    assert adata.shape == (700, 765)
    assert adata.obs["bulk_labels"].nunique() == 10
    assert adata.raw is not None and adata.raw.shape == (700, 765)
    assert adata.X.min() < 0  # scaled values


def test_pbmc68k_reduced_returns_a_new_object():
    first = pbmc68k_reduced()
    first.obs["extra"] = 1
    first.X[:] = 0
    second = pbmc68k_reduced()
    assert "extra" not in second.obs
    assert np.abs(second.X).sum() > 0


# --------------------------------------------------------------------------- real counts (shared/data)


def _is_int32_csr_counts(matrix) -> bool:
    return (
        sp.issparse(matrix)
        and matrix.format == "csr"
        and matrix.dtype == np.int32
        and matrix.data.min() > 0
    )


def test_pbmc_3tech_matches_its_readme(pbmc_3tech):
    assert pbmc_3tech.shape == (2000, 10000)
    assert _is_int32_csr_counts(pbmc_3tech.X)
    assert pbmc_3tech.obs["batch"].value_counts().to_dict() == {"V3": 865, "V2": 588, "VDJ": 547}
    assert pbmc_3tech.obs["cell_type"].value_counts().to_dict() == {
        "T/NK cells": 1004,
        "Monocytes": 716,
        "B cells": 280,
    }
    table = pd.crosstab(pbmc_3tech.obs["batch"], pbmc_3tech.obs["cell_type"])
    assert (table > 0).all().all()  # every class in every batch
    assert "source" in pbmc_3tech.uns


def test_pbmc_kang_matches_its_readme(pbmc_kang):
    assert pbmc_kang.shape == (1556, 1267)
    assert _is_int32_csr_counts(pbmc_kang.X)
    assert pbmc_kang.obs["cell_type"].nunique() == 5
    assert pbmc_kang.obs["sample_id"].value_counts().to_dict() == {
        "stim101": 500,
        "ctrl101": 454,
        "stim107": 306,
        "ctrl107": 296,
    }
    assert {"ENSEMBL", "SYMBOL"} <= set(pbmc_kang.var.columns)
    assert pbmc_kang.obsm["X_tsne"].shape == (1556, 2)


def test_citeseq_matches_its_readme(citeseq):
    assert citeseq.n_obs == 400
    assert set(citeseq.mod) == {"rna", "prot"}
    assert citeseq.mod["rna"].shape == (400, 15792)
    assert citeseq.mod["prot"].shape == (400, 14)
    for modality in citeseq.mod.values():
        assert _is_int32_csr_counts(modality.X)
    assert all(name.endswith("_TotalSeqB") for name in citeseq.mod["prot"].var_names)
    assert citeseq.obs["batch"].value_counts().to_dict() == {
        "pbmc_10k_protein_v3": 200,
        "pbmc_5k_protein_v3": 200,
    }
