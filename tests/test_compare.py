import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import scdlkit
from scdlkit._errors import MissingKeyError
from scdlkit.evaluation import COMPARISON_COLUMNS
from scdlkit.pl._compare import compare
from scdlkit.workflows import TaskRunner, compare_models

FAST = {"device": "cpu", "epochs": 3, "batch_size": 128, "clustering": "kmeans"}
REPRESENTATION = {"knn_accuracy", "silhouette_label", "ari", "nmi", "mse", "mae"}
REPRESENTATION |= {"pearson_cell", "spearman_cell", "pearson_gene", "spearman_gene"}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def representation_table():
    adata = scdlkit.datasets.pbmc68k_reduced()
    models = {"autoencoder": {}, "vae": {}, "vae (latent 8)": {"model": "vae", "latent_dim": 8}}
    return compare_models(adata, models, label_key="bulk_labels", use_raw=True, **FAST)


def test_representation_table_has_a_row_per_model_and_metric(representation_table):
    table = representation_table
    assert list(table.columns) == ["model", "baseline", "metric", "value", "seconds", "parameters"]
    assert tuple(table.columns) == COMPARISON_COLUMNS
    models = ["autoencoder", "vae", "vae (latent 8)", "PCA-50 (baseline)"]
    assert list(dict.fromkeys(table["model"])) == models
    for model in models:
        rows = table[table["model"] == model]
        assert set(rows["metric"]) == REPRESENTATION and len(rows) == len(REPRESENTATION)
        assert rows["seconds"].nunique() == 1 and rows["parameters"].nunique() == 1
    assert table.groupby("model")["baseline"].first().to_dict() == {
        "autoencoder": False, "vae": False, "vae (latent 8)": False, "PCA-50 (baseline)": True,
    }  # fmt: skip
    assert table.loc[table["model"] == "PCA-50 (baseline)", "parameters"].iloc[0] == 765 * 51
    wide = table.pivot(index="model", columns="metric", values="value")
    assert wide.notna().all().all()
    assert (wide["knn_accuracy"].between(0, 1)).all()


def test_a_model_row_is_what_task_runner_scores(representation_table):
    # one training path: the same settings through TaskRunner give the same model and metrics
    adata = scdlkit.datasets.pbmc68k_reduced()
    runner = TaskRunner(
        "autoencoder", label_key="bulk_labels", use_raw=True, device="cpu", epochs=3,
        batch_size=128, seed=42,
    ).fit(adata)  # fmt: skip
    metrics = runner.evaluate(clustering="kmeans")
    rows = representation_table[representation_table["model"] == "autoencoder"]
    got = dict(zip(rows["metric"], rows["value"], strict=True))
    assert got == pytest.approx({name: metrics[name] for name in got})
    assert rows["parameters"].iloc[0] == runner.n_parameters_


def test_models_share_one_split(representation_table):
    # the baseline and the models are scored on the same 105 test cells of one split
    adata = scdlkit.datasets.pbmc68k_reduced()
    prepared = scdlkit.prepare_data(adata, label_key="bulk_labels", use_raw=True, seed=42)
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    pca = PCA(50, random_state=42).fit(prepared.train.to_numpy())
    knn = KNeighborsClassifier(15).fit(pca.transform(prepared.train.to_numpy()), prepared.train.y)
    expected = knn.score(pca.transform(prepared.test.to_numpy()), prepared.test.y)
    rows = representation_table
    got = rows[(rows["model"] == "PCA-50 (baseline)") & (rows["metric"] == "knn_accuracy")]
    assert got["value"].item() == pytest.approx(expected)


