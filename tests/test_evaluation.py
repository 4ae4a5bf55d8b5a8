import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr

import scdlkit
from scdlkit._errors import MissingKeyError
from scdlkit.evaluation import (
    COMPARISON_COLUMNS,
    batch_silhouette,
    classification_metrics,
    cluster_labels,
    comparison_rows,
    ilisi,
    knn_accuracy,
    label_silhouette,
    metrics_table,
    reconstruction_metrics,
    representation_metrics,
)
from scdlkit.evaluation._tables import confusion_table, per_class_table
from scdlkit.tl._evaluate import evaluate

# --------------------------------------------------------------------------- reconstruction


def test_reconstruction_metrics_match_hand_computed_values():
    observed = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    reconstructed = np.array([[1.0, 2.0, 4.0], [4.0, 6.0, 6.0]])
    metrics = reconstruction_metrics(observed, reconstructed)
    # errors (0, 0, 1) and (0, 1, 0): two of six values are off by one
    assert metrics["mse"] == pytest.approx(1 / 3)
    assert metrics["mae"] == pytest.approx(1 / 3)
    # cell 0: r = 3 / (sqrt(2) * sqrt(42) / 3); cell 1: r = 2 / (sqrt(2) * sqrt(24) / 3)
    assert metrics["pearson_cell"] == pytest.approx((9 / np.sqrt(84) + 6 / np.sqrt(48)) / 2)
    # cell 0 has the same ranks; cell 1 ranks (1, 2.5, 2.5) against (1, 2, 3)
    assert metrics["spearman_cell"] == pytest.approx((1 + np.sqrt(0.75)) / 2)
    # every gene rises from cell 0 to cell 1 in both matrices
    assert metrics["pearson_gene"] == pytest.approx(1.0)
    assert metrics["spearman_gene"] == pytest.approx(1.0)
    assert metrics["n_cells"] == 2


def test_reconstruction_correlations_agree_with_scipy_and_skip_constant_rows():
    rng = np.random.default_rng(0)
    observed = rng.normal(size=(6, 8))
    reconstructed = observed + rng.normal(scale=0.5, size=(6, 8))
    reconstructed[0] = 1.0  # a constant cell has no correlation and is left out
    metrics = reconstruction_metrics(observed, reconstructed)
    expected_cell = np.mean([pearsonr(observed[i], reconstructed[i])[0] for i in range(1, 6)])
    expected_rank = np.mean([spearmanr(observed[i], reconstructed[i])[0] for i in range(1, 6)])
    expected_gene = np.mean([pearsonr(observed[:, j], reconstructed[:, j])[0] for j in range(8)])
    assert metrics["pearson_cell"] == pytest.approx(expected_cell)
    assert metrics["spearman_cell"] == pytest.approx(expected_rank)
    assert metrics["pearson_gene"] == pytest.approx(expected_gene)


