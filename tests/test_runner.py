import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import scdlkit
from scdlkit._errors import MissingKeyError
from scdlkit.runner import TaskRunner

FAST = {"device": "cpu", "epochs": 4, "batch_size": 128}


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
    assert runner.encode(pbmc_data).shape == (700, 32)
    assert runner.reconstruct(pbmc_data).shape == (700, 765)
    np.testing.assert_array_equal(runner.predict(pbmc_data), runner.reconstruct(pbmc_data))
    assert len(runner.history_) == runner.trainer_.epochs_run == 4
    assert runner.n_parameters_ > 0 and runner.fit_seconds_ > 0
    assert (runner.checkpoint_ / "config.json").is_file()

    metrics = runner.evaluate(clustering="kmeans")
    assert metrics is runner.metrics_
    assert metrics["n_cells"] == 105 and metrics["evaluated"] == "test split"
    assert {"mse", "pearson_cell", "knn_accuracy", "silhouette_label", "ari", "nmi"} <= set(metrics)
    assert 0.3 < metrics["knn_accuracy"] <= 1.0

    assert isinstance(runner.plot_losses(show=False), Axes)
    assert len(runner.plot_losses(components=True, show=False)) == 3  # loss, reconstruction, kl
    assert isinstance(runner.plot_latent(method="pca", show=False), Axes)
    assert isinstance(runner.plot_latent(method="latent", color="louvain", show=False), Axes)
    axes = runner.plot_reconstruction(genes=["CST3", "NKG7"], show=False)
    assert [a.get_title().splitlines()[0] for a in axes] == ["CST3", "NKG7"]
    assert isinstance(runner.plot_reconstruction(n_genes=1, show=False), Axes)
    check()  # the runner never writes into the data


def test_reconstruction_flow_and_evaluate_on_new_data(pbmc_data):
    runner = TaskRunner("autoencoder", "reconstruction", use_raw=True, latent_dim=8, **FAST).fit(
        pbmc_data
    )
    assert runner.task == "reconstruction"
    assert runner.encode(pbmc_data).shape == (700, 8)
    metrics = runner.evaluate(clustering="kmeans")
    assert "mse" in metrics and "knn_accuracy" not in metrics  # no label_key
    query = pbmc_data[:60, ::-1].copy()  # genes matched by name
    np.testing.assert_allclose(
        runner.encode(query), runner.encode(pbmc_data)[:60], rtol=1e-5, atol=1e-5
    )
    on_query = runner.evaluate(query)
    assert on_query["n_cells"] == 60 and on_query["evaluated"] == "all cells"


def test_classification_flow(classifier, pbmc_data):
    labels = classifier.predict(pbmc_data)
    assert isinstance(labels, pd.Categorical)
    assert list(labels.categories) == classifier.classes_
    assert classifier.classes_ == list(pbmc_data.obs["bulk_labels"].cat.categories)
    probabilities = classifier.predict_proba(pbmc_data)
    assert probabilities.shape == (700, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert (probabilities.idxmax(axis=1).to_numpy() == np.asarray(labels)).all()
    metrics = classifier.evaluate()
    assert {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_ovr"} <= set(metrics)
    assert metrics["confusion_matrix"].shape == (10, 10)
    assert metrics["accuracy"] > 0.5
    assert isinstance(classifier.plot_confusion_matrix(show=False), Axes)
    assert isinstance(classifier.plot_confusion_matrix(pbmc_data, normalize=None, show=False), Axes)
    assert isinstance(classifier.plot_latent(method="pca", show=False), Axes)


def test_save_load_round_trip(vae_runner, classifier, pbmc_data, tmp_path):
    vae_runner.evaluate(clustering="kmeans")
    path = vae_runner.save(tmp_path / "vae")
    assert (path / "runner.json").is_file() and (path / "checkpoint" / "config.json").is_file()
    loaded = TaskRunner.load(path, device="cpu")
    assert loaded.is_fitted and loaded.get_params() == {**vae_runner.get_params(), "device": "cpu"}
    np.testing.assert_allclose(loaded.encode(pbmc_data), vae_runner.encode(pbmc_data), atol=1e-6)
    assert loaded.metrics_["knn_accuracy"] == vae_runner.metrics_["knn_accuracy"]
    assert isinstance(loaded.plot_losses(show=False), Axes)
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
    np.testing.assert_array_equal(
        back.metrics_["confusion_matrix"], classifier.metrics_["confusion_matrix"]
    )
    assert json.loads((path / "runner.json").read_text())["format"] == "scdlkit.TaskRunner"

    with pytest.raises(FileExistsError, match="overwrite=True"):
        classifier.save(path)
    classifier.save(path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="not a saved TaskRunner"):
        TaskRunner.load(tmp_path / "nothing")


def test_save_report(classifier, vae_runner, tmp_path):
    report = classifier.save_report(tmp_path / "clf", latent_method="pca")
    folder = report.parent
    expected = {"report.md", "metrics.csv", "per_class.csv", "confusion_matrix.csv"}
    expected |= {"losses.png", "latent.png", "confusion_matrix.png"}
    assert expected <= {p.name for p in folder.iterdir()}
    table = pd.read_csv(folder / "metrics.csv")
    assert list(table.columns) == ["metric", "value"] and "f1_macro" in set(table["metric"])
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
    assert runner.encode(small_mudata).shape == (40, 4)
    assert runner.encode(small_mudata.mod["rna"]).shape == (40, 4)
    metrics = runner.evaluate(clustering="kmeans")
    assert metrics["n_cells"] == 6 and "knn_accuracy" in metrics
    assert isinstance(runner.plot_latent(method="latent", color="donor", show=False), Axes)
    assert isinstance(runner.plot_reconstruction(genes="gene3", show=False), Axes)
    check()
