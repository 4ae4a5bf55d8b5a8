"""Tests of scdlkit.pl: loss curves, confusion matrices and reconstruction scatters."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "agg")

import shutil
import warnings
from pathlib import Path

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

import scdlkit
from scdlkit._errors import MissingKeyError

matplotlib.use("agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> ad.AnnData:
    """pbmc68k_reduced with a VAE run (raw values) and a classifier run under key 'clf'."""
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    adata = scdlkit.datasets.pbmc68k_reduced()
    scdlkit.tl.fit(
        adata, "vae", use_raw=True, label_key="bulk_labels", epochs=3, batch_size=128,
        checkpoint_dir=checkpoints, model_kwargs={"latent_dim": 8},
    )  # fmt: skip
    scdlkit.tl.predict(adata)
    scdlkit.tl.fit(
        adata, "mlp_classifier", task="classification", use_raw=True, label_key="bulk_labels",
        epochs=3, batch_size=128, key_added="clf", checkpoint_dir=checkpoints,
    )  # fmt: skip
    scdlkit.tl.predict(adata, key="clf")
    return adata


@pytest.fixture
def adata(trained) -> ad.AnnData:
    return trained.copy()


@pytest.fixture
def roundtrip(trained, tmp_path) -> ad.AnnData:
    path = tmp_path / "trained.h5ad"
    trained.write_h5ad(path)
    return ad.read_h5ad(path)


# --------------------------------------------------------------------------- history


def _lines_by_label(ax: Axes) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines()}


@pytest.mark.parametrize("source", ["memory", "h5ad"])
def test_history_lines_equal_history_arrays(adata, roundtrip, source):
    data = adata if source == "memory" else roundtrip
    history = data.uns["scdlkit"]["history"]
    ax = scdlkit.pl.history(data, show=False)
    assert isinstance(ax, Axes)
    lines = _lines_by_label(ax)
    np.testing.assert_allclose(lines["train"].get_xdata(), history["epoch"])
    np.testing.assert_allclose(lines["train"].get_ydata(), history["train_loss"])
    np.testing.assert_allclose(lines["val"].get_ydata(), history["val_loss"])
    best = int(data.uns["scdlkit"]["best_epoch"])
    best_line = lines[f"best epoch {best}"]
    assert list(best_line.get_xdata()) == [best, best]


def test_history_components_and_log_scale(adata):
    axes = scdlkit.pl.history(adata, components=True, log_y=True, show=False)
    assert [ax.get_title() for ax in axes] == ["loss", "reconstruction", "kl"]
    history = adata.uns["scdlkit"]["history"]
    kl = _lines_by_label(axes[2])
    np.testing.assert_allclose(kl["train"].get_ydata(), history["train_kl"])
    np.testing.assert_allclose(kl["val"].get_ydata(), history["val_kl"])
    assert all(ax.get_yscale() == "log" for ax in axes)


def test_history_skips_epochs_without_validation():
    adata = ad.AnnData(np.zeros((3, 2), dtype=np.float32))
    adata.uns["run"] = {
        "history": {
            "epoch": np.arange(1.0, 5.0),
            "train_loss": np.array([4.0, 3.0, 2.0, 1.0]),
            "val_loss": np.array([np.nan, 3.5, np.nan, 2.5]),
        },
        "best_epoch": 4,
        "checkpoint": "nowhere",
        "version": "0",
    }
    lines = _lines_by_label(scdlkit.pl.history(adata, key="run", show=False))
    np.testing.assert_allclose(lines["val"].get_xdata(), [2.0, 4.0])
    np.testing.assert_allclose(lines["val"].get_ydata(), [3.5, 2.5])


def test_history_save_return_fig_and_show(adata, tmp_path):
    path = tmp_path / "sub" / "loss.png"
    fig = scdlkit.pl.history(adata, save=path, return_fig=True)
    assert isinstance(fig, Figure)
    assert path.is_file() and path.stat().st_size > 0
    figdir, autoshow = sc.settings.figdir, sc.settings.autoshow
    try:
        sc.settings.figdir = tmp_path / "figures"
        assert scdlkit.pl.history(adata, save=True, show=True) is None
        assert (tmp_path / "figures" / f"history_scdlkit.{sc.settings.file_format_figs}").is_file()
        sc.settings.autoshow = False
        assert isinstance(scdlkit.pl.history(adata), Axes)  # show=None follows autoshow
        sc.settings.autoshow = True
        assert scdlkit.pl.history(adata) is None
    finally:
        sc.settings.figdir, sc.settings.autoshow = figdir, autoshow


def test_history_into_given_axes(adata):
    _, ax = plt.subplots()
    assert scdlkit.pl.history(adata, ax=ax, show=False) is ax
    with pytest.raises(ValueError, match="panels"):
        scdlkit.pl.history(adata, components=True, ax=ax, show=False)


def test_history_missing_key(adata):
    with pytest.raises(MissingKeyError, match=r"tl\.fit") as info:
        scdlkit.pl.history(adata, key="nope", show=False)
    assert "'scdlkit'" in str(info.value)  # lists the records present


def test_history_mudata_modality(small_mudata, tmp_path):
    scdlkit.tl.fit(
        small_mudata, "autoencoder", mod="rna", normalize=True, log1p=True, epochs=2,
        batch_size=16, checkpoint_dir=tmp_path,
    )  # fmt: skip
    history = small_mudata.mod["rna"].uns["scdlkit"]["history"]
    for mod in ("rna", None):  # mod=None finds the modality that holds the run
        lines = _lines_by_label(scdlkit.pl.history(small_mudata, mod=mod, show=False))
        np.testing.assert_allclose(lines["train"].get_ydata(), history["train_loss"])
    with pytest.raises(MissingKeyError, match="prot"):
        scdlkit.pl.history(small_mudata, mod="protein", show=False)


# --------------------------------------------------------------------------- confusion


def _cell_texts(ax: Axes) -> list[str]:
    return [text.get_text() for text in ax.texts]


@pytest.mark.parametrize("normalize", [None, "true", "pred"])
def test_confusion_cells_equal_sklearn(adata, normalize):
    ax = scdlkit.pl.confusion(adata, key="clf", normalize=normalize, show=False)
    classes = list(adata.uns["clf"]["label_categories"])
    expected = confusion_matrix(
        adata.obs["bulk_labels"].astype(str),
        adata.obs["clf_prediction"].astype(str),
        labels=classes,
        normalize=normalize,
    )
    formatted = [f"{v:.2f}" if normalize else f"{int(v)}" for v in expected.ravel()]
    assert _cell_texts(ax) == formatted
    assert [t.get_text() for t in ax.get_xticklabels()] == classes
    assert [t.get_text() for t in ax.get_yticklabels()] == classes


def test_confusion_split_restricts_cells(roundtrip):
    ax = scdlkit.pl.confusion(roundtrip, key="clf", normalize=None, split="test", show=False)
    test = (roundtrip.obs["clf_split"] == "test").to_numpy()
    expected = confusion_matrix(
        roundtrip.obs["bulk_labels"].astype(str)[test],
        roundtrip.obs["clf_prediction"].astype(str)[test],
        labels=list(roundtrip.uns["clf"]["label_categories"]),
    )
    assert [int(t) for t in _cell_texts(ax)] == expected.ravel().tolist()
    assert sum(int(t) for t in _cell_texts(ax)) == test.sum()
    assert f"n={test.sum()}" in ax.get_title()


def test_confusion_errors(adata, tmp_path):
    with pytest.raises(MissingKeyError, match=r"tl\.predict"):
        scdlkit.pl.confusion(adata, key="scdlkit", show=False)  # the VAE made no predictions
    with pytest.raises(ValueError, match="normalize"):
        scdlkit.pl.confusion(adata, key="clf", normalize="all", show=False)
    with pytest.raises(ValueError, match="split"):
        scdlkit.pl.confusion(adata, key="clf", split="holdout", show=False)
    with pytest.raises(MissingKeyError, match="nope"):
        scdlkit.pl.confusion(adata, key="clf", label_key="nope", show=False)
    path = tmp_path / "confusion.pdf"
    scdlkit.pl.confusion(adata, key="clf", save=str(path), show=False)
    assert path.is_file()


# --------------------------------------------------------------------------- reconstruction


def test_reconstruction_scatter_values(roundtrip):
    genes = ["CD79A", "NKG7", "FCER1A"]
    axes = scdlkit.pl.reconstruction(roundtrip, genes=genes, ncols=2, show=False)
    assert len(axes) == 3
    raw = roundtrip.raw.to_adata()
    for ax, gene in zip(axes, genes, strict=True):
        observed = raw[:, gene].X.toarray().ravel()  # trained on .raw without preprocessing
        column = roundtrip.var_names.get_loc(gene)
        reconstructed = roundtrip.layers["scdlkit_reconstruction"][:, column]
        offsets = ax.collections[0].get_offsets()
        np.testing.assert_allclose(offsets[:, 0], observed, rtol=1e-6)
        np.testing.assert_allclose(offsets[:, 1], reconstructed, rtol=1e-6)
        r = np.corrcoef(observed, reconstructed)[0, 1]
        assert ax.get_title() == f"{gene}\nPearson r = {r:.3f}"


def test_reconstruction_applies_the_run_preprocessing(synthetic, tmp_path):
    scdlkit.tl.fit(
        synthetic, "autoencoder", normalize=True, log1p=True, scale=True, epochs=2,
        checkpoint_dir=tmp_path,
    )  # fmt: skip
    scdlkit.tl.predict(synthetic)
    ax = scdlkit.pl.reconstruction(synthetic, genes="gene_0003", show=False)
    expected = synthetic.copy()
    expected.X = expected.X.astype(np.float32)
    sc.pp.normalize_total(expected, target_sum=1e4)
    sc.pp.log1p(expected)
    values = expected[:, "gene_0003"].X.toarray().ravel()
    train = (synthetic.obs["scdlkit_split"] == "train").to_numpy()
    mean, std = values[train].mean(), values[train].std(ddof=1)
    np.testing.assert_allclose(
        ax.collections[0].get_offsets()[:, 0], np.clip((values - mean) / std, -10, 10), atol=1e-4
    )


def test_reconstruction_hvg_subset_and_layer(tmp_path):
    counts = scdlkit.datasets.synthetic_counts(200, 100, n_types=3, seed=2)
    counts.layers["counts"] = counts.X.copy()
    counts.X = sp.csr_matrix(np.zeros(counts.shape, dtype=np.float32))
    scdlkit.tl.fit(
        counts, "autoencoder", layer="counts", use_hvg=True, n_top_genes=20, normalize=True,
        log1p=True, epochs=2, checkpoint_dir=tmp_path,
    )  # fmt: skip
    scdlkit.tl.predict(counts)
    modelled = list(counts.uns["scdlkit"]["reconstruction_features"])
    other = next(g for g in counts.var_names if g not in modelled)
    with pytest.raises(ValueError, match=other):
        scdlkit.pl.reconstruction(counts, genes=[modelled[0], other], show=False)
    ax = scdlkit.pl.reconstruction(counts, genes=modelled[0], show=False)  # layer from the run
    observed = ax.collections[0].get_offsets()[:, 0]
    assert observed.max() > 0
    explicit = scdlkit.pl.reconstruction(counts, genes=modelled[0], layer="counts", show=False)
    np.testing.assert_allclose(explicit.collections[0].get_offsets()[:, 0], observed)


def test_reconstruction_errors(adata, tmp_path):
    with pytest.raises(MissingKeyError) as info:
        scdlkit.pl.reconstruction(adata, genes=["CD79A", "NOTAGENE", "ALSONOT"], show=False)
    assert "NOTAGENE" in str(info.value) and "ALSONOT" in str(info.value)
    with pytest.raises(MissingKeyError, match=r"tl\.predict"):
        scdlkit.pl.reconstruction(adata, genes="CD79A", key="clf", show=False)
    moved = adata.copy()
    checkpoint = Path(moved.uns["scdlkit"]["checkpoint"])
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    moved.uns["scdlkit"]["checkpoint"] = str(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        scdlkit.pl.reconstruction(moved, genes="CD79A", show=False)
    moved.uns["scdlkit"]["checkpoint"] = str(copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = scdlkit.pl.reconstruction(moved, genes="CD79A", return_fig=True)
    assert isinstance(fig, Figure)
    original = scdlkit.pl.reconstruction(adata, genes="CD79A", show=False)
    np.testing.assert_array_equal(
        fig.axes[0].collections[0].get_offsets(), original.collections[0].get_offsets()
    )


def test_record_lookup_messages(adata):
    with pytest.raises(MissingKeyError) as info:
        scdlkit.pl.reconstruction(adata, genes="CD79A", key="nope", show=False)
    message = str(info.value)
    assert "adata.uns['nope']" in message
    assert "scdlkit records present: 'scdlkit', 'clf'" in message
    assert "scdlkit.pl.reconstruction draws a run: Run scdlkit.tl.fit" in message
    # a reconstruction kept in .obsm needs the record's feature list
    in_obsm = adata.copy()
    in_obsm.obsm["scdlkit_reconstruction"] = in_obsm.layers.pop("scdlkit_reconstruction")
    del in_obsm.uns["scdlkit"]["reconstruction_features"]
    with pytest.raises(MissingKeyError, match="reconstruction_features; run tl.predict again"):
        scdlkit.pl.reconstruction(in_obsm, genes="CD79A", show=False)
    with pytest.raises(MissingKeyError, match=r"with a model that reconstructs its input"):
        scdlkit.pl.reconstruction(adata, genes="CD79A", key="clf", show=False)


def test_mudata_several_modalities_and_modality_classifier(small_mudata, tmp_path):
    mdata = small_mudata
    scdlkit.tl.fit(
        mdata, "autoencoder", mod=["rna", "prot"], normalize=True, log1p=True, epochs=2,
        batch_size=16, checkpoint_dir=tmp_path,
    )  # fmt: skip
    scdlkit.tl.predict(mdata)
    axes = scdlkit.pl.reconstruction(mdata, genes=["rna:gene1", "prot:prot2"], show=False)
    shared = mdata.mod["prot"].obs_names  # the model saw the cells both modalities share
    rows = mdata.obs_names.get_indexer(shared)
    features = list(mdata.uns["scdlkit"]["reconstruction_features"])
    prot = mdata.mod["prot"]
    counts = np.asarray(prot[:, "prot2"].X).ravel()
    totals = np.asarray(mdata.mod["rna"][shared].X.sum(axis=1)).ravel() + prot.X.sum(axis=1)
    expected = np.log1p(counts / totals * 1e4)
    offsets = axes[1].collections[0].get_offsets()
    order = np.argsort(rows)
    np.testing.assert_allclose(offsets[:, 0], expected[order], rtol=1e-5)
    reconstructed = mdata.obsm["scdlkit_reconstruction"][:, features.index("prot:prot2")]
    np.testing.assert_allclose(offsets[:, 1], reconstructed[np.sort(rows)], rtol=1e-6)

    scdlkit.tl.fit(
        mdata, "mlp_classifier", task="classification", mod="rna", label_key="cell_type",
        normalize=True, log1p=True, epochs=2, batch_size=16, key_added="clf",
        checkpoint_dir=tmp_path,
    )  # fmt: skip
    scdlkit.tl.predict(mdata, key="clf")
    rna = mdata.mod["rna"]
    expected = confusion_matrix(
        rna.obs["cell_type"].astype(str), rna.obs["clf_prediction"].astype(str), labels=["A", "B"]
    )
    for mod in ("rna", None):
        ax = scdlkit.pl.confusion(mdata, key="clf", mod=mod, normalize=None, show=False)
        assert [int(t) for t in _cell_texts(ax)] == expected.ravel().tolist()
