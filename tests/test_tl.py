import json
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata.abc import CSRDataset

import scdlkit
from scdlkit._errors import MissingKeyError


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default checkpoints go to ./scdlkit_checkpoints


def _fit(adata, model="vae", **kwargs):
    kwargs.setdefault("epochs", 4)
    kwargs.setdefault("batch_size", 128)
    kwargs.setdefault("device", "cpu")
    return scdlkit.tl.fit(adata, model, **kwargs)


def test_fit_predict_round_trip_in_new_process(pbmc, tmp_path):
    _fit(pbmc, use_raw=True, label_key="bulk_labels")
    record = pbmc.uns["scdlkit"]
    assert record["model"] == "vae" and record["task"] == "representation"
    assert Path(record["checkpoint"]).is_dir()
    assert Path(record["checkpoint"]).parent == tmp_path / "scdlkit_checkpoints"
    assert list(record["label_categories"]) == list(pbmc.obs["bulk_labels"].cat.categories)
    assert record["history"]["train_loss"].shape == (4,)
    assert pbmc.obs["scdlkit_split"].value_counts().to_dict() == {
        "train": 490,
        "val": 105,
        "test": 105,
    }

    scdlkit.tl.predict(pbmc)
    latent = pbmc.obsm["X_scdlkit"]
    assert latent.shape == (700, 32) and latent.dtype == np.float32
    assert np.isfinite(latent).all() and (latent.std(axis=0) > 0).all()
    recon = pbmc.layers["scdlkit_reconstruction"]
    assert recon.shape == pbmc.shape and recon.dtype == np.float32
    # the reconstruction follows the input (after 4 epochs: ~570 against ~950 for all zeros)
    observed = pbmc.raw.X.toarray() if hasattr(pbmc.raw.X, "toarray") else pbmc.raw.X
    error = ((recon - observed) ** 2).sum(axis=1).mean()
    assert error < 0.8 * (observed**2).sum(axis=1).mean()

    path = tmp_path / "fitted.h5ad"
    pbmc.write_h5ad(path)
    script = (
        "import sys, numpy as np, anndata as ad, scdlkit\n"
        f"a = ad.read_h5ad({str(path)!r})\n"
        "before = a.obsm['X_scdlkit'].copy()\n"
        "scdlkit.tl.predict(a, device='cpu')\n"
        "assert np.array_equal(before, a.obsm['X_scdlkit']), 'latent changed'\n"
        f"a.write_h5ad({str(tmp_path / 'again.h5ad')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    again = ad.read_h5ad(tmp_path / "again.h5ad")
    np.testing.assert_array_equal(again.obsm["X_scdlkit"], latent)
    np.testing.assert_array_equal(again.layers["scdlkit_reconstruction"], recon)
    assert again.uns["scdlkit"]["checkpoint"] == record["checkpoint"]
    np.testing.assert_array_equal(
        again.uns["scdlkit"]["history"]["val_loss"], record["history"]["val_loss"]
    )


def test_classification_writes_categorical_labels(pbmc, tmp_path):
    _fit(pbmc, "mlp_classifier", label_key="bulk_labels", epochs=30, batch_size=64)
    scdlkit.tl.predict(pbmc)
    prediction = pbmc.obs["scdlkit_prediction"]
    assert isinstance(prediction.dtype, pd.CategoricalDtype)
    assert list(prediction.cat.categories) == list(pbmc.obs["bulk_labels"].cat.categories)
    probabilities = pbmc.obsm["scdlkit_probabilities"]
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pbmc.obs["scdlkit_confidence"], probabilities.max(1), rtol=1e-6)
    test = pbmc.obs["scdlkit_split"] == "test"
    accuracy = (prediction[test].astype(str) == pbmc.obs["bulk_labels"][test].astype(str)).mean()
    assert accuracy > 0.6
    pbmc.write_h5ad(tmp_path / "clf.h5ad")
    back = ad.read_h5ad(tmp_path / "clf.h5ad")
    pd.testing.assert_series_equal(back.obs["scdlkit_prediction"], prediction)