def test_reconstruction_metrics_errors():
    with pytest.raises(ValueError, match="shape"):
        reconstruction_metrics(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        reconstruction_metrics(np.array([[np.nan, 1.0]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="2-D"):
        reconstruction_metrics(np.zeros(3), np.zeros(3))


# --------------------------------------------------------------------------- representation


def test_knn_accuracy_with_reference_and_cross_validation():
    reference = np.array([[0.0], [0.1], [5.0], [5.1]])
    accuracy = knn_accuracy(
        np.array([[0.2], [4.9], [0.3]]),
        ["a", "b", "b"],
        reference_latent=reference,
        reference_labels=["a", "a", "b", "b"],
        n_neighbors=1,
    )
    assert accuracy == pytest.approx(2 / 3)
    labels = np.repeat(["a", "b"], 10)
    latent = np.where(labels == "a", 0.0, 10.0)[:, None] + np.linspace(0, 1, 20)[:, None]
    assert knn_accuracy(latent, labels, n_neighbors=3) == 1.0
    with pytest.raises(ValueError, match="both reference_latent and reference_labels"):
        knn_accuracy(latent, labels, reference_latent=latent)
    with pytest.raises(ValueError, match="dimensions"):
        knn_accuracy(
            latent, labels, reference_latent=np.zeros((3, 2)), reference_labels=["a", "b", "c"]
        )


def test_label_silhouette_hand_computed_and_degenerate():
    latent = np.array([[0.0], [1.0], [10.0], [11.0]])
    # cell 0: a = 1, b = 10.5; cell 1: a = 1, b = 9.5 (the other two mirror them)
    expected = ((1 - 1 / 10.5) + (1 - 1 / 9.5)) / 2
    assert label_silhouette(latent, ["a", "a", "b", "b"]) == pytest.approx(expected)
    assert np.isnan(label_silhouette(latent, ["a"] * 4))


def test_batch_mixing_scores():
    separated = np.array([[0.0], [0.0], [5.0], [5.0]])
    assert batch_silhouette(separated, ["x", "x", "y", "y"]) == pytest.approx(0.0)
    # label a: batches apart (score 0); label b: all cells at one point (silhouette 0, score 1)
    latent = np.array([[0.0], [0.0], [9.0], [9.0], [3.0], [3.0], [3.0], [3.0]])
    batches = ["x", "x", "y", "y", "x", "y", "x", "y"]
    labels = ["a"] * 4 + ["b"] * 4
    assert batch_silhouette(latent, batches, labels) == pytest.approx(0.5)
    assert np.isnan(batch_silhouette(separated, ["x"] * 4))

    mixed = np.array([[0.0], [0.1], [0.2], [0.3]])
    # neighbours (k=2): cell 0 -> x, y; cell 1 -> x, x; cell 2 -> y, y; cell 3 -> x, y
    assert ilisi(mixed, ["x", "y", "x", "y"], n_neighbors=2) == pytest.approx(1.5)
    apart = np.array([[0.0], [0.1], [10.0], [10.1]])
    assert ilisi(apart, ["x", "x", "y", "y"], n_neighbors=1) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["kmeans", "leiden"])
def test_clusters_recover_separated_groups(method):
    rng = np.random.default_rng(1)
    labels = np.repeat(["a", "b", "c"], 30)
    centres = {"a": (0.0, 0.0), "b": (20.0, 0.0), "c": (0.0, 20.0)}
    latent = np.array([centres[label] for label in labels]) + rng.normal(size=(90, 2))
    metrics = representation_metrics(
        latent, labels, clustering=method, n_neighbors=10, resolution=0.3
    )
    assert metrics["ari"] == pytest.approx(1.0)
    assert metrics["nmi"] == pytest.approx(1.0)
    assert metrics["knn_accuracy"] == 1.0
    assert metrics["n_cells"] == 90
    assert "batch_silhouette" not in metrics


def test_representation_metrics_options_and_errors():
    latent = np.random.default_rng(2).normal(size=(12, 3))
    batches = np.tile(["x", "y"], 6)
    metrics = representation_metrics(latent, batches=batches)
    assert set(metrics) == {"batch_silhouette", "ilisi", "n_cells"}
    with pytest.raises(ValueError, match="Unknown clustering"):
        cluster_labels(latent, method="louvain")
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_labels(latent, method="kmeans")
    with pytest.raises(ValueError, match="12 cells"):
        representation_metrics(latent, ["a"] * 5)
    with pytest.raises(ValueError, match="missing values"):
        representation_metrics(latent, [None] + ["a"] * 11)


# --------------------------------------------------------------------------- classification


def test_classification_metrics_match_hand_computed_values():
    metrics = classification_metrics(["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # F1: a = 0.5, b = 2 * (2/3) * 1 / (5/3) = 0.8, c = 0
    assert metrics["f1_macro"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics["f1_weighted"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 0.0) / 5)
    assert list(metrics["classes"]) == ["a", "b", "c"]
    np.testing.assert_allclose(metrics["per_class"]["precision"], [0.5, 2 / 3, 0.0])
    np.testing.assert_allclose(metrics["per_class"]["recall"], [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(metrics["per_class"]["support"], [2, 2, 1])
    np.testing.assert_array_equal(metrics["confusion_matrix"], [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert "auroc_ovr" not in metrics
    table = per_class_table(metrics)
    assert list(table.index) == ["a", "b", "c"] and table.loc["b", "f1"] == pytest.approx(0.8)
    assert confusion_table(metrics).loc["c", "a"] == 1
    assert metrics_table(metrics)["metric"].tolist() == [
        "accuracy",
        "balanced_accuracy",
        "f1_macro",
        "f1_weighted",
    ]


def test_auroc_one_vs_rest_hand_computed():
    p_b = np.array([0.1, 0.6, 0.4, 0.9])
    probabilities = np.column_stack([1 - p_b, p_b])
    metrics = classification_metrics(
        ["a", "a", "b", "b"], ["a", "b", "a", "b"], probabilities=probabilities, classes=["a", "b"]
    )
    # positives (0.4, 0.9) beat negatives (0.1, 0.6) in 3 of 4 pairs, for both classes
    assert metrics["auroc_ovr"] == pytest.approx(0.75)
    # a class absent from y_true is skipped; the classes order is kept
    three = np.column_stack([probabilities, np.zeros(4)])
    metrics = classification_metrics(
        ["a", "a", "b", "b"], ["a", "b", "a", "b"], probabilities=three, classes=["a", "b", "c"]
    )
    assert metrics["auroc_ovr"] == pytest.approx(0.75)
    assert list(metrics["classes"]) == ["a", "b", "c"]


def test_classification_metrics_errors():
    with pytest.raises(ValueError, match="classes="):
        classification_metrics(["a"], ["a"], probabilities=np.ones((1, 1)))
    with pytest.raises(ValueError, match="not in classes"):
        classification_metrics(["a", "z"], ["a", "a"], classes=["a", "b"])
    with pytest.raises(ValueError, match="expected"):
        classification_metrics(
            ["a", "b"], ["a", "b"], probabilities=np.ones((2, 3)), classes=["a", "b"]
        )
    with pytest.raises(ValueError, match="2 entries but there are 3"):
        classification_metrics(["a", "b", "a"], ["a", "b"])


def test_comparison_rows_build_the_table_pl_compare_draws():
    metrics = classification_metrics(["a", "b", "b"], ["a", "b", "a"])
    rows = comparison_rows("head", metrics, seconds=1.5, parameters=12)
    rows += comparison_rows("probe", {"accuracy": 0.5, "n_cells": 3}, baseline=True)
    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    assert list(table.columns) == ["model", "baseline", "metric", "value", "seconds", "parameters"]
    head = table[table["model"] == "head"].set_index("metric")
    assert list(head.index) == ["accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"]
    assert head.loc["accuracy", "value"] == pytest.approx(2 / 3)
    assert (head["seconds"] == 1.5).all() and (head["parameters"] == 12).all()
    assert not head["baseline"].any()
    probe = table[table["model"] == "probe"]
    assert probe["metric"].tolist() == ["accuracy"] and probe["baseline"].item()
    assert np.isnan(probe["seconds"].item())
    import matplotlib.pyplot as plt

    from scdlkit.pl._compare import compare

    (ax,) = compare(table, metrics="accuracy", show=False)
    assert [p.get_width() for p in ax.patches] == pytest.approx([2 / 3, 0.5])
    plt.close("all")


# --------------------------------------------------------------------------- tl.evaluate


@pytest.fixture(scope="module")
def fitted_pbmc(tmp_path_factory):
    """pbmc68k_reduced with a vae run ('scdlkit') and a classifier run ('clf'), both predicted."""
    adata = scdlkit.datasets.pbmc68k_reduced()
    folder = tmp_path_factory.mktemp("checkpoints")
    options = {"device": "cpu", "checkpoint_dir": folder, "progress": False}
    scdlkit.tl.fit(adata, "vae", use_raw=True, label_key="bulk_labels", epochs=4, **options)
    scdlkit.tl.predict(adata, device="cpu")
    scdlkit.tl.fit(
        adata, "mlp_classifier", use_raw=True, label_key="bulk_labels", key_added="clf",
        epochs=15, batch_size=64, **options,
    )  # fmt: skip
    scdlkit.tl.predict(adata, key="clf", device="cpu")
    return adata


def test_tl_evaluate_representation_run(fitted_pbmc, tmp_path):
    adata = fitted_pbmc.copy()
    evaluate(adata)
    metrics = adata.uns["scdlkit"]["metrics"]
    assert {"mse", "pearson_gene", "knn_accuracy", "silhouette_label", "ari", "nmi"} <= set(metrics)
    test = (adata.obs["scdlkit_split"] == "test").to_numpy()
    train = (adata.obs["scdlkit_split"] == "train").to_numpy()
    assert metrics["n_cells"] == test.sum() == 105
    latent, labels = adata.obsm["X_scdlkit"], adata.obs["bulk_labels"].to_numpy()
    expected = knn_accuracy(
        latent[test], labels[test], reference_latent=latent[train], reference_labels=labels[train]
    )
    assert metrics["knn_accuracy"] == pytest.approx(expected)
    assert adata.uns["scdlkit"]["evaluate_params"]["split"] == "test cells"

    adata.write_h5ad(tmp_path / "evaluated.h5ad")
    back = ad.read_h5ad(tmp_path / "evaluated.h5ad")
    for name, value in metrics.items():
        assert back.uns["scdlkit"]["metrics"][name] == pytest.approx(value)

    evaluate(adata, split=None, metrics="representation", clustering="kmeans")
    assert adata.uns["scdlkit"]["metrics"]["n_cells"] == 700
    assert "mse" not in adata.uns["scdlkit"]["metrics"]


def test_tl_evaluate_classification_run_survives_h5ad(fitted_pbmc, tmp_path):
    adata = fitted_pbmc.copy()
    evaluate(adata, key="clf")
    metrics = adata.uns["clf"]["metrics"]
    assert {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_ovr"} <= set(metrics)
    assert list(metrics["classes"]) == list(adata.obs["bulk_labels"].cat.categories)
    assert metrics["confusion_matrix"].sum() == metrics["n_cells"] == 105
    adata.write_h5ad(tmp_path / "clf.h5ad")
    back = ad.read_h5ad(tmp_path / "clf.h5ad").uns["clf"]["metrics"]
    np.testing.assert_array_equal(back["confusion_matrix"], metrics["confusion_matrix"])
    np.testing.assert_allclose(back["per_class"]["f1"], metrics["per_class"]["f1"])
    assert list(back["classes"]) == list(metrics["classes"])


def test_tl_evaluate_copy_and_query_without_split(fitted_pbmc, unchanged):
    adata = fitted_pbmc.copy()
    check = unchanged(adata)
    copied = evaluate(adata, copy=True, clustering="kmeans")
    check()
    assert "metrics" in copied.uns["scdlkit"]

    query = adata[:80].copy()
    del query.obs["scdlkit_split"]
    evaluate(query, clustering="kmeans")  # split="auto": every cell
    assert query.uns["scdlkit"]["metrics"]["n_cells"] == 80
    with pytest.raises(MissingKeyError, match="scdlkit_split"):
        evaluate(query, split="test")


def test_tl_evaluate_errors(fitted_pbmc, unchanged):
    adata = fitted_pbmc.copy()
    check = unchanged(adata)
    with pytest.raises(MissingKeyError, match="tl.fit"):
        evaluate(adata, key="nothing")
    with pytest.raises(ValueError, match="split must be"):
        evaluate(adata, split="holdout")
    with pytest.raises(ValueError, match="Unknown metrics"):
        evaluate(adata, metrics="speed")
    with pytest.raises(MissingKeyError, match="not_a_column"):
        evaluate(adata, batch_key="not_a_column")
    with pytest.raises(ValueError, match="Unknown clustering"):
        evaluate(adata, clustering="louvain")
    check()
    bare = adata.copy()
    del bare.obsm["X_scdlkit"]
    with pytest.raises(MissingKeyError, match="tl.predict"):
        evaluate(bare)
    no_labels = adata.copy()
    no_labels.uns["scdlkit"] = {k: v for k, v in adata.uns["clf"].items() if k != "label_key"}
    no_labels.uns["scdlkit"]["params"] = {"model": "mlp_classifier"}
    with pytest.raises(ValueError, match="label_key"):
        evaluate(no_labels, metrics="classification")


def test_tl_evaluate_batch_metrics_and_mudata_modality(small_mudata, tmp_path):
    scdlkit.tl.fit(
        small_mudata, "autoencoder", mod="rna", label_key="cell_type", batch_key=None,
        log1p=True, epochs=2, batch_size=16, device="cpu", checkpoint_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    scdlkit.tl.predict(small_mudata, device="cpu")
    rna = small_mudata.mod["rna"]
    rna.obs["lane"] = pd.Categorical(np.tile(["l1", "l2"], rna.n_obs // 2))
    evaluate(small_mudata, batch_key="lane", split=None, clustering="kmeans")
    metrics = rna.uns["scdlkit"]["metrics"]
    assert {"batch_silhouette", "ilisi", "knn_accuracy", "mse"} <= set(metrics)
    assert 1.0 <= metrics["ilisi"] <= 2.0
    assert "metrics" not in small_mudata.uns.get("scdlkit", {})


def test_leiden_without_igraph_says_what_to_do(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "igraph" else real(name, *a)
    )
    with pytest.raises(ImportError, match="clustering='kmeans'"):
        cluster_labels(np.zeros((5, 2)), method="leiden")
