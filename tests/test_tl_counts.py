"""``tl.fit`` / ``tl.predict`` with the count model: record, latent, normalised and corrected expression."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from mudata import MuData

import scdlkit
from scdlkit import pipeline
from scdlkit._errors import MissingKeyError

MODEL_KWARGS = {"n_hidden": 32, "n_latent": 6, "kl_warmup_steps": 10}
BATCHES = ["batch_0", "batch_1", "batch_2"]


def _counts(n_cells: int = 450, n_genes: int = 120, seed: int = 0) -> ad.AnnData:
    adata = scdlkit.datasets.synthetic_counts(n_cells, n_genes, n_types=3, n_batches=3, seed=seed)
    rng = np.random.default_rng(seed)
    adata.obs["donor"] = pd.Categorical(rng.choice(["d0", "d1", "d2"], size=n_cells))
    adata.obs["pct_mito"] = rng.random(n_cells).round(4)
    return adata


def _fit(adata, checkpoint_dir, **kwargs) -> None:
    options = {
        "batch_key": "batch", "epochs": 3, "batch_size": 64, "seed": 0, "progress": False,
        "model_kwargs": MODEL_KWARGS, "checkpoint_dir": checkpoint_dir,
    }  # fmt: skip
    scdlkit.tl.fit(adata, "count_vae", **{**options, **kwargs})


def _library(adata) -> np.ndarray:
    return np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()


@pytest.fixture(scope="module")
def _trained(tmp_path_factory) -> ad.AnnData:
    adata = _counts()
    _fit(
        adata, tmp_path_factory.mktemp("count_runs"),
        categorical_covariate_keys=["donor"], continuous_covariate_keys=["pct_mito"],
    )  # fmt: skip
    return adata


@pytest.fixture
def trained(_trained) -> ad.AnnData:
    """450 x 120 counts, 3 batches, a count_vae trained with batch, donor and pct_mito (3 epochs)."""
    return _trained.copy()


# --------------------------------------------------------------------------- fit record


def test_fit_records_the_count_run(trained):
    record = trained.uns["scdlkit"]
    assert record["model"] == "count_vae" and record["task"] == "representation"
    params = record["params"]
    assert params["counts"] is True and params["batch_key"] == "batch"
    assert list(params["categorical_covariate_keys"]) == ["donor"]
    assert list(params["continuous_covariate_keys"]) == ["pct_mito"]
    assert (params["normalize"], params["log1p"], params["scale"]) == (False, False, False)
    config = record["model_config"]
    # sized from the data: 3 batches, 3 donors, 1 continuous covariate
    assert (config["n_batch"], list(config["n_cats_per_cov"]), config["n_continuous_cov"]) == (
        3, [3], 1
    )  # fmt: skip
    assert config["n_latent"] == 6 and config["input_dim"] == 120
    assert record["epochs_run"] == 3 and len(record["history"]["train_loss"]) == 3
    assert np.isfinite(record["history"]["val_loss"]).all()
    assert set(trained.obs["scdlkit_split"].cat.categories) == {"train", "val", "test"}
    bundle = json.loads((Path(record["checkpoint"]) / "config.json").read_text())
    assert bundle["preprocessing"]["counts"] is True
    assert bundle["preprocessing"]["covariates"]["continuous"] == ["pct_mito"]
    assert bundle["batch_encoder"] == {"key": "batch", "categories": BATCHES}


# --------------------------------------------------------------------------- predict


def test_latent_is_deterministic_and_the_default_outputs(trained):
    scdlkit.tl.predict(trained)
    first = trained.obsm["X_scdlkit"].copy()
    assert first.shape == (trained.n_obs, 6) and first.dtype == np.float32
    assert list(trained.uns["scdlkit"]["outputs"]) == ["latent", "reconstruction"]
    scdlkit.tl.predict(trained, outputs="latent", key_added="again")
    np.testing.assert_array_equal(trained.obsm["X_again"], first)
    # the posterior mean: the model's encoder in evaluation mode
    loaded = pipeline.load_run(trained.uns["scdlkit"]["checkpoint"], device="cpu")
    data = loaded.query(trained)
    batch = next(iter(data.loader(trained.n_obs)))
    model = loaded.trainer.model.eval()
    with torch.no_grad():
        mean, _ = model.encode(batch["x"], batch["batch"], batch["cat_covs"], batch["cont_covs"])
    np.testing.assert_allclose(first, mean.numpy(), rtol=1e-4, atol=1e-5)


def test_reconstruction_is_expected_counts(trained):
    scdlkit.tl.predict(trained, outputs="reconstruction")
    values = trained.layers["scdlkit_reconstruction"]
    assert values.shape == trained.shape and (values >= 0).all()
    # NB mean = observed library x softmax over genes: rows sum to the library
    np.testing.assert_allclose(values.sum(axis=1), _library(trained), rtol=1e-4)


def test_normalized_rows_sum_to_the_library_size(trained):
    scdlkit.tl.predict(trained, outputs=["latent", "normalized"])
    normalized = trained.layers["scdlkit_normalized"]
    assert normalized.dtype == np.float32 and (normalized > 0).all()
    np.testing.assert_allclose(normalized.sum(axis=1), 1e4, rtol=1e-4)
    assert trained.uns["scdlkit"]["library_size"] == 1e4
    assert "transform_batch" not in trained.uns["scdlkit"]
    scdlkit.tl.predict(trained, outputs="normalized", library_size=500, key_added="small")
    np.testing.assert_allclose(trained.layers["small_normalized"], normalized / 20, rtol=1e-5)
    scdlkit.tl.predict(
        trained, outputs=["normalized", "reconstruction"], library_size="observed", key_added="obs"
    )
    observed = trained.layers["obs_normalized"]
    np.testing.assert_allclose(observed.sum(axis=1), _library(trained), rtol=1e-4)
    # NB: the observed-size expression is the reconstruction (the likelihood mean)
    np.testing.assert_allclose(observed, trained.layers["obs_reconstruction"], rtol=1e-5)
    again = trained.copy()
    scdlkit.tl.predict(again, outputs="normalized")
    np.testing.assert_array_equal(again.layers["scdlkit_normalized"], normalized)


def test_corrected_changes_only_the_decoder_batch(trained):
    scdlkit.tl.predict(trained, outputs="latent", key_added="plain")
    scdlkit.tl.predict(
        trained, outputs=["latent", "normalized", "corrected"], transform_batch="batch_1"
    )
    record = trained.uns["scdlkit"]
    assert list(record["transform_batch"]) == ["batch_1"] and record["library_size"] == 1e4
    # the encoder is not touched: the latent written by the same call is the plain latent
    np.testing.assert_array_equal(trained.obsm["X_scdlkit"], trained.obsm["X_plain"])
    normalized = trained.layers["scdlkit_normalized"]
    corrected = trained.layers["scdlkit_corrected"]
    np.testing.assert_allclose(corrected.sum(axis=1), 1e4, rtol=1e-4)
    in_batch = (trained.obs["batch"] == "batch_1").to_numpy()
    # cells of batch_1 are decoded with their own batch: nothing changes
    np.testing.assert_allclose(corrected[in_batch], normalized[in_batch], rtol=1e-5, atol=1e-3)
    # the others are decoded as batch_1: different expression
    assert np.abs(corrected[~in_batch] - normalized[~in_batch]).max() > 1.0
    # the same as decoding the posterior mean with the batch replaced at the decoder input
    loaded = pipeline.load_run(record["checkpoint"], device="cpu")
    batch = next(iter(loaded.query(trained).loader(trained.n_obs)))
    model = loaded.trainer.model.eval()
    with torch.no_grad():
        z = torch.from_numpy(trained.obsm["X_scdlkit"])
        decoded = model.decode(
            z, batch["library"], torch.full_like(batch["batch"], 1), batch["cat_covs"],
            batch["cont_covs"],
        )  # fmt: skip
    np.testing.assert_allclose(corrected, decoded["px_scale"].numpy() * 1e4, rtol=1e-4, atol=1e-3)


def test_corrected_with_a_list_is_the_mean_over_the_batches(trained):
    per_batch = []
    for name in ("batch_0", "batch_2"):
        scdlkit.tl.predict(trained, outputs="corrected", transform_batch=name, key_added=name)
        per_batch.append(trained.layers[f"{name}_corrected"])
    scdlkit.tl.predict(
        trained, outputs="corrected", transform_batch=["batch_0", "batch_2"], key_added="both"
    )
    both = trained.layers["both_corrected"]
    np.testing.assert_allclose(both, (per_batch[0] + per_batch[1]) / 2, rtol=1e-5, atol=1e-3)
    assert not np.allclose(per_batch[0], per_batch[1], rtol=1e-3)
    assert list(trained.uns["both"]["transform_batch"]) == ["batch_0", "batch_2"]
    scdlkit.tl.predict(
        trained, outputs="corrected", transform_batch="batch_0", library_size="observed",
        key_added="counts0",
    )  # fmt: skip
    np.testing.assert_allclose(
        trained.layers["counts0_corrected"].sum(axis=1), _library(trained), rtol=1e-4
    )


def test_numeric_batch_names(tmp_path):
    adata = _counts(240, 60)
    adata.obs["plate"] = adata.obs["batch"].cat.codes.astype(np.int64) + 1  # plates 1, 2, 3
    _fit(adata, tmp_path, batch_key="plate", epochs=1)
    scdlkit.tl.predict(adata, outputs="corrected", transform_batch="2", key_added="text")
    for given in (2, np.int64(2)):
        scdlkit.tl.predict(adata, outputs="corrected", transform_batch=given, key_added="number")
        np.testing.assert_array_equal(
            adata.layers["number_corrected"], adata.layers["text_corrected"]
        )
        assert list(adata.uns["number"]["transform_batch"]) == ["2"]
    scdlkit.tl.predict(adata, outputs="corrected", transform_batch=[1, 3], key_added="pair")
    assert list(adata.uns["pair"]["transform_batch"]) == ["1", "3"]
    with pytest.raises(ValueError, match=r"transform_batch '7' is not a batch .* '1', '2', '3'"):
        scdlkit.tl.predict(adata, outputs="corrected", transform_batch=7)


def test_transform_batch_is_recorded_only_with_corrected_output(trained):
    scdlkit.tl.predict(trained, outputs="normalized", transform_batch="batch_0")
    assert "transform_batch" not in trained.uns["scdlkit"]
    assert "scdlkit_corrected" not in trained.layers


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"outputs": "corrected", "transform_batch": "batch_9"},
            ValueError,
            r"transform_batch 'batch_9' is not a batch of the training data; choose from "
            r"'batch_0', 'batch_1', 'batch_2'",
        ),
        (
            {"outputs": "corrected", "transform_batch": ["batch_0", "lab_x"]},
            ValueError,
            r"transform_batch 'lab_x' is not a batch",
        ),
        ({"outputs": "corrected", "transform_batch": []}, ValueError, r"choose from 'batch_0'"),
        ({"outputs": "corrected"}, ValueError, r"pass transform_batch= a training batch"),
        (
            {"outputs": "normalized", "library_size": "median"},
            ValueError,
            r"library_size must be a positive number or 'observed', got 'median'",
        ),
        (
            {"outputs": "normalized", "library_size": 0},
            ValueError,
            r"library_size must be a positive number",
        ),
    ],
)
def test_predict_errors_leave_the_data_unchanged(trained, unchanged, options, error, message):
    check = unchanged(trained)
    with pytest.raises(error, match=message):
        scdlkit.tl.predict(trained, **options)
    check()


def test_expression_outputs_need_a_count_model(tmp_path, unchanged):
    adata = _counts(200, 60)
    scdlkit.tl.fit(
        adata, "vae", normalize=True, log1p=True, epochs=1, progress=False, checkpoint_dir=tmp_path
    )
    check = unchanged(adata)
    for outputs in ("normalized", ["latent", "normalized"]):
        with pytest.raises(
            ValueError, match=r"count models \(e\.g\. 'count_vae'\); 'vae' has none"
        ):
            scdlkit.tl.predict(adata, outputs=outputs)
    check()


def test_transform_batch_needs_a_model_trained_with_batches(tmp_path, unchanged):
    adata = _counts(200, 60)
    scdlkit.tl.fit(
        adata, "count_vae", epochs=1, progress=False, checkpoint_dir=tmp_path,
        model_kwargs=MODEL_KWARGS,
    )  # fmt: skip
    assert adata.uns["scdlkit"]["model_config"]["n_batch"] == 0
    check = unchanged(adata)
    with pytest.raises(ValueError, match=r"transform_batch needs a model trained with batch_key="):
        scdlkit.tl.predict(adata, outputs="corrected", transform_batch="batch_0")
    check()
    scdlkit.tl.predict(adata, outputs="normalized")  # no batch: normalised expression still works
    np.testing.assert_allclose(adata.layers["scdlkit_normalized"].sum(axis=1), 1e4, rtol=1e-4)


def test_hvg_model_writes_expression_for_its_genes_only(tmp_path):
    adata = _counts(300, 120)
    _fit(adata, tmp_path, use_hvg=True, n_top_genes=30, epochs=1)
    scdlkit.tl.predict(adata, outputs=["normalized", "corrected"], transform_batch="batch_2")
    features = adata.uns["scdlkit"]["reconstruction_features"]
    used = adata.var_names.isin(features)
    assert used.sum() == 30
    for name in ("scdlkit_normalized", "scdlkit_corrected"):
        values = adata.layers[name]
        assert np.isnan(values[:, ~used]).all() and np.isfinite(values[:, used]).all()
        np.testing.assert_allclose(values[:, used].sum(axis=1), 1e4, rtol=1e-4)


# --------------------------------------------------------------------------- queries


def test_query_with_shuffled_genes_gives_identical_latents(trained):
    checkpoint = trained.uns["scdlkit"]["checkpoint"]
    scdlkit.tl.predict(trained, outputs=["latent", "normalized"])
    order = np.random.default_rng(1).permutation(trained.n_vars)
    query = ad.AnnData(
        trained.X[:, order], obs=trained.obs[["batch", "donor", "pct_mito"]].copy(),
        var=pd.DataFrame(index=trained.var_names[order]),
    )  # fmt: skip
    scdlkit.tl.predict(query, checkpoint=checkpoint, outputs=["latent", "normalized"])
    np.testing.assert_array_equal(query.obsm["X_scdlkit"], trained.obsm["X_scdlkit"])
    np.testing.assert_array_equal(
        query.layers["scdlkit_normalized"], trained.layers["scdlkit_normalized"][:, order]
    )


def test_query_batch_problems_are_clear(trained, unchanged):
    checkpoint = trained.uns["scdlkit"]["checkpoint"]
    no_batch = ad.AnnData(trained.X.copy(), obs=trained.obs[["donor", "pct_mito"]].copy())
    no_batch.var_names = trained.var_names
    check = unchanged(no_batch)
    with pytest.raises(
        MissingKeyError, match=r"trained with batch_key='batch'; the query has no such \.obs column"
    ):
        scdlkit.tl.predict(no_batch, checkpoint=checkpoint, outputs="latent")
    check()
    unseen = trained.copy()
    labels = unseen.obs["batch"].astype(str).to_numpy()
    labels[:4] = "site_9"
    unseen.obs["batch"] = labels
    check = unchanged(unseen)
    with pytest.raises(ValueError, match=r"'batch' has values the model never saw: 'site_9'"):
        scdlkit.tl.predict(unseen, outputs="latent")
    check()


# --------------------------------------------------------------------------- files


def test_h5ad_round_trip_predicts_again_in_a_fresh_process(trained, tmp_path):
    scdlkit.tl.predict(trained, outputs=["latent", "normalized"])
    path = tmp_path / "counts.h5ad"
    trained.write_h5ad(path)
    script = (
        "import sys, anndata, numpy as np, scdlkit\n"
        "adata = anndata.read_h5ad(sys.argv[1])\n"
        "scdlkit.tl.predict(adata, outputs=['latent', 'normalized'], key_added='fresh')\n"
        "np.save(sys.argv[2], adata.obsm['X_fresh'])\n"
        "np.save(sys.argv[3], adata.layers['fresh_normalized'])\n"
    )
    latent, normalized = tmp_path / "latent.npy", tmp_path / "normalized.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), str(latent), str(normalized)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(latent), trained.obsm["X_scdlkit"])
    np.testing.assert_array_equal(np.load(normalized), trained.layers["scdlkit_normalized"])
    back = ad.read_h5ad(path)
    assert back.uns["scdlkit"]["params"]["batch_key"] == "batch"
    np.testing.assert_array_equal(back.obsm["X_scdlkit"], trained.obsm["X_scdlkit"])


def test_backed_fit_equals_in_memory(tmp_path):
    adata = _counts(300, 80)
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        _fit(backed, tmp_path / "disk", epochs=2, categorical_covariate_keys=["donor"])
        scdlkit.tl.predict(backed, outputs=["latent", "normalized"])
        assert backed.isbacked
        _fit(adata, tmp_path / "memory", epochs=2, categorical_covariate_keys=["donor"])
        scdlkit.tl.predict(adata, outputs=["latent", "normalized"])
        np.testing.assert_array_equal(
            backed.obs["scdlkit_split"].to_numpy(), adata.obs["scdlkit_split"].to_numpy()
        )
        np.testing.assert_allclose(
            backed.uns["scdlkit"]["history"]["train_loss"],
            adata.uns["scdlkit"]["history"]["train_loss"],
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            backed.obsm["X_scdlkit"], adata.obsm["X_scdlkit"], rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            backed.layers["scdlkit_normalized"], adata.layers["scdlkit_normalized"], rtol=1e-5
        )
    finally:
        backed.file.close()


def test_mudata_modality_with_mod_covariates(tmp_path):
    rna = _counts(300, 80)
    pct = rna.obs.pop("pct_mito").to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = MuData({"rna": rna})
    mdata.obs["rna:pct_mito"] = pct
    _fit(
        mdata, tmp_path, mod="rna", epochs=1,
        categorical_covariate_keys=["rna:donor"], continuous_covariate_keys=["pct_mito"],
    )  # fmt: skip
    record = rna.uns["scdlkit"]
    assert (record["model_config"]["n_cats_per_cov"], record["model_config"]["n_continuous_cov"]) == (
        [3], 1
    )  # fmt: skip
    scdlkit.tl.predict(mdata, outputs=["latent", "corrected"], transform_batch="batch_0")
    assert rna.obsm["X_scdlkit"].shape == (300, 6)
    np.testing.assert_allclose(rna.layers["scdlkit_corrected"].sum(axis=1), 1e4, rtol=1e-4)


# --------------------------------------------------------------------------- real data


def test_real_counts_three_technologies(pbmc_3tech, tmp_path):
    adata = pbmc_3tech
    assert sp.issparse(adata.X)
    _fit(
        adata, tmp_path, use_hvg=True, n_top_genes=1000, epochs=4, batch_size=128,
        model_kwargs={"n_latent": 10, "kl_warmup_steps": 50},
    )  # fmt: skip
    batches = list(adata.obs["batch"].astype(str).unique())
    scdlkit.tl.predict(
        adata, outputs=["latent", "normalized", "corrected"], transform_batch=batches[0]
    )
    latent = adata.obsm["X_scdlkit"]
    assert np.isfinite(latent).all()
    from sklearn.neighbors import KNeighborsClassifier

    train = (adata.obs["scdlkit_split"] == "train").to_numpy()
    knn = KNeighborsClassifier(15).fit(latent[train], adata.obs["cell_type"][train])
    assert knn.score(latent[~train], adata.obs["cell_type"][~train]) > 0.8
    used = adata.var_names.isin(adata.uns["scdlkit"]["reconstruction_features"])
    assert used.sum() == 1000
    corrected = adata.layers["scdlkit_corrected"][:, used]
    np.testing.assert_allclose(corrected.sum(axis=1), 1e4, rtol=1e-4)
    same = (adata.obs["batch"].astype(str) == batches[0]).to_numpy()
    normalized = adata.layers["scdlkit_normalized"][:, used]
    np.testing.assert_allclose(corrected[same], normalized[same], rtol=1e-4, atol=1e-3)