def test_split_key_is_respected(pbmc):
    split = np.where(np.arange(pbmc.n_obs) % 5 == 0, "Validation", "TRAIN")
    pbmc.obs["my_split"] = split
    _fit(pbmc, split_key="my_split")
    assert "scdlkit_split" not in pbmc.obs
    assert pbmc.uns["scdlkit"]["params"]["split_key"] == "my_split"


def test_copy_leaves_input_untouched(pbmc, unchanged):
    check = unchanged(pbmc)
    fitted = _fit(pbmc, copy=True)
    check()
    assert fitted.uns["scdlkit"]["model"] == "vae" and fitted.uns["scdlkit"]["epochs_run"] == 4
    predicted = scdlkit.tl.predict(fitted, copy=True)
    assert "X_scdlkit" in predicted.obsm and "X_scdlkit" not in fitted.obsm
    scdlkit.tl.predict(fitted)  # in place: the same values as the copy got
    np.testing.assert_array_equal(fitted.obsm["X_scdlkit"], predicted.obsm["X_scdlkit"])


def test_two_keys_coexist_and_rerun_overwrites(pbmc):
    _fit(pbmc, key_added="a")
    _fit(pbmc, "autoencoder", key_added="b")
    scdlkit.tl.predict(pbmc, key="a")
    scdlkit.tl.predict(pbmc, key="b")
    assert {"X_a", "X_b"} <= set(pbmc.obsm)
    first = pbmc.uns["a"]["checkpoint"]
    _fit(pbmc, key_added="a", epochs=2)
    assert pbmc.uns["a"]["checkpoint"] != first
    assert "X_a" not in pbmc.obsm  # stale results of the old run are removed
    assert "X_b" in pbmc.obsm


def test_neighbors_umap_and_embedding_plot_chain(pbmc):
    _fit(pbmc, use_raw=True)
    scdlkit.tl.predict(pbmc, outputs=["latent"])
    assert "scdlkit_reconstruction" not in pbmc.layers
    sc.pp.neighbors(pbmc, use_rep="X_scdlkit", n_neighbors=10)
    assert pbmc.uns["neighbors"]["params"]["use_rep"] == "X_scdlkit"
    assert pbmc.obsp["distances"].shape == (700, 700)
    sc.tl.umap(pbmc)
    assert pbmc.obsm["X_umap"].shape == (700, 2) and np.isfinite(pbmc.obsm["X_umap"]).all()
    axes = sc.pl.umap(pbmc, color="bulk_labels", show=False)
    assert sum(len(c.get_offsets()) for c in axes.collections) == 700
    axes = sc.pl.embedding(pbmc, basis="scdlkit", color="bulk_labels", show=False)
    points = np.concatenate([c.get_offsets() for c in axes.collections])
    latent = pbmc.obsm["X_scdlkit"][:, :2]  # the first two latent dimensions are drawn
    np.testing.assert_allclose(np.sort(points[:, 0]), np.sort(latent[:, 0]), rtol=1e-6)
    np.testing.assert_allclose(np.sort(points[:, 1]), np.sort(latent[:, 1]), rtol=1e-6)


def test_query_mapping_with_checkpoint_matches_genes_by_name(pbmc):
    _fit(pbmc)
    scdlkit.tl.predict(pbmc)
    query = pbmc[:50, ::-1].copy()
    del query.obsm["X_scdlkit"], query.uns["scdlkit"]
    scdlkit.tl.predict(query, checkpoint=pbmc.uns["scdlkit"]["checkpoint"], key_added="ref")
    np.testing.assert_allclose(
        query.obsm["X_ref"], pbmc.obsm["X_scdlkit"][:50], rtol=1e-5, atol=1e-6
    )

    missing = pbmc[:, 10:].copy()
    with pytest.raises(ValueError, match="lacks 10 of the 765 features"):
        scdlkit.tl.predict(missing, checkpoint=pbmc.uns["scdlkit"]["checkpoint"])


