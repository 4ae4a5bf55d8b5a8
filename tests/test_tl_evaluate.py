"""Tests of scdlkit.tl.evaluate's path: model input rebuilt from the bundle, rows aligned, one kNN.

The general behaviour of ``tl.evaluate`` (metric groups, splits, errors, h5ad
round trips) is tested in ``tests/test_evaluation.py``; these tests check the
values it computes against hand-made inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import torch
from torch import nn

import scdlkit
from scdlkit import pipeline
from scdlkit._errors import MissingKeyError
from scdlkit.adapters import wrap_reconstruction_module
from scdlkit.evaluation import integration_metrics, knn_accuracy, reconstruction_metrics


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.float64)


def test_reconstruction_metrics_use_the_run_preprocessing(synthetic, tmp_path):
    scdlkit.tl.fit(
        synthetic, "autoencoder", normalize=True, log1p=True, label_key="cell_type", epochs=2,
        device="cpu", checkpoint_dir=tmp_path, progress=False,
    )  # fmt: skip
    scdlkit.tl.predict(synthetic, device="cpu")
    scdlkit.tl.evaluate(synthetic, clustering="kmeans")
    metrics = synthetic.uns["scdlkit"]["metrics"]

    expected = synthetic.copy()
    expected.X = expected.X.astype(np.float32)
    sc.pp.normalize_total(expected, target_sum=1e4)
    sc.pp.log1p(expected)
    test = (synthetic.obs["scdlkit_split"] == "test").to_numpy()
    train = (synthetic.obs["scdlkit_split"] == "train").to_numpy()
    observed = _dense(expected.X)[test]
    reconstruction = np.asarray(synthetic.layers["scdlkit_reconstruction"], dtype=np.float64)[test]
    for name, value in reconstruction_metrics(observed, reconstruction).items():
        assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert metrics["n_cells"] == test.sum() == 45

    latent = synthetic.obsm["X_scdlkit"]
    labels = synthetic.obs["cell_type"].to_numpy()
    assert metrics["knn_accuracy"] == knn_accuracy(
        latent[test], labels[test], reference_latent=latent[train], reference_labels=labels[train]
    )
    assert synthetic.uns["scdlkit"]["evaluate_params"]["seed"] == 42


def test_several_modalities_score_the_shared_cells_only(small_mudata, tmp_path):
    mdata = small_mudata
    scdlkit.tl.fit(
        mdata, "autoencoder", mod=["rna", "prot"], normalize=True, log1p=True, epochs=2,
        batch_size=16, device="cpu", checkpoint_dir=tmp_path, progress=False,
    )  # fmt: skip
    scdlkit.tl.predict(mdata, device="cpu")
    scdlkit.tl.evaluate(mdata, split=None, metrics="reconstruction")
    metrics = mdata.uns["scdlkit"]["metrics"]

    shared = mdata.mod["prot"].obs_names  # the cells both modalities hold
    rows = mdata.obs_names.get_indexer(shared)
    assert metrics["n_cells"] == len(shared) == 36  # the 4 rna-only cells have no input (NaN)
    counts = np.hstack([_dense(mdata.mod["rna"][shared].X), _dense(mdata.mod["prot"].X)])
    observed = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    features = [str(name) for name in mdata.uns["scdlkit"]["reconstruction_features"]]
    assert features[:30] == [f"rna:gene{i}" for i in range(30)]
    reconstruction = np.asarray(mdata.obsm["scdlkit_reconstruction"], dtype=np.float64)[rows]
    order = np.argsort(rows)  # evaluate keeps the MuData's row order
    expected = reconstruction_metrics(observed[order], reconstruction[order])
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


class _TupleAE(nn.Module):
    """A plain module returning ``(latent, reconstruction)``."""

    def __init__(self, n_features: int, latent: int = 4):
        super().__init__()
        self.encoder = nn.Linear(n_features, latent)
        self.decoder = nn.Linear(latent, n_features)

    def forward(self, x):
        z = self.encoder(x)
        return z, self.decoder(z)


def test_reconstruction_metrics_of_a_wrapped_module_need_no_weights(synthetic, tmp_path):
    torch.manual_seed(0)
    model = wrap_reconstruction_module(_TupleAE(synthetic.n_vars), input_dim=synthetic.n_vars)
    scdlkit.tl.fit(
        synthetic, model, normalize=True, log1p=True, epochs=2, device="cpu",
        checkpoint_dir=tmp_path, progress=False,
    )  # fmt: skip
    scdlkit.tl.predict(synthetic, model=model, device="cpu")
    # the custom module cannot be rebuilt by name, but the metrics read only the
    # written outputs and the bundle's preprocessing, never the weights
    scdlkit.tl.evaluate(synthetic, metrics="representation", label_key="cell_type")
    assert synthetic.uns["scdlkit"]["metrics"]["n_cells"] == 45
    scdlkit.tl.evaluate(synthetic, metrics="reconstruction")
    without_model = dict(synthetic.uns["scdlkit"]["metrics"])

    rebuilt = wrap_reconstruction_module(_TupleAE(synthetic.n_vars), input_dim=synthetic.n_vars)
    scdlkit.tl.evaluate(synthetic, metrics="reconstruction", model=rebuilt)
    metrics = synthetic.uns["scdlkit"]["metrics"]
    assert metrics["mse"] == without_model["mse"]
    test = (synthetic.obs["scdlkit_split"] == "test").to_numpy()
    expected = synthetic.copy()
    expected.X = expected.X.astype(np.float32)
    sc.pp.normalize_total(expected, target_sum=1e4)
    sc.pp.log1p(expected)
    reconstruction = np.asarray(synthetic.layers["scdlkit_reconstruction"], dtype=np.float64)
    assert metrics["mse"] == pytest.approx(
        np.mean((_dense(expected.X)[test] - reconstruction[test]) ** 2), rel=1e-4
    )


def test_missing_reconstruction_and_record_messages(synthetic, tmp_path):
    scdlkit.tl.fit(
        synthetic, "autoencoder", normalize=True, log1p=True, epochs=1, device="cpu",
        checkpoint_dir=tmp_path, progress=False,
    )  # fmt: skip
    scdlkit.tl.predict(synthetic, outputs="latent", device="cpu")
    with pytest.raises(MissingKeyError, match=r"outputs including 'reconstruction'"):
        scdlkit.tl.evaluate(synthetic, metrics="reconstruction")
    synthetic.uns["other"] = {"checkpoint": "x", "version": "0"}
    with pytest.raises(MissingKeyError, match=r"names no task") as info:
        scdlkit.tl.evaluate(synthetic, key="other")
    assert "key_added='other'" in str(info.value)
    with pytest.raises(MissingKeyError, match=r"records present: 'scdlkit', 'other'"):
        scdlkit.tl.evaluate(synthetic, key="none")


# --------------------------------------------------------------------------- integration group


@pytest.fixture
def count_run(synthetic, tmp_path):
    """A count_vae run on 60 of 120 genes, with batches; latent and reconstruction written."""
    scdlkit.tl.fit(
        synthetic, "count_vae", batch_key="batch", use_hvg=True, n_top_genes=60, epochs=2,
        device="cpu", checkpoint_dir=tmp_path, progress=False,
    )  # fmt: skip
    scdlkit.tl.predict(synthetic, device="cpu")
    return synthetic


def test_integration_metrics_of_a_count_run_use_its_log_normalised_input(count_run):
    adata = count_run
    scdlkit.tl.evaluate(adata)  # the default groups are unchanged: no integration
    assert "integration" not in adata.uns["scdlkit"]["metrics"]

    scdlkit.tl.evaluate(
        adata, metrics=["representation", "integration"], label_key="cell_type", split=None,
        clustering="kmeans",
    )  # fmt: skip
    metrics = adata.uns["scdlkit"]["metrics"]
    scores = metrics["integration"]

    features = pipeline.load_run(adata.uns["scdlkit"]["checkpoint"]).preprocessing["feature_names"]
    counts = _dense(adata.X)
    totals = counts.sum(axis=1, keepdims=True)  # every gene of the matrix, not the 60 selected
    selected = counts[:, adata.var_names.get_indexer([str(name) for name in features])]
    assert selected.shape == (300, 60) and (selected.sum(axis=1) < totals[:, 0]).all()
    expected = integration_metrics(
        adata.obsm["X_scdlkit"],
        adata.obs["cell_type"],
        adata.obs["batch"],
        unintegrated=np.log1p(selected / totals * 1e4),
        seed=42,
    )
    assert set(scores) == set(expected)
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    assert scores["n_cells"] == 300
    assert scores["total"] == pytest.approx(
        0.6 * scores["bio_conservation"] + 0.4 * scores["batch_correction"]
    )
    # the representation group keeps its raw silhouette in [-1, 1]; scIB's is rescaled
    assert scores["silhouette_label"] == pytest.approx((metrics["silhouette_label"] + 1) / 2)
    assert adata.uns["scdlkit"]["evaluate_params"]["unintegrated"] == "model input"
    assert adata.uns["scdlkit"]["evaluate_params"]["batch_key"] == "batch"  # the run's


def test_integration_metrics_with_an_obsm_baseline_survive_h5ad(count_run, tmp_path):
    adata = count_run
    normalized = adata.copy()
    sc.pp.normalize_total(normalized, target_sum=1e4)
    sc.pp.log1p(normalized)
    sc.pp.pca(normalized, n_comps=20)
    adata.obsm["X_pca"] = normalized.obsm["X_pca"]
    scdlkit.tl.evaluate(
        adata, metrics="integration", label_key="cell_type", unintegrated="X_pca", seed=0
    )
    scores = adata.uns["scdlkit"]["metrics"]["integration"]
    test = (adata.obs["scdlkit_split"] == "test").to_numpy()
    expected = integration_metrics(
        adata.obsm["X_scdlkit"][test],
        adata.obs["cell_type"][test],
        adata.obs["batch"][test],
        unintegrated=adata.obsm["X_pca"][test],
    )
    assert scores["n_cells"] == test.sum() == 45
    assert scores["pcr_comparison"] == pytest.approx(expected["pcr_comparison"], abs=1e-6)
    assert scores["total"] == pytest.approx(expected["total"], abs=1e-6)
    assert adata.uns["scdlkit"]["evaluate_params"]["unintegrated"] == "X_pca"

    path = tmp_path / "scored.h5ad"
    adata.write_h5ad(path)
    reloaded = sc.read_h5ad(path)
    stored = reloaded.uns["scdlkit"]["metrics"]["integration"]
    assert {name: float(value) for name, value in stored.items()} == pytest.approx(
        {name: float(value) for name, value in scores.items()}, nan_ok=True
    )


def test_integration_metrics_errors_leave_the_record_unchanged(count_run):
    adata = count_run
    before = dict(adata.uns["scdlkit"])
    with pytest.raises(ValueError, match=r"names no label_key \(pass label_key=\)"):
        scdlkit.tl.evaluate(adata, metrics="integration")
    with pytest.raises(ValueError, match=r"unintegrated= is used by the integration metrics only"):
        scdlkit.tl.evaluate(adata, metrics="representation", unintegrated="X_pca")
    with pytest.raises(MissingKeyError, match=r"Did not find .obsm\['X_pca'\] \(unintegrated=\)"):
        scdlkit.tl.evaluate(
            adata, metrics="integration", label_key="cell_type", unintegrated="X_pca"
        )
    with pytest.raises(ValueError, match=r"Unknown metrics 'scib'"):
        scdlkit.tl.evaluate(adata, metrics="scib")
    assert adata.uns["scdlkit"].keys() == before.keys()
    assert "metrics" not in adata.uns["scdlkit"]
