"""Tests of scdlkit.pp.inspect: a report of data problems that never raises on them."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdlkit
from scdlkit._errors import MissingKeyError
from scdlkit.pp import InspectionReport


def test_pbmc_scaled_x(pbmc):
    report = scdlkit.pp.inspect(pbmc, label_key="bulk_labels", show=False)
    assert isinstance(report, InspectionReport)
    assert report.source == "adata.X"
    assert (report.n_obs, report.n_vars) == pbmc.shape
    assert report.format == "dense"
    assert report.dtype == "float32"
    assert not report.looks_like_counts
    assert report.n_negative == int((pbmc.X < 0).sum())
    assert report.min_value == pytest.approx(float(pbmc.X.min()))
    assert report.max_value == pytest.approx(float(pbmc.X.max()))
    assert report.n_nonfinite == 0
    expected = pbmc.obs["bulk_labels"].value_counts()
    assert report.label_counts == {str(k): int(v) for k, v in expected.items()}
    assert list(report.label_counts.values()) == sorted(report.label_counts.values(), reverse=True)
    assert report.ok, report.issues


def test_pbmc_raw_with_normalize_on_scaled_values(pbmc):
    report = scdlkit.pp.inspect(pbmc, use_raw=True, show=False)
    assert report.source == "adata.raw.X"
    assert report.format == "CSR"
    raw = pbmc.raw.X
    assert report.density == pytest.approx(raw.count_nonzero() / np.prod(raw.shape))
    assert report.min_value == 0
    assert report.ok
    scaled = scdlkit.pp.inspect(pbmc, normalize=True, log1p=True, show=False)
    assert any("negative values" in issue and "layer=" in issue for issue in scaled.issues)
    twice = scdlkit.pp.inspect(pbmc, use_raw=True, log1p=True, show=False)
    assert any("log-transformed already" in issue for issue in twice.issues)


def test_counts(synthetic):
    report = scdlkit.pp.inspect(synthetic, label_key="cell_type", batch_key="batch", show=False)
    assert report.looks_like_counts
    assert report.format == "CSR"
    assert report.dtype == "int32"
    assert report.min_value == 0
    assert report.max_value == synthetic.X.max()
    assert report.batch_counts == {
        str(k): int(v) for k, v in synthetic.obs["batch"].value_counts().items()
    }
    assert len(report.issues) == 1 and "normalize=True, log1p=True" in report.issues[0]
    fine = scdlkit.pp.inspect(synthetic, normalize=True, log1p=True, show=False)
    assert fine.ok, fine.issues
    hvg = scdlkit.pp.inspect(synthetic, normalize=True, log1p=True, use_hvg=True, show=False)
    assert any("n_top_genes=2000" in issue for issue in hvg.issues)


def test_data_problems_are_reported_not_raised(synthetic):
    dense = synthetic.X.toarray().astype(np.float32)
    dense[5, 3] = np.nan
    dense[7, 1] = np.inf
    dense[9, 0] = -2.0
    dense[11] = 0.0
    broken = ad.AnnData(dense, obs=synthetic.obs.copy())
    broken.var_names = ["dup", "dup", *synthetic.var_names[2:]]
    report = scdlkit.pp.inspect(broken, normalize=True, log1p=True, show=False)
    assert report.n_nonfinite == 2
    assert report.n_negative == 1
    assert report.min_value == -2.0
    assert report.duplicate_var_names == ["dup"]
    assert report.n_empty_cells == 1
    text = " ".join(report.issues)
    assert "NaN or infinite" in text and "'cell_5'" in text
    assert "negative values" in text
    assert "var_names_make_unique" in text
    assert "filter_cells" in text
    assert not report.looks_like_counts


def test_label_batch_and_split_problems(synthetic):
    adata = synthetic.copy()
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    labels[:3] = "rare"
    adata.obs["label"] = pd.Categorical(labels)
    adata.obs.loc[adata.obs_names[3:5], "label"] = np.nan
    batches = adata.obs["batch"].astype(object)
    batches.iloc[0] = None
    adata.obs["batch_missing"] = batches
    split = np.where(np.arange(adata.n_obs) % 5 == 0, "test", "train").astype(object)
    split[:3] = "test"  # the rare class only in test
    adata.obs["split"] = split
    report = scdlkit.pp.inspect(
        adata, normalize=True, log1p=True, label_key="label", batch_key="batch_missing",
        split_key="split", task="classification", show=False,
    )  # fmt: skip
    assert report.label_counts["rare"] == 3
    assert report.n_missing_labels == 2
    assert report.n_missing_batches == 1
    assert report.split_counts == {
        "train": int((split == "train").sum()),
        "val": 0,
        "test": int((split == "test").sum()),
    }
    text = " ".join(report.issues)
    assert "fewer than 5 cells: 'rare' (3)" in text
    assert "2 cells have no label" in text
    assert "no value in 'batch_missing'" in text
    assert "no cell in the training split" in text and "'rare'" in text

    adata.obs["split"] = "somewhere"
    adata.obs["one"] = "A"
    bad = scdlkit.pp.inspect(
        adata, normalize=True, log1p=True, label_key="one", split_key="split",
        task="classification", show=False,
    )  # fmt: skip
    text = " ".join(bad.issues)
    assert "'somewhere'" in text
    assert "single class" in text


def test_unknown_keys_raise(pbmc):
    with pytest.raises(MissingKeyError, match="counts"):
        scdlkit.pp.inspect(pbmc, layer="counts", show=False)
    with pytest.raises(MissingKeyError, match="bulk_labels"):  # lists the columns that exist
        scdlkit.pp.inspect(pbmc, label_key="celltype", show=False)
    with pytest.raises(ValueError, match="Registered tasks"):
        scdlkit.pp.inspect(pbmc, task="clustering", show=False)
    with pytest.raises(ValueError, match="either"):
        scdlkit.pp.inspect(pbmc, layer="x", use_raw=True, show=False)


def test_rendering_and_show(pbmc, capsys):
    report = scdlkit.pp.inspect(pbmc, use_raw=True, label_key="bulk_labels", show=True)
    out = capsys.readouterr().out
    assert out == str(report)
    assert "adata.raw.X" in out and "700 cells x 765 features" in out and "no issues" in out
    markdown = report._repr_markdown_()
    assert "| shape | 700 cells x 765 features |" in markdown
    assert report.to_dict()["label_key"] == "bulk_labels"
    scdlkit.pp.inspect(pbmc, show=False)
    assert capsys.readouterr().out == ""


def test_backed_and_mudata(synthetic, small_mudata, tmp_path):
    path = tmp_path / "counts.h5ad"
    synthetic.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    report = scdlkit.pp.inspect(backed, normalize=True, log1p=True, show=False)
    assert report.format == "backed CSR"
    assert report.max_value == synthetic.X.max()
    assert report.density == pytest.approx(synthetic.X.nnz / np.prod(synthetic.shape))
    backed.file.close()

    report = scdlkit.pp.inspect(small_mudata, mod="rna", label_key="cell_type", show=False)
    assert report.source == "mdata.mod['rna'].X"
    assert report.label_counts == {"A": 20, "B": 20}
    both = scdlkit.pp.inspect(small_mudata, mod=["rna", "prot"], show=False)
    assert both.n_vars == 35 and both.n_obs == 36


def test_csc_warning_becomes_issue(synthetic):
    adata = synthetic.copy()
    adata.X = sp.csc_matrix(adata.X)
    report = scdlkit.pp.inspect(adata, normalize=True, log1p=True, show=False)
    assert any("CSC" in issue for issue in report.issues)


def test_raw_counts_issue_is_the_message_tl_fit_logs(synthetic):
    from scdlkit.data.prepare import raw_counts_message

    report = scdlkit.pp.inspect(synthetic, show=False)
    assert report.issues == [raw_counts_message("adata.X")]
    adata = synthetic.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.astype(np.float32) / 2.5  # not counts any more
    layered = scdlkit.pp.inspect(adata, layer="counts", show=False)
    assert layered.issues == [raw_counts_message("adata.layers['counts']")]
    assert scdlkit.pp.inspect(adata, show=False).issues == []


def test_empty_cells_and_features_and_density(synthetic):
    dense = synthetic.X.toarray().astype(np.float32)
    dense[[4, 8, 15]] = 0.0  # three empty cells
    dense[:, [2, 7]] = 0.0  # two empty genes
    expected_nonzero = int(np.count_nonzero(dense))
    for matrix in (dense, sp.csr_matrix(dense)):
        adata = ad.AnnData(matrix, obs=synthetic.obs.copy(), var=synthetic.var.copy())
        report = scdlkit.pp.inspect(adata, normalize=True, log1p=True, show=False)
        assert report.n_empty_cells == 3
        assert report.n_empty_features == 2
        assert report.density == expected_nonzero / dense.size
        assert report.max_value == dense.max()
        assert "3 cells have no counts at all" in " ".join(report.issues)


# --------------------------------------------------------------------------- the one scanner


def _expected_summary(dense: np.ndarray) -> dict:
    finite = dense[np.isfinite(dense)]
    nonzero = dense != 0
    return {
        "n_nonfinite": int(dense.size - finite.size),
        "min_value": float(finite.min()) if finite.size else 0.0,
        "max_value": float(finite.max()) if finite.size else 0.0,
        "n_negative": int(np.count_nonzero(finite < 0)),
        "n_nonzero": int(np.count_nonzero(nonzero)),
        "n_empty_rows": int(np.count_nonzero(~nonzero.any(axis=1))),
        "n_empty_columns": int(np.count_nonzero(~nonzero.any(axis=0))),
        "is_integer": bool(np.all(finite == np.round(finite))),
    }


@pytest.mark.parametrize(
    "kind", ["dense", "csr", "csr_explicit_zeros", "backed_csr", "backed_dense"]
)
def test_summarize_matrix_matches_numpy(kind, tmp_path, monkeypatch):
    from scdlkit.data import matrix as matrix_module
    from scdlkit.data.matrix import summarize_matrix

    monkeypatch.setattr(matrix_module, "SCAN_BLOCK_ROWS", 7)  # several blocks
    monkeypatch.setattr(matrix_module, "_SCAN_VALUES", 11)
    rng = np.random.default_rng(3)
    dense = rng.poisson(0.7, size=(40, 9)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.1] *= -1.5
    dense[[3, 17, 39]] = 0.0
    dense[:, 4] = 0.0
    dense[21, 2], dense[30, 6] = np.nan, -np.inf
    matrix = sp.csr_matrix(dense) if kind != "dense" else dense
    if kind == "csr_explicit_zeros":
        matrix.data[matrix.indptr[5] : matrix.indptr[6]] = 0.0  # row 5 only stores zeros
        dense = matrix.toarray()
    if kind.startswith("backed"):
        path = tmp_path / "scan.h5ad"
        ad.AnnData(dense if kind == "backed_dense" else matrix).write_h5ad(path)
        matrix = ad.read_h5ad(path, backed="r").X
    summary = summarize_matrix(matrix)
    expected = _expected_summary(dense)
    assert {name: getattr(summary, name) for name in expected} == expected
    assert summary.first_nonfinite_row == 21
    assert expected["n_empty_rows"] == (4 if kind == "csr_explicit_zeros" else 3)


def test_summarize_matrix_edge_cases():
    from scdlkit.data.matrix import summarize_matrix

    counts = summarize_matrix(np.array([[0, 3], [0, 5]], dtype=np.int32))
    assert (counts.min_value, counts.max_value, counts.is_integer) == (0.0, 5.0, True)
    assert (counts.n_nonzero, counts.n_empty_rows, counts.n_empty_columns) == (2, 0, 1)
    empty = summarize_matrix(sp.csr_matrix((4, 3), dtype=np.float32))
    assert (empty.min_value, empty.max_value, empty.n_nonzero) == (0.0, 0.0, 0)
    assert (empty.n_empty_rows, empty.n_empty_columns) == (4, 3)
    nothing_finite = summarize_matrix(np.full((2, 2), np.nan))
    assert (nothing_finite.n_nonfinite, nothing_finite.first_nonfinite_row) == (4, 0)
    assert (nothing_finite.min_value, nothing_finite.max_value) == (0.0, 0.0)
    assert nothing_finite.n_nonzero == 4 and nothing_finite.n_empty_rows == 0