def test_hvg_model_reconstruction_layer_marks_unmodelled_genes_nan(pbmc):
    _fit(pbmc, use_raw=True, use_hvg=True, n_top_genes=100)
    scdlkit.tl.predict(pbmc)
    layer = pbmc.layers["scdlkit_reconstruction"]
    modelled = pbmc.var_names.isin(list(pbmc.uns["scdlkit"]["reconstruction_features"]))
    assert modelled.sum() == 100
    assert np.isfinite(layer[:, modelled]).all() and np.isnan(layer[:, ~modelled]).all()


def test_errors_leave_adata_unchanged(pbmc, unchanged):
    check = unchanged(pbmc)
    with pytest.raises(MissingKeyError, match="layer 'counts'"):
        _fit(pbmc, layer="counts")
    with pytest.raises(MissingKeyError, match="label_key 'celltype'"):
        _fit(pbmc, label_key="celltype")
    with pytest.raises(ValueError, match="needs label_key"):
        _fit(pbmc, "mlp_classifier")
    with pytest.raises(ValueError, match="Unknown model"):
        _fit(pbmc, "gan")
    with pytest.raises(ValueError, match="does not support"):
        _fit(pbmc, "vae", task="classification", label_key="bulk_labels")
    pbmc.obs["one"] = "x"
    check_one = unchanged(pbmc)
    with pytest.raises(ValueError, match="single class"):
        _fit(pbmc, "mlp_classifier", label_key="one")
    check_one()
    del pbmc.obs["one"]
    with pytest.raises(MissingKeyError, match="Run scdlkit.tl.fit"):
        scdlkit.tl.predict(pbmc)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scdlkit.tl.predict(pbmc, checkpoint="nowhere")
    check()


def test_predict_errors(pbmc, unchanged):
    _fit(pbmc)
    check = unchanged(pbmc)
    with pytest.raises(ValueError, match="Unknown outputs"):
        scdlkit.tl.predict(pbmc, outputs=["umap"])
    with pytest.raises(ValueError, match="does not produce"):
        scdlkit.tl.predict(pbmc, outputs=["prediction"])
    check()
    pbmc.uns["scdlkit"]["checkpoint"] = "/moved/away"
    with pytest.raises(FileNotFoundError, match="moved or deleted"):
        scdlkit.tl.predict(pbmc)


def test_views_are_refused(pbmc):
    with pytest.raises(ValueError, match=r"adata.copy\(\)"):
        _fit(pbmc[:100])


def test_mudata_single_modality_round_trip(small_mudata, tmp_path):
    mdata = small_mudata
    _fit(
        mdata,
        mod="rna",
        label_key="cell_type",
        epochs=2,
        batch_size=16,
        model_kwargs={"batch_norm": False},
    )
    scdlkit.tl.predict(mdata)
    rna = mdata.mod["rna"]
    assert rna.obsm["X_scdlkit"].shape == (40, 32)
    assert "scdlkit" in rna.uns and "scdlkit" not in mdata.uns
    mirrored = mdata.obs["rna:scdlkit_split"].reindex(rna.obs_names)
    assert list(mirrored.astype(str)) == list(rna.obs["scdlkit_split"].astype(str))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata.write(tmp_path / "m.h5mu")
        back = md.read_h5mu(tmp_path / "m.h5mu")
    np.testing.assert_array_equal(back.mod["rna"].obsm["X_scdlkit"], rna.obsm["X_scdlkit"])
    assert "rna:scdlkit_split" in back.obs
    scdlkit.tl.predict(back, key_added="again")
    np.testing.assert_allclose(back.mod["rna"].obsm["X_again"], rna.obsm["X_scdlkit"], rtol=1e-6)


def test_mudata_two_modalities_write_into_the_mudata(small_mudata, tmp_path):
    mdata = small_mudata
    _fit(
        mdata,
        mod=["rna", "prot"],
        epochs=2,
        batch_size=16,
        log1p=True,
        model_kwargs={"batch_norm": False},
    )
    scdlkit.tl.predict(mdata)
    assert "scdlkit" in mdata.uns
    latent = mdata.obsm["X_scdlkit"]
    assert latent.shape == (mdata.n_obs, 32)
    shared = mdata.obs_names.isin(mdata.mod["prot"].obs_names) & mdata.obs_names.isin(
        mdata.mod["rna"].obs_names
    )
    assert np.isfinite(latent[shared]).all() and np.isnan(latent[~shared]).all()
    features = list(mdata.uns["scdlkit"]["reconstruction_features"])
    assert features[0] == "rna:gene0" and features[-1] == "prot:prot4"
    assert mdata.obsm["scdlkit_reconstruction"].shape == (mdata.n_obs, 35)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata.write(tmp_path / "multi.h5mu")
        back = md.read_h5mu(tmp_path / "multi.h5mu")
    np.testing.assert_array_equal(back.obsm["X_scdlkit"], latent)


