"""Annotation adaptation end to end: inspection, comparison, prediction, save/load, AnnData output."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import scdlkit
from scdlkit._errors import MissingKeyError
from scdlkit.foundation import (
    AnnotationRunner,
    LoRAConfig,
    adapt_annotation,
    inspect_annotation_data,
    load_scgpt,
)
from scdlkit.foundation.testing import make_tiny_checkpoint

STRATEGIES = ("frozen_probe", "head", "lora")


@pytest.fixture(scope="module")
def pbmc_small():
    adata = scdlkit.datasets.pbmc68k_reduced()
    keep = adata.obs["bulk_labels"].isin(["CD14+ Monocyte", "CD19+ B", "Dendritic", "CD56+ NK"])
    adata = adata[keep.to_numpy()].copy()
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, 200, replace=False))].copy()
    adata.obs["bulk_labels"] = adata.obs["bulk_labels"].cat.remove_unused_categories()
    return adata


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, pbmc_small):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), genes=pbmc_small.raw.var_names)


@pytest.fixture(scope="module")
def runner(pbmc_small, checkpoint, tmp_path_factory):
    return adapt_annotation(
        pbmc_small, label_key="bulk_labels", checkpoint=checkpoint, use_raw=True,
        strategies=STRATEGIES, strategy_configs={"head": {"epochs": 4}, "lora": LoRAConfig(epochs=2, rank=2)},
        batch_size=50, max_len=24, device="cpu", output_dir=tmp_path_factory.mktemp("out"),
    )  # fmt: skip


def test_comparison_table(runner):
    table = runner.comparison_
    assert table["strategy"].tolist() == list(STRATEGIES)
    for split in ("val", "test"):
        for metric in ("macro_f1", "accuracy", "balanced_accuracy", "auroc_ovr"):
            values = table[f"{split}_{metric}"]
            assert values.notna().all() and values.between(0, 1).all(), (split, metric)
    d, c = 16, 4
    assert table["trainable_parameters"].tolist()[:2] == [d * c + c, 2 * d + d * c + c]
    assert table["trainable_parameters"].iloc[2] == 2 * d + d * c + c + 2 * 2 * 2 * (d + d)
    assert (table["seconds"] > 0).all()
    assert sorted(table["rank"]) == [1, 2, 3]
    assert runner.best_strategy_ == table.loc[table["rank"] == 1, "strategy"].item()
    best = table.sort_values("rank").iloc[0]
    assert best["val_macro_f1"] == table["val_macro_f1"].max()
    assert runner.split_.value_counts().to_dict() == {"train": 140, "val": 30, "test": 30}
    assert (runner.output_dir / "comparison.csv").is_file()
    assert (runner.output_dir / "history_lora.csv").is_file()
    assert runner.histories_["frozen_probe"].empty and len(runner.histories_["head"]) >= 1


def test_predict_outputs(runner, pbmc_small):
    codes, labels, probabilities, latent = runner.predict(pbmc_small, strategy="lora")
    assert codes.shape == (200,) and probabilities.shape == (200, 4) and latent.shape == (200, 16)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(latent, axis=1), 1.0, rtol=1e-5)
    assert list(labels.categories) == list(pbmc_small.obs["bulk_labels"].cat.categories)
    np.testing.assert_array_equal(np.asarray(labels.codes), codes)
    with pytest.raises(ValueError, match="was not fitted"):
        runner.predict(pbmc_small, strategy="ia3")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_save_load_identical_predictions(runner, pbmc_small, checkpoint, tmp_path, strategy):
    path = runner.save(tmp_path / strategy, strategy=strategy)
    manifest = json.loads((path / "manifest.json").read_text())
    tensors = torch.load(path / "trainable.pt", weights_only=True)
    assert set(tensors) == set(manifest["trainable_tensors"])
    assert not any(k.startswith("backbone.encoder.") for k in tensors)  # base weights not copied
    assert (
        manifest["base_checkpoint"]["weights_sha256"] == runner.base_model.identity.weights_sha256
    )
    assert manifest["label_categories"] == list(runner.label_encoder_.categories)
    assert manifest["strategy_config"]["config_type"]
    loaded = AnnotationRunner.load(path, checkpoint=checkpoint, device="cpu")
    before = runner.predict(pbmc_small, strategy=strategy)
    after = loaded.predict(pbmc_small)
    np.testing.assert_array_equal(before.probabilities, after.probabilities)
    np.testing.assert_array_equal(before.latent, after.latent)
    assert loaded.best_strategy_ == strategy
    with pytest.raises(FileExistsError):
        runner.save(path, strategy=strategy)


def test_hash_mismatch_detected(runner, pbmc_small, tmp_path):
    path = runner.save(tmp_path / "saved")
    other = make_tiny_checkpoint(tmp_path / "other", genes=pbmc_small.raw.var_names, seed=9)
    with pytest.raises(ValueError, match=r"best_model\.pt has SHA-256"):
        AnnotationRunner.load(path, checkpoint=other)
    renamed = make_tiny_checkpoint(
        tmp_path / "renamed", genes=[*pbmc_small.raw.var_names[:-1], "OTHER"]
    )
    shutil.copy(f"{runner.base_model.identity.path}/best_model.pt", renamed / "best_model.pt")
    with pytest.raises(ValueError, match=r"vocab\.json has SHA-256"):
        AnnotationRunner.load(path, checkpoint=renamed)


def test_tampered_or_missing_saved_runner(runner, tmp_path, checkpoint):
    path = runner.save(tmp_path / "t", strategy="head")
    tensors = torch.load(path / "trainable.pt", weights_only=True)
    tensors["head.extra"] = torch.zeros(1)
    torch.save(tensors, path / "trainable.pt")
    with pytest.raises(ValueError, match="head.extra"):
        AnnotationRunner.load(path, checkpoint=checkpoint)
    with pytest.raises(FileNotFoundError, match="not a saved AnnotationRunner"):
        AnnotationRunner.load(tmp_path / "missing", checkpoint=checkpoint)


def test_annotate_adata_survives_h5ad(runner, pbmc_small, tmp_path):
    adata = pbmc_small.copy()
    runner.annotate_adata(adata, key_added="celltype")
    assert isinstance(adata.obs["celltype_prediction"].dtype, pd.CategoricalDtype)
    expected = runner.predict(pbmc_small)
    np.testing.assert_array_equal(
        adata.obs["celltype_prediction"].to_numpy(), np.asarray(expected.labels)
    )
    np.testing.assert_allclose(
        adata.obs["celltype_confidence"].to_numpy(), expected.probabilities.max(axis=1), rtol=1e-6
    )
    np.testing.assert_array_equal(adata.obsm["celltype_probabilities"], expected.probabilities)
    np.testing.assert_array_equal(adata.obsm["X_celltype"], expected.latent)
    record = adata.uns["celltype"]
    assert record["strategy"] == runner.best_strategy_
    assert record["embedding_key"] == "X_celltype"
    assert record["metrics"]["rank"] == 1.0
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_series_equal(
        back.obs["celltype_prediction"], adata.obs["celltype_prediction"]
    )
    pd.testing.assert_series_equal(
        back.obs["celltype_confidence"], adata.obs["celltype_confidence"]
    )
    np.testing.assert_array_equal(back.obsm["X_celltype"], adata.obsm["X_celltype"])
    assert list(back.uns["celltype"]["label_categories"]) == list(record["label_categories"])
    assert back.uns["celltype"]["base_checkpoint"] == record["base_checkpoint"]
    assert back.uns["celltype"]["params"]["max_len"] == 24
    assert back.uns["celltype"]["params"]["seed"] == 42
    copied = runner.annotate_adata(pbmc_small, copy=True)
    assert "scgpt_annotation_prediction" in copied.obs and "X_scgpt_annotation" in copied.obsm
    assert "scgpt_annotation_prediction" not in pbmc_small.obs


def test_annotate_adata_legacy_keys_warn_and_keep_their_layout(runner, pbmc_small):
    adata = pbmc_small.copy()
    with pytest.warns(FutureWarning, match="obs_key= is deprecated"):
        runner.annotate_adata(adata, obs_key="old")
    assert isinstance(adata.obs["old"].dtype, pd.CategoricalDtype)
    assert "old_confidence" in adata.obs and "old_probabilities" in adata.obsm
    assert "X_old" in adata.obsm and "old" in adata.uns
    with pytest.warns(FutureWarning, match="embedding_key= is deprecated"):
        runner.annotate_adata(adata, key_added="new", embedding_key="X_custom")
    np.testing.assert_array_equal(adata.obsm["X_custom"], adata.obsm["X_old"])
    assert "X_new" not in adata.obsm and adata.uns["new"]["embedding_key"] == "X_custom"
    with pytest.raises(ValueError, match="key_added"):
        runner.annotate_adata(adata, key_added="a/b")


def test_annotate_adata_replaces_an_earlier_annotation(runner, pbmc_small):
    adata = pbmc_small.copy()
    runner.annotate_adata(adata, key_added="cell", strategy="lora")
    adata.obsm["cell_logits"] = np.zeros((adata.n_obs, 2))  # a stale key the run owns
    runner.annotate_adata(adata, key_added="cell", strategy="head")
    assert adata.uns["cell"]["strategy"] == "head" and "cell_logits" not in adata.obsm
    np.testing.assert_array_equal(
        adata.obsm["cell_probabilities"], runner.predict(pbmc_small, strategy="head").probabilities
    )


def test_inspect_report(pbmc_small, checkpoint):
    report = inspect_annotation_data(
        pbmc_small, label_key="bulk_labels", checkpoint=checkpoint, use_raw=True
    )
    assert report.ok and report.gene_overlap == 1.0 and report.stratified
    assert report.class_counts.sum() == 200 and report.n_classes == 4
    assert set(report.split_counts.columns) == {"train", "val", "test"}
    assert "AnnotationDataReport" in repr(report) and report.summary()["ok"]
    scaled = inspect_annotation_data(pbmc_small, label_key="bulk_labels", checkpoint=checkpoint)
    assert not scaled.ok and any("negative" in p for p in scaled.problems)
    small = make_tiny_checkpoint(checkpoint.parent / "few", genes=pbmc_small.raw.var_names[:100])
    low = inspect_annotation_data(
        pbmc_small, label_key="bulk_labels", checkpoint=small, use_raw=True
    )
    assert not low.ok and any("vocabulary" in p for p in low.problems)
    with pytest.raises(MissingKeyError, match="nope"):
        inspect_annotation_data(pbmc_small, label_key="nope", checkpoint=checkpoint, use_raw=True)


def test_adapt_errors(pbmc_small, checkpoint):
    model = load_scgpt(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="negative"):
        adapt_annotation(pbmc_small, label_key="bulk_labels", checkpoint=model, max_len=16)
    one_class = pbmc_small.copy()
    one_class.obs["single"] = "T"
    with pytest.raises(ValueError, match="single class"):
        adapt_annotation(one_class, label_key="single", checkpoint=model, use_raw=True, max_len=16)
    missing = pbmc_small.copy()
    missing.obs["partial"] = missing.obs["bulk_labels"].astype(object)
    missing.obs.iloc[3, missing.obs.columns.get_loc("partial")] = np.nan
    with pytest.raises(ValueError, match="missing values"):
        adapt_annotation(missing, label_key="partial", checkpoint=model, use_raw=True, max_len=16)
    with pytest.raises(ValueError, match="val_size \\+ test_size"):
        adapt_annotation(
            pbmc_small, label_key="bulk_labels", checkpoint=model, val_size=0.5, test_size=0.5
        )
    with pytest.raises(ValueError, match="val_size=0"):
        adapt_annotation(pbmc_small, label_key="bulk_labels", checkpoint=model, val_size=0)
    with pytest.raises(ValueError, match="Unknown strategy"):
        adapt_annotation(
            pbmc_small, label_key="bulk_labels", checkpoint=model, strategies=("probe",)
        )
    with pytest.raises(FileNotFoundError):
        adapt_annotation(pbmc_small, label_key="bulk_labels", checkpoint=checkpoint.parent / "none")
    with pytest.raises(RuntimeError, match="not fitted"):
        AnnotationRunner(model, label_key="bulk_labels").predict(pbmc_small)


def test_comparison_metrics_match_the_evaluation_module(runner, pbmc_small):
    from scdlkit.evaluation import classification_metrics

    test = pbmc_small[runner.split_.to_numpy() == "test"].copy()
    row = runner.comparison_.set_index("strategy").loc["lora"]
    prediction = runner.predict(test, strategy="lora")
    classes = list(runner.label_encoder_.categories)
    expected = classification_metrics(
        test.obs["bulk_labels"].astype(str).to_numpy(),
        np.asarray(prediction.labels).astype(str),
        probabilities=prediction.probabilities,
        classes=classes,
    )
    assert row["test_accuracy"] == pytest.approx(expected["accuracy"])
    assert row["test_balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
    assert row["test_macro_f1"] == pytest.approx(expected["f1_macro"])
    assert row["test_auroc_ovr"] == pytest.approx(expected["auroc_ovr"], abs=1e-6)


def test_comparison_long_is_drawn_by_pl_compare(runner):
    long = runner.comparison_long()
    assert list(long.columns) == ["model", "baseline", "metric", "value", "seconds", "parameters"]
    assert len(long) == 4 * len(STRATEGIES) and not long["baseline"].any()
    table = runner.comparison_.set_index("strategy")
    lora = long[long["model"] == "lora"].set_index("metric")
    assert lora.loc["f1_macro", "value"] == table.loc["lora", "test_macro_f1"]
    assert lora.loc["auroc_ovr", "value"] == table.loc["lora", "test_auroc_ovr"]
    assert (lora["parameters"] == table.loc["lora", "trainable_parameters"]).all()
    val = runner.comparison_long(split="val").set_index(["model", "metric"])
    assert val.loc[("head", "accuracy"), "value"] == table.loc["head", "val_accuracy"]
    axes = scdlkit.pl.compare(long, show=False)
    assert [a.get_title() for a in axes] == [
        "accuracy",
        "balanced_accuracy",
        "f1_macro",
        "auroc_ovr",
    ]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == list(STRATEGIES)
    widths = [bar.get_width() for bar in axes[0].patches]
    np.testing.assert_allclose(widths, table.loc[list(STRATEGIES), "test_accuracy"])
    with pytest.raises(ValueError, match="split must be"):
        runner.comparison_long(split="train")
    with pytest.raises(RuntimeError, match="no comparison_"):
        AnnotationRunner(runner.base_model, label_key="bulk_labels").comparison_long()


def test_trained_strategies_use_their_trainer_options(runner):
    from scdlkit.foundation.build import strategy_options
    from scdlkit.foundation.strategies import (
        ADAPTATION_EPOCHS,
        ADAPTATION_PATIENCE,
        FULL_FINETUNE_EPOCHS,
        FullFinetuneConfig,
        HeadConfig,
    )

    assert (HeadConfig().epochs, HeadConfig().early_stopping_patience) == (15, 5)
    assert (ADAPTATION_EPOCHS, ADAPTATION_PATIENCE, FULL_FINETUNE_EPOCHS) == (15, 5, 10)
    options = strategy_options(FullFinetuneConfig(weight_decay=0.01), runner.options)
    assert (options.epochs, options.lr, options.weight_decay, options.grad_clip) == (
        10,
        1e-4,
        0.01,
        1.0,
    )
    assert (options.batch_size, options.seed) == (50, 42)
    assert runner.options.device.type == "cpu"
    assert (
        len(runner.histories_["lora"])
        == runner.comparison_.set_index("strategy").loc["lora", "epochs_run"]
        == 2
    )
    assert 1 <= len(runner.histories_["head"]) <= 4
    assert runner.spec.label_key == "bulk_labels" and runner.spec.use_raw


def test_random_state_is_deprecated_for_seed(pbmc_small, checkpoint):
    model = load_scgpt(checkpoint, device="cpu")
    with pytest.warns(FutureWarning, match="random_state= is deprecated"):
        old = AnnotationRunner(model, label_key="bulk_labels", random_state=7)
    assert old.seed == 7 and old.options.seed == 7
    with pytest.warns(FutureWarning, match="random_state= is deprecated"):
        report = inspect_annotation_data(
            pbmc_small, label_key="bulk_labels", checkpoint=model, use_raw=True, random_state=3
        )
    expected = inspect_annotation_data(
        pbmc_small, label_key="bulk_labels", checkpoint=model, use_raw=True, seed=3
    )
    pd.testing.assert_frame_equal(report.split_counts, expected.split_counts)
    kwargs = {
        "label_key": "bulk_labels", "checkpoint": model, "use_raw": True, "max_len": 16,
        "strategies": ("frozen_probe",), "batch_size": 100, "device": "cpu",
    }  # fmt: skip
    with pytest.warns(FutureWarning, match="adapt_annotation: random_state"):
        legacy = adapt_annotation(pbmc_small, random_state=5, **kwargs)
    current = adapt_annotation(pbmc_small, seed=5, **kwargs)
    pd.testing.assert_series_equal(legacy.split_, current.split_)
    np.testing.assert_array_equal(
        legacy.predict(pbmc_small).probabilities, current.predict(pbmc_small).probabilities
    )


def test_runner_saved_before_data_spec_still_loads(runner, pbmc_small, checkpoint, tmp_path):
    path = runner.save(tmp_path / "old", strategy="head")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["data_spec"]["use_raw"] is True and manifest["data_spec"]["spec_version"] == 1
    # the layout written by scdlkit 0.1.x: no data_spec, the seed under random_state
    del manifest["data_spec"]
    manifest["params"]["random_state"] = manifest["params"].pop("seed")
    manifest["params"]["seed"] = manifest["tokenizer"]["seed"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = AnnotationRunner.load(path, checkpoint=checkpoint, device="cpu")
    assert loaded.seed == 42 and loaded.spec.use_raw and loaded.spec.label_key == "bulk_labels"
    np.testing.assert_array_equal(
        loaded.predict(pbmc_small).probabilities,
        runner.predict(pbmc_small, strategy="head").probabilities,
    )