def test_classification_with_logistic_regression_baseline():
    adata = scdlkit.datasets.synthetic_counts(300, 120, n_types=3, n_batches=2, seed=0)
    table = compare_models(
        adata, ["mlp_classifier"], task="classification", label_key="cell_type",
        batch_key="batch", normalize=True, log1p=True, seed=1, **FAST,
    )  # fmt: skip
    expected = {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_ovr"}
    for model in ("mlp_classifier", "logistic regression (baseline)"):
        assert set(table.loc[table["model"] == model, "metric"]) == expected
    baseline = table[table["model"] == "logistic regression (baseline)"]
    assert baseline["parameters"].iloc[0] == 3 * 120 + 3
    assert baseline["value"].min() > 0.9  # separable synthetic types


def test_batch_metrics_and_no_baselines(synthetic):
    # any DataSpec option (target_sum) and any Trainer option (weight_decay) is shared
    table = compare_models(
        synthetic, ["autoencoder"], label_key="cell_type", batch_key="batch", log1p=True,
        normalize=True, target_sum=1e3, weight_decay=1e-4, baselines=False,
        metrics="representation", **FAST,
    )  # fmt: skip
    assert set(table["model"]) == {"autoencoder"}
    assert {"batch_silhouette", "ilisi", "knn_accuracy"} <= set(table["metric"])
    assert "mse" not in set(table["metric"])


def test_compare_models_validates_before_training(pbmc):
    with pytest.raises(ValueError, match="Unknown model 'vea'"):
        compare_models(pbmc, ["vae", "vea"])
    with pytest.raises(ValueError, match="does not support the 'classification' task"):
        compare_models(pbmc, ["vae"], task="classification", label_key="bulk_labels")
    with pytest.raises(ValueError, match="needs label_key"):
        compare_models(pbmc, ["mlp_classifier"], task="classification")
    with pytest.raises(ValueError, match="twice"):
        compare_models(pbmc, ["vae", "vae"])
    with pytest.raises(ValueError, match="empty"):
        compare_models(pbmc, [])
    with pytest.raises(ValueError, match="unexpected option"):
        compare_models(pbmc, ["vae"], epoch=3)
    with pytest.raises(TypeError, match="dict of TaskRunner options"):
        compare_models(pbmc, {"vae": 3})
    with pytest.raises(ValueError, match="sets the data option.*'use_hvg'.*compare_models itself"):
        compare_models(pbmc, {"vae": {"use_hvg": True}})
    with pytest.raises(ValueError, match="Pass epochs to TaskRunner itself"):
        compare_models(pbmc, ["vae"], trainer_kwargs={"epochs": 3})
    with pytest.raises(ValueError, match="one task"):
        compare_models(
            pbmc,
            {"vae": {}, "clf": {"model": "mlp_classifier", "task": "classification"}},
            label_key="bulk_labels",
        )


def test_pl_compare(representation_table):
    axes = compare(representation_table, show=False)
    titles = [ax.get_title() for ax in axes]
    assert titles[:4] == ["knn_accuracy", "silhouette_label", "ari", "nmi"]
    fig = compare(
        representation_table, metrics="mse", models=["vae", "PCA-50 (baseline)"], return_fig=True
    )
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["vae", "PCA-50 (baseline)"]
    assert ax.patches[1].get_hatch() == "//"  # the baseline is hatched


def test_pl_compare_aggregates_seeds_and_validates(representation_table, tmp_path):
    two_seeds = pd.concat(
        [representation_table, representation_table.assign(value=lambda f: f["value"] / 2)]
    )
    (ax,) = compare(two_seeds, metrics="knn_accuracy", show=False)
    knn = representation_table[representation_table["metric"] == "knn_accuracy"]
    np.testing.assert_allclose([p.get_width() for p in ax.patches], knn["value"] * 0.75)
    compare(two_seeds, metrics=["ari"], save=tmp_path / "compare.png", show=False)
    assert (tmp_path / "compare.png").is_file()
    with pytest.raises(MissingKeyError, match="lacks the column"):
        compare(representation_table.drop(columns="metric"))
    with pytest.raises(MissingKeyError, match="not in results"):
        compare(representation_table, metrics="speed")
    with pytest.raises(MissingKeyError, match="not in results"):
        compare(representation_table, models=["scvi"])
    with pytest.raises(ValueError, match="empty"):
        compare(representation_table.iloc[:0])
