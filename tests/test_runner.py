import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import scdlkit
from scdlkit._errors import MissingKeyError
from scdlkit.data.spec import DataSpec
from scdlkit.evaluation import knn_accuracy
from scdlkit.workflows import TaskRunner

FAST = {"device": "cpu", "epochs": 4, "batch_size": 128}
OLD_RUNNER = Path(__file__).parent / "data" / "runner_v0_1_0"
OLD_CELLS = Path(__file__).parent / "data" / "bundle_v0_1_0" / "cells.h5ad"


def _line(ax, label):
    (line,) = [line for line in ax.get_lines() if line.get_label() == label]
    return np.asarray(line.get_xdata()), np.asarray(line.get_ydata())


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def pbmc_data():
    return scdlkit.datasets.pbmc68k_reduced()


@pytest.fixture(scope="module")
def vae_runner(pbmc_data):
    return TaskRunner("vae", label_key="bulk_labels", use_raw=True, **FAST).fit(pbmc_data)


@pytest.fixture(scope="module")
def classifier(pbmc_data):
    return TaskRunner(
        "mlp_classifier", "classification", label_key="bulk_labels", use_raw=True,
        **{**FAST, "epochs": 15, "batch_size": 64},
    ).fit(pbmc_data)  # fmt: skip


def test_representation_flow(vae_runner, pbmc_data, unchanged, tmp_path):
    check = unchanged(pbmc_data)
    runner = vae_runner
    assert runner.is_fitted and runner.task == "representation"
    latent = runner.encode(pbmc_data)
    assert latent.shape == (700, 32) and latent.dtype == np.float32
    assert np.isfinite(latent).all() and latent.std(axis=0).min() > 0
    # the runner's latent is what tl.predict writes with the runner's bundle
    written = pbmc_data.copy()
    scdlkit.tl.predict(written, checkpoint=runner.checkpoint_, device="cpu")
    np.testing.assert_array_equal(written.obsm["X_scdlkit"], latent)
    reconstruction = runner.reconstruct(pbmc_data)
    assert reconstruction.shape == (700, 765)
    np.testing.assert_array_equal(written.layers["scdlkit_reconstruction"], reconstruction)
    observed = pbmc_data.raw.X.toarray()  # use_raw without transforms: the model input itself
    assert np.corrcoef(observed.ravel(), reconstruction.ravel())[0, 1] > 0.4
    np.testing.assert_array_equal(runner.predict(pbmc_data), reconstruction)
    assert len(runner.history_) == runner.trainer_.epochs_run == 4
    assert runner.n_parameters_ == sum(p.numel() for p in runner.trainer_.model.parameters())
    assert runner.fit_seconds_ > 0
    assert (runner.checkpoint_ / "config.json").is_file()

    metrics = runner.evaluate(clustering="kmeans")
    assert metrics is runner.metrics_
    assert metrics["n_cells"] == 105 and metrics["evaluated"] == "test split"
    assert {"mse", "pearson_cell", "knn_accuracy", "silhouette_label", "ari", "nmi"} <= set(metrics)
    for name in ("knn_accuracy", "ari", "nmi"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert -1.0 <= metrics["silhouette_label"] <= 1.0 and metrics["mse"] > 0
    test = runner.prepared_.split == "test"
    majority = pbmc_data.obs["bulk_labels"][test].value_counts(normalize=True).max()
    assert metrics["knn_accuracy"] > majority + 0.2  # far above always guessing the commonest type

    ax = runner.plot_losses(show=False)
    epochs, train_loss = _line(ax, "train")
    np.testing.assert_allclose(epochs, runner.history_["epoch"])
    np.testing.assert_allclose(train_loss, runner.history_["train_loss"])
    assert ax.get_title() == "vae (TaskRunner)"
    panels = runner.plot_losses(components=True, show=False)
    assert [panel.get_title() for panel in panels] == ["loss", "reconstruction", "kl"]
    ax = runner.plot_latent(method="latent", color="louvain", show=False)
    offsets = np.asarray(ax.collections[0].get_offsets())
    np.testing.assert_allclose(np.sort(offsets, axis=0), np.sort(latent[:, :2], axis=0), rtol=1e-6)
    assert isinstance(runner.plot_latent(method="pca", show=False), Axes)
    axes = runner.plot_reconstruction(genes=["CST3", "NKG7"], show=False)
    assert [a.get_title().splitlines()[0] for a in axes] == ["CST3", "NKG7"]
    assert len(axes[0].collections[0].get_offsets()) == 105  # the held-out test cells
    assert isinstance(runner.plot_reconstruction(n_genes=1, show=False), Axes)
    check()  # the runner never writes into the data


def test_evaluate_scores_with_the_one_knn_function(vae_runner, pbmc_data):
    metrics = vae_runner.evaluate(clustering="kmeans")
    split = vae_runner.prepared_.split
    latent = vae_runner.encode(pbmc_data)
    labels = pbmc_data.obs["bulk_labels"].astype(str).to_numpy()
    train, test = split == "train", split == "test"
    expected = knn_accuracy(
        latent[test], labels[test], reference_latent=latent[train], reference_labels=labels[train]
    )
    assert metrics["knn_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_settings_become_a_data_spec_and_trainer_options():
    runner = TaskRunner(
        "vae", label_key="bulk_labels", use_raw=True, log1p=True, epochs=7, lr=3e-3,
        trainer_kwargs={"weight_decay": 0.01}, seed=5,
    )  # fmt: skip
    assert runner.spec == DataSpec(label_key="bulk_labels", use_raw=True, log1p=True)
    assert (runner.options.epochs, runner.options.lr, runner.options.seed) == (7, 3e-3, 5)
    assert runner.options.weight_decay == 0.01 and runner.options.progress is False
    params = runner.get_params()
    assert params["trainer_kwargs"] == {"weight_decay": 0.01}
    assert (params["epochs"], params["seed"], params["log1p"]) == (7, 5, True)
    assert TaskRunner(**params).get_params() == params
    json.dumps(params)  # JSON-able, as save() stores it


def test_reconstruction_flow_and_evaluate_on_new_data(pbmc_data):
    runner = TaskRunner("autoencoder", "reconstruction", use_raw=True, latent_dim=8, **FAST).fit(
        pbmc_data
    )
    assert runner.task == "reconstruction"
    latent = runner.encode(pbmc_data)
    assert latent.shape == (700, 8) and np.isfinite(latent).all() and latent.std() > 0
    metrics = runner.evaluate(clustering="kmeans")
    assert "mse" in metrics and "knn_accuracy" not in metrics  # no label_key
    test = runner.prepared_.split == "test"
    observed = pbmc_data.raw.X.toarray()[test]
    expected_mse = np.mean((runner.reconstruct(pbmc_data)[test] - observed) ** 2)
    assert metrics["mse"] == pytest.approx(expected_mse, rel=1e-5)
    query = pbmc_data[:60, ::-1].copy()  # genes matched by name
    np.testing.assert_allclose(runner.encode(query), latent[:60], rtol=1e-5, atol=1e-5)
    on_query = runner.evaluate(query)
    assert on_query["n_cells"] == 60 and on_query["evaluated"] == "all cells"


def test_classification_flow(classifier, pbmc_data):
    labels = classifier.predict(pbmc_data)
    assert isinstance(labels, pd.Categorical)
    assert list(labels.categories) == classifier.classes_
    assert classifier.classes_ == list(pbmc_data.obs["bulk_labels"].cat.categories)
    probabilities = classifier.predict_proba(pbmc_data)
    assert probabilities.shape == (700, 10)
    np.testing.assert_allclose(
        probabilities.sum(axis=1), 1.0, rtol=1e-6
    )  # float32, like tl.predict
    assert (probabilities.idxmax(axis=1).to_numpy() == np.asarray(labels)).all()
    # the same probabilities and labels as tl.predict with the classifier's bundle
    written = pbmc_data.copy()
    scdlkit.tl.predict(written, checkpoint=classifier.checkpoint_, device="cpu")
    np.testing.assert_array_equal(written.obsm["scdlkit_probabilities"], probabilities.to_numpy())
    assert list(written.obs["scdlkit_prediction"].astype(str)) == list(np.asarray(labels))
    metrics = classifier.evaluate()
    assert {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_ovr"} <= set(metrics)
    for name in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_ovr"):
        assert 0.0 <= metrics[name] <= 1.0, name
    test = classifier.prepared_.split == "test"
    truth = pbmc_data.obs["bulk_labels"].astype(str).to_numpy()[test]
    assert metrics["accuracy"] == pytest.approx(np.mean(np.asarray(labels)[test] == truth))
    assert metrics["confusion_matrix"].shape == (10, 10)
    assert metrics["confusion_matrix"].sum() == metrics["n_cells"] == 105
    majority = pd.Series(truth).value_counts(normalize=True).max()
    assert metrics["accuracy"] > majority + 0.2
    ax = classifier.plot_confusion_matrix(pbmc_data, normalize=None, show=False)
    counts = np.asarray(ax.images[0].get_array())
    assert counts.sum() == 700  # every cell, counted once
    ax = classifier.plot_confusion_matrix(show=False)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()).sum(axis=1)[
        metrics["confusion_matrix"].sum(axis=1) > 0], 1.0)  # fmt: skip
    assert isinstance(classifier.plot_latent(method="pca", show=False), Axes)


def test_save_load_round_trip(vae_runner, classifier, pbmc_data, tmp_path):
    vae_runner.evaluate(clustering="kmeans")
    path = vae_runner.save(tmp_path / "vae")
    assert (path / "runner.json").is_file() and (path / "checkpoint" / "config.json").is_file()
    loaded = TaskRunner.load(path, device="cpu")
    assert loaded.is_fitted and loaded.get_params() == {**vae_runner.get_params(), "device": "cpu"}
    np.testing.assert_array_equal(loaded.encode(pbmc_data), vae_runner.encode(pbmc_data))
    np.testing.assert_array_equal(loaded.reconstruct(pbmc_data), vae_runner.reconstruct(pbmc_data))
    assert loaded.metrics_["knn_accuracy"] == vae_runner.metrics_["knn_accuracy"]
    assert loaded.n_parameters_ == vae_runner.n_parameters_
    columns = ["epoch", "train_loss", "val_loss"]
    pd.testing.assert_frame_equal(loaded.history_[columns], vae_runner.history_[columns])
    _, losses = _line(loaded.plot_losses(show=False), "val")
    np.testing.assert_allclose(losses, vae_runner.history_["val_loss"])
    assert isinstance(loaded.plot_latent(pbmc_data, method="latent", show=False), Axes)
    assert loaded.evaluate(pbmc_data, clustering="kmeans")["n_cells"] == 700
    with pytest.raises(ValueError, match="pass the cells"):
        loaded.evaluate()
    with pytest.raises(ValueError, match="pass adata="):
        loaded.plot_reconstruction()

    classifier.evaluate()
    path = classifier.save(tmp_path / "clf")
    back = TaskRunner.load(path, device="cpu")
    assert list(back.predict(pbmc_data)) == list(classifier.predict(pbmc_data))
    assert back.classes_ == classifier.classes_
    pd.testing.assert_frame_equal(
        back.predict_proba(pbmc_data), classifier.predict_proba(pbmc_data)
    )
    np.testing.assert_array_equal(
        back.metrics_["confusion_matrix"], classifier.metrics_["confusion_matrix"]
    )
    assert json.loads((path / "runner.json").read_text())["format"] == "scdlkit.TaskRunner"

    with pytest.raises(FileExistsError, match="overwrite=True"):
        classifier.save(path)
    classifier.save(path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="not a saved TaskRunner"):
        TaskRunner.load(tmp_path / "nothing")


def test_runner_folder_of_scdlkit_0_1_0_loads():
    # written by scdlkit 0.1.0 (before the one-pipeline refactor) with runner.save()
    import anndata as ad

    cells = ad.read_h5ad(OLD_CELLS)
    runner = TaskRunner.load(OLD_RUNNER, device="cpu")
    stored = json.loads((OLD_RUNNER / "runner.json").read_text())
    assert runner.get_params() == stored["params"]
    assert runner.spec.label_key == "cell_type" and runner.spec.normalize and runner.spec.log1p
    np.testing.assert_allclose(
        runner.encode(cells), np.load(OLD_RUNNER / "latent.npy"), rtol=1e-5, atol=1e-6
    )
    assert runner.metrics_["knn_accuracy"] == stored["metrics"]["knn_accuracy"]
    assert runner.history_["epoch"].tolist() == [1, 2, 3]
    _, losses = _line(runner.plot_losses(show=False), "train")
    np.testing.assert_allclose(losses, runner.history_["train_loss"])
    metrics = runner.evaluate(cells, clustering="kmeans")
    assert metrics["n_cells"] == 120 and 0.0 <= metrics["knn_accuracy"] <= 1.0


def test_save_report(classifier, vae_runner, tmp_path):
    report = classifier.save_report(tmp_path / "clf", latent_method="pca")
    folder = report.parent
    expected = {"report.md", "metrics.csv", "per_class.csv", "confusion_matrix.csv"}
    expected |= {"losses.png", "latent.png", "confusion_matrix.png"}
    assert expected <= {p.name for p in folder.iterdir()}
    table = pd.read_csv(folder / "metrics.csv")
    assert list(table.columns) == ["metric", "value"] and "f1_macro" in set(table["metric"])
    values = dict(zip(table["metric"], table["value"], strict=True))
    assert values["f1_macro"] == pytest.approx(classifier.metrics_["f1_macro"])
    text = report.read_text()
    assert "| f1_macro |" in text and "![" in text and "bulk_labels" in text

    report = vae_runner.save_report(tmp_path / "vae", latent_method="latent")
    assert {"reconstruction.png", "latent.png"} <= {p.name for p in report.parent.iterdir()}


def test_output_dir_holds_the_checkpoint(pbmc_data, tmp_path):
    runner = TaskRunner(
        "vae", use_raw=True, output_dir=tmp_path / "run", **{**FAST, "epochs": 1}
    ).fit(pbmc_data)
    assert runner.checkpoint_ == tmp_path / "run" / "checkpoint"
    assert (runner.checkpoint_ / "config.json").is_file()


def test_fit_is_reproducible(pbmc_data):
    options = {"use_raw": True, **FAST, "epochs": 2, "seed": 3}
    first = TaskRunner("vae", **options).fit(pbmc_data).encode(pbmc_data)
    second = TaskRunner("vae", **options).fit(pbmc_data).encode(pbmc_data)
    np.testing.assert_array_equal(first, second)


METHODS = [
    ("encode", True),
    ("reconstruct", True),
    ("predict", True),
    ("predict_proba", True),
    ("evaluate", False),
    ("plot_losses", False),
    ("plot_latent", False),
    ("plot_reconstruction", False),
    ("plot_confusion_matrix", False),
    ("save_report", "path"),
    ("save", "path"),
]


@pytest.mark.parametrize(("method", "argument"), METHODS, ids=[m for m, _ in METHODS])
def test_unfitted_runner_raises_runtime_error(method, argument, pbmc_data, tmp_path):
    runner = TaskRunner("vae")
    args = {True: (pbmc_data,), False: (), "path": (tmp_path / "out",)}[argument]
    with pytest.raises(RuntimeError, match=r"not fitted yet: call runner.fit\(adata\)"):
        getattr(runner, method)(*args)


def test_unfitted_attributes_raise_runtime_error():
    runner = TaskRunner("vae")
    assert not runner.is_fitted and "not fitted" in repr(runner)
    for name in ("history_", "classes_", "n_parameters_"):
        with pytest.raises(RuntimeError, match="not fitted"):
            getattr(runner, name)


def test_task_mismatch_errors(vae_runner, classifier, pbmc_data):
    with pytest.raises(ValueError, match="reconstructs its input"):
        classifier.reconstruct(pbmc_data)
    with pytest.raises(ValueError, match="reconstructs its input"):
        classifier.plot_reconstruction()
    with pytest.raises(ValueError, match="classification runner"):
        vae_runner.plot_confusion_matrix()
    with pytest.raises(ValueError, match="classification runner"):
        vae_runner.predict_proba(pbmc_data)
    with pytest.raises(ValueError, match="without label_key"):
        _ = TaskRunner("vae", use_raw=True, **{**FAST, "epochs": 1}).fit(pbmc_data).classes_
    with pytest.raises(ValueError, match="Unknown method"):
        vae_runner.plot_latent(method="diffmap")
    with pytest.raises(MissingKeyError, match="no_such_column"):
        vae_runner.plot_latent(method="latent", color="no_such_column")
    unlabeled = pbmc_data[:50].copy()
    del unlabeled.obs["bulk_labels"]
    with pytest.raises(ValueError, match="true labels"):
        classifier.evaluate(unlabeled)


def test_construction_errors():
    with pytest.raises(TypeError, match="registry name"):
        TaskRunner(object())
    with pytest.raises(ValueError, match="Unknown model 'vea'"):
        TaskRunner("vea")
    with pytest.raises(ValueError, match="does not support the 'classification' task"):
        TaskRunner("vae", "classification", label_key="bulk_labels")
    with pytest.raises(ValueError, match="needs label_key"):
        TaskRunner("mlp_classifier", "classification")
    with pytest.raises(ValueError, match="disagree"):
        TaskRunner("vae", latent_dim=8, model_kwargs={"latent_dim": 16})
    with pytest.raises(ValueError, match="not in trainer_kwargs"):
        TaskRunner("vae", trainer_kwargs={"seed": 1})
    with pytest.raises(ValueError, match="Pass epochs to TaskRunner itself"):
        TaskRunner("vae", trainer_kwargs={"epochs": 3})
    with pytest.raises(TypeError, match="Unknown Trainer options 'weight_decy'"):
        TaskRunner("vae", trainer_kwargs={"weight_decy": 0.1})


def test_fit_errors_name_the_problem(pbmc_data):
    with pytest.raises(MissingKeyError, match="no_labels"):
        TaskRunner("vae", label_key="no_labels", **FAST).fit(pbmc_data)
    with pytest.raises(ValueError, match="unexpected option"):
        TaskRunner("vae", use_raw=True, model_kwargs={"depth": 3}, **FAST).fit(pbmc_data)
    single = pbmc_data[:40].copy()
    single.obs["one"] = "x"
    with pytest.raises(ValueError, match="single class"):
        TaskRunner("mlp_classifier", "classification", label_key="one", **FAST).fit(single)


@pytest.mark.slow
def test_plot_latent_umap(vae_runner):
    assert isinstance(vae_runner.plot_latent(show=False, return_fig=True), Figure)


def test_mudata_modality(small_mudata, unchanged):
    check = unchanged(small_mudata)
    runner = TaskRunner(
        "autoencoder", mod="rna", label_key="cell_type", log1p=True, latent_dim=4,
        device="cpu", epochs=2, batch_size=16,
    ).fit(small_mudata)  # fmt: skip
    latent = runner.encode(small_mudata)
    assert latent.shape == (40, 4) and np.isfinite(latent).all()
    np.testing.assert_array_equal(runner.encode(small_mudata.mod["rna"]), latent)
    metrics = runner.evaluate(clustering="kmeans")
    assert metrics["n_cells"] == 6 and "knn_accuracy" in metrics
    assert isinstance(runner.plot_latent(method="latent", color="donor", show=False), Axes)
    assert isinstance(runner.plot_reconstruction(genes="gene3", show=False), Axes)
    check()


def test_raw_counts_get_the_same_warning_as_tl_fit(synthetic):
    import io
    import sys

    import scanpy as sc

    from scdlkit.data.prepare import raw_counts_message

    log = io.StringIO()
    sc.settings.logfile = log
    try:
        TaskRunner("autoencoder", device="cpu", epochs=1, batch_size=64).fit(synthetic)
        assert raw_counts_message("adata.X") in log.getvalue()
        log.truncate(0)
        TaskRunner("autoencoder", normalize=True, log1p=True, device="cpu", epochs=1).fit(synthetic)
        assert "looks like raw counts" not in log.getvalue()
    finally:
        sc.settings.logfile = sys.stderr
