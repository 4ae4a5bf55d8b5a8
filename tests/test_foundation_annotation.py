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
    runner.annotate_adata(adata, obs_key="celltype", embedding_key="X_celltype")
    assert isinstance(adata.obs["celltype"].dtype, pd.CategoricalDtype)
    assert adata.obsm["celltype_probabilities"].shape == (200, 4)
    assert adata.obsm["X_celltype"].shape == (200, 16)
    record = adata.uns["celltype"]
    assert record["strategy"] == runner.best_strategy_
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_series_equal(back.obs["celltype"], adata.obs["celltype"])
    pd.testing.assert_series_equal(
        back.obs["celltype_confidence"], adata.obs["celltype_confidence"]
    )
    np.testing.assert_array_equal(back.obsm["X_celltype"], adata.obsm["X_celltype"])
    assert list(back.uns["celltype"]["label_categories"]) == list(record["label_categories"])
    assert back.uns["celltype"]["base_checkpoint"] == record["base_checkpoint"]
    assert back.uns["celltype"]["params"]["max_len"] == 24
    copied = runner.annotate_adata(pbmc_small, copy=True)
    assert "scgpt_annotation" in copied.obs and "scgpt_annotation" not in pbmc_small.obs


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