def test_citeseq_mudata(citeseq):
    _fit(
        citeseq,
        mod="rna",
        use_hvg=True,
        normalize=True,
        log1p=True,
        batch_key="batch",
        epochs=2,
        batch_size=64,
    )
    scdlkit.tl.predict(citeseq, outputs="latent")
    rna = citeseq.mod["rna"]
    latent = rna.obsm["X_scdlkit"]
    assert latent.shape == (400, 32) and np.isfinite(latent).all()
    params = rna.uns["scdlkit"]["params"]
    assert (params["mod"], params["batch_key"], params["use_hvg"]) == ("rna", "batch", True)
    assert len(rna.uns["scdlkit"]["history"]["train_loss"]) == 2
    scdlkit.tl.predict(citeseq, outputs="latent", key_added="again")
    np.testing.assert_array_equal(rna.obsm["X_again"], latent)


def test_real_counts_end_to_end(pbmc_3tech, tmp_path):
    adata = pbmc_3tech
    _fit(
        adata,
        normalize=True,
        log1p=True,
        use_hvg=True,
        label_key="cell_type",
        batch_key="batch",
        epochs=8,
    )
    scdlkit.tl.predict(adata)
    adata.write_h5ad(tmp_path / "tech.h5ad")
    back = ad.read_h5ad(tmp_path / "tech.h5ad")
    scdlkit.tl.predict(back, key_added="again")
    np.testing.assert_allclose(back.obsm["X_again"], adata.obsm["X_scdlkit"], rtol=1e-5, atol=1e-6)
    config = json.loads((Path(adata.uns["scdlkit"]["checkpoint"]) / "config.json").read_text())
    assert config["preprocessing"]["n_top_genes"] == 2000
    # the latent separates the three cell types far better than chance (1/3)
    from sklearn.neighbors import KNeighborsClassifier

    train = (adata.obs["scdlkit_split"] == "train").to_numpy()
    knn = KNeighborsClassifier(15).fit(
        adata.obsm["X_scdlkit"][train], adata.obs["cell_type"][train]
    )
    assert knn.score(adata.obsm["X_scdlkit"][~train], adata.obs["cell_type"][~train]) > 0.8


def test_backed_anndata_fit_and_predict(synthetic, tmp_path):
    path = tmp_path / "counts.h5ad"
    synthetic.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    _fit(backed, normalize=True, log1p=True, epochs=2)
    scdlkit.tl.predict(backed, outputs="latent")
    memory = synthetic.copy()
    _fit(memory, normalize=True, log1p=True, epochs=2, key_added="mem")
    scdlkit.tl.predict(memory, key="mem", outputs="latent")
    np.testing.assert_allclose(backed.obsm["X_scdlkit"], memory.obsm["X_mem"], rtol=1e-4, atol=1e-5)


def test_predict_on_backed_anndata_keeps_x_on_disk(synthetic, tmp_path):
    path = tmp_path / "counts.h5ad"
    synthetic.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    _fit(backed, normalize=True, log1p=True, epochs=1)
    scdlkit.tl.predict(backed)  # default outputs: no dense reconstruction for backed data
    assert backed.isbacked and isinstance(backed.X, CSRDataset)
    assert backed.obsm["X_scdlkit"].shape == (synthetic.n_obs, 32)
    assert "scdlkit_reconstruction" not in backed.layers
    assert backed.uns["scdlkit"]["outputs"] == ["latent"]
    scdlkit.tl.predict(backed, outputs=["latent", "reconstruction"], key_added="full")
    assert backed.layers["full_reconstruction"].shape == synthetic.shape
    backed.file.close()
