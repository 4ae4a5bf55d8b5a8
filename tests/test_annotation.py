"""Label transfer with ``"count_scanvi"``: unlabelled cells, unobserved classes, calibration, ``init_from``."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

import scdlkit
from scdlkit import pipeline
from scdlkit.data import CategoryEncoder
from scdlkit.evaluation import (
    calibrated_probabilities,
    expected_calibration_error,
    fit_temperature,
)
from scdlkit.models import create_model
from scdlkit.tasks import get_task, labelled_cross_entropy

MODEL_KWARGS = {"n_hidden": 16, "n_latent": 4, "n_classifier_hidden": 16, "kl_warmup_steps": 10}
SCANVI = {"label_key": "ct", "unlabeled_category": "Unknown", "batch_key": "batch"}


def _counts(n_cells: int = 300, n_genes: int = 60, seed: int = 0) -> ad.AnnData:
    """Synthetic counts with ``obs["ct"]``: the cell type, every third cell ``"Unknown"``."""
    adata = scdlkit.datasets.synthetic_counts(n_cells, n_genes, n_types=3, n_batches=2, seed=seed)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    labels[::3] = "Unknown"
    adata.obs["ct"] = labels
    return adata


def _fit(adata, checkpoint_dir, model="count_scanvi", **kwargs) -> None:
    options = {"epochs": 3, "batch_size": 64, "seed": 0, "progress": False,
               "checkpoint_dir": checkpoint_dir}  # fmt: skip
    if model == "count_scanvi" and "init_from" not in kwargs:
        options = {**options, **SCANVI, "model_kwargs": MODEL_KWARGS}
    scdlkit.tl.fit(adata, model, **{**options, **kwargs})


def _parameters(checkpoint) -> dict[str, torch.Tensor]:
    model = pipeline.load_run(checkpoint, device="cpu").trainer.model
    return {name: value.detach().clone() for name, value in model.named_parameters()}


@pytest.fixture(scope="module")
def _trained(tmp_path_factory) -> ad.AnnData:
    adata = _counts()
    _fit(adata, tmp_path_factory.mktemp("scanvi"), epochs=10, lr=1e-2)
    scdlkit.tl.predict(adata)
    return adata


@pytest.fixture
def trained(_trained) -> ad.AnnData:
    """300 x 60 counts, a third unlabelled, a count_scanvi run (10 epochs) with its predictions."""
    return _trained.copy()


@pytest.fixture(scope="module")
def _source(tmp_path_factory) -> ad.AnnData:
    adata = _counts(n_genes=80)
    _fit(
        adata, tmp_path_factory.mktemp("scvi"), model="count_vae", batch_key="batch",
        use_hvg=True, n_top_genes=40, epochs=20, lr=1e-2, key_added="scvi",
        model_kwargs={"n_hidden": 16, "n_latent": 4, "encode_covariates": True},
    )  # fmt: skip
    return adata


@pytest.fixture
def source(_source) -> ad.AnnData:
    """300 x 80 counts with a count_vae run ``"scvi"`` on 40 HVGs (20 epochs)."""
    return _source.copy()


# --------------------------------------------------------------------------- unlabelled cells


def test_unlabelled_logits_do_not_enter_the_cross_entropy():
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, -1, 2, -1, 1, -1, 0, 2])
    labelled = y >= 0
    expected = torch.nn.functional.cross_entropy(logits[labelled], y[labelled])
    torch.testing.assert_close(labelled_cross_entropy(logits, y), expected)
    for value in (0.0, 1e30, -1e30, torch.finfo(torch.float32).min):
        changed = logits.clone()
        changed[~labelled] = value
        changed[~labelled, 0] = -value
        torch.testing.assert_close(labelled_cross_entropy(changed, y), expected)
    assert float(labelled_cross_entropy(logits, torch.full((8,), -1))) == 0.0


def _annotation_batch(n_cells: int = 12, n_genes: int = 20) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.poisson(torch.full((n_cells, n_genes), 4.0), generator=generator)
    y = torch.tensor([0, -1, 1, 2, -1, -1, 0, 1, -1, 2, -1, 0])
    return {"x": x, "y": y, "batch": torch.arange(n_cells) % 2}


def _rows(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: value[rows] for key, value in batch.items()}


def test_unlabelled_cells_move_the_encoder_but_not_the_classification():
    model = create_model("count_scanvi", input_dim=20, num_classes=3, n_batch=2, n_hidden=8, seed=0)
    model.eval()  # per-cell outputs: no batch statistics, no dropout
    task = get_task("annotation")
    batch = _annotation_batch()
    labelled = batch["y"] >= 0

    def run(data):
        model.zero_grad()
        loss, stats, _ = task.compute_loss(model, data)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return stats, grads

    stats_all, grads_all = run(batch)
    stats_labelled, grads_labelled = run(_rows(batch, labelled))
    torch.testing.assert_close(stats_all["classification"], stats_labelled["classification"])
    # other counts for the unlabelled cells: other logits there, the same classification loss
    other = {**batch, "x": batch["x"].clone()}
    other["x"][~labelled] *= 5
    stats_other, _ = run(other)
    torch.testing.assert_close(stats_other["classification"], stats_all["classification"])
    assert not torch.isclose(stats_other["reconstruction"], stats_all["reconstruction"])
    # the classifier is trained by the labelled cells alone; the encoder by every cell
    head = [name for name in grads_all if name.startswith("classifier")]
    assert head
    for name in head:
        torch.testing.assert_close(grads_all[name], grads_labelled[name], rtol=1e-5, atol=1e-7)
    encoder = [name for name in grads_all if name.startswith("encoder")]
    assert encoder
    assert any(not torch.allclose(grads_all[n], grads_labelled[n]) for n in encoder)


def test_training_with_extra_unlabelled_cells_changes_the_latent(tmp_path):
    labelled = scdlkit.datasets.synthetic_counts(240, 60, n_types=3, n_batches=2, seed=0)
    labelled.obs["ct"] = labelled.obs["cell_type"].astype(str)
    splits = np.array(["train", "train", "train", "val", "test"])
    labelled.obs["split"] = splits[np.arange(labelled.n_obs) % 5]
    extra = scdlkit.datasets.synthetic_counts(120, 60, n_types=3, n_batches=2, seed=1)
    extra.obs_names = [f"extra_{i}" for i in range(extra.n_obs)]
    extra.obs["ct"] = "Unknown"
    extra.obs["split"] = "train"
    both = ad.concat([labelled, extra])
    runs = {}
    for name, adata in (("labelled", labelled), ("again", labelled.copy()), ("both", both)):
        _fit(adata, tmp_path / name, epochs=2, split_key="split")
        scdlkit.tl.predict(adata)
        runs[name] = adata[labelled.obs_names].obsm["X_scdlkit"]
        assert list(adata.uns["scdlkit"]["label_categories"]) == ["type_0", "type_1", "type_2"]
    np.testing.assert_array_equal(runs["labelled"], runs["again"])  # training is deterministic
    assert np.abs(runs["both"] - runs["labelled"]).max() > 1e-3


# --------------------------------------------------------------------------- unobserved classes


def test_a_category_with_only_unlabelled_cells_is_no_class(tmp_path):
    adata = _counts()
    adata.obs.loc[adata.obs["cell_type"] == "type_2", "ct"] = "Unknown"
    _fit(adata, tmp_path)
    scdlkit.tl.predict(adata)
    record = adata.uns["scdlkit"]
    assert list(record["label_categories"]) == ["type_0", "type_1"]
    assert record["model_config"]["num_classes"] == 2
    assert adata.obsm["scdlkit_probabilities"].shape == (adata.n_obs, 2)
    assert list(adata.obs["scdlkit_prediction"].cat.categories) == ["type_0", "type_1"]


def test_a_class_without_training_cells_is_never_predicted(tmp_path):
    adata = _counts()
    rng = np.random.default_rng(0)
    split = rng.choice(["train", "val", "test"], size=adata.n_obs, p=[0.6, 0.2, 0.2])
    split[(adata.obs["cell_type"] == "type_2").to_numpy()] = "test"
    adata.obs["split"] = split
    with pytest.warns(UserWarning, match=r"'type_2' have no cell in the training split"):
        _fit(adata, tmp_path, split_key="split")
    scdlkit.tl.predict(adata)
    assert list(adata.uns["scdlkit"]["label_categories"]) == ["type_0", "type_1", "type_2"]
    assert list(adata.uns["scdlkit"]["model_config"]["observed_classes"]) == [0, 1]
    probabilities = adata.obsm["scdlkit_probabilities"]
    assert probabilities.shape == (adata.n_obs, 3)
    assert (probabilities[:, 2] == 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    predictions = adata.obs["scdlkit_prediction"]
    assert list(predictions.cat.categories) == ["type_0", "type_1", "type_2"]
    assert (predictions != "type_2").all()
    calibration = adata.uns["scdlkit"]["calibration"]
    assert calibration["n_cells"] == int(((split == "val") & (adata.obs["ct"] != "Unknown")).sum())


# --------------------------------------------------------------------------- calibration


def test_temperature_scaling_calibrates_over_confident_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2000)
    calibrated = 1.5 * (rng.normal(size=(2000, 4)) + 1.5 * np.eye(4)[labels])
    over_confident = 4 * calibrated
    temperature = fit_temperature(over_confident, labels)
    assert 3 < temperature < 5
    before = expected_calibration_error(labels, special.softmax(over_confident, axis=1))
    probabilities = calibrated_probabilities(over_confident, temperature)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    after = expected_calibration_error(labels, probabilities)
    assert after < before / 3
    # one temperature for every class: the predicted labels do not change
    np.testing.assert_array_equal(probabilities.argmax(1), over_confident.argmax(1))


def test_expected_calibration_error_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    # bins: {0.9, 0.9} accuracy 1/2, {0.6} accuracy 1, {0.8} accuracy 1
    expected = 0.5 * abs(0.5 - 0.9) + 0.25 * abs(1 - 0.6) + 0.25 * abs(1 - 0.8)
    assert expected_calibration_error(np.array([0, 1, 0, 1]), probabilities) == pytest.approx(
        expected
    )
    assert expected_calibration_error(np.array([0, 1]), np.eye(2)) == 0.0


def test_the_run_is_calibrated_and_probabilities_are_the_softmax_of_the_logits(trained):
    record = trained.uns["scdlkit"]
    calibration = record["calibration"]
    assert set(calibration) >= {"temperature", "ece_before", "ece_after", "n_cells"}
    assert calibration["n_cells"] > 0
    assert calibration["ece_after"] <= calibration["ece_before"]
    model = pipeline.load_run(record["checkpoint"], device="cpu").trainer.model.eval()
    assert float(model.temperature) == pytest.approx(calibration["temperature"], rel=1e-6)
    logits = trained.obsm["scdlkit_logits"]
    probabilities = trained.obsm["scdlkit_probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, special.softmax(logits, axis=1), rtol=1e-5, atol=1e-7)
    # the written logits are the classifier's logits of the latent mean divided by the temperature
    with torch.no_grad():
        raw = model.classify(torch.from_numpy(trained.obsm["X_scdlkit"]), calibrated=False)
    np.testing.assert_allclose(
        logits, raw.numpy() / calibration["temperature"], rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(trained.obs["scdlkit_confidence"], probabilities.max(axis=1))
    categories = np.array(record["label_categories"])
    np.testing.assert_array_equal(
        trained.obs["scdlkit_prediction"].astype(str), categories[probabilities.argmax(axis=1)]
    )
    # 10 epochs on well-separated synthetic types: the unlabelled cells are labelled well
    unlabelled = (trained.obs["ct"] == "Unknown").to_numpy()
    truth = trained.obs["cell_type"].astype(str).to_numpy()
    accuracy = (trained.obs["scdlkit_prediction"].astype(str).to_numpy() == truth)[unlabelled]
    assert accuracy.mean() > 0.8


# --------------------------------------------------------------------------- init_from


def test_init_from_a_run_key_starts_from_its_weights_genes_and_batches(source, tmp_path):
    scvi = source.uns["scvi"]
    genes = pipeline.load_run(scvi["checkpoint"], device="cpu").preprocessing["feature_names"]
    assert len(genes) == 40
    reference = _parameters(scvi["checkpoint"])
    # a tiny learning rate: after the one epoch the weights are still the starting weights
    _fit(source, tmp_path, label_key="ct", unlabeled_category="Unknown", init_from="scvi",
         epochs=1, lr=1e-10, key_added="init")  # fmt: skip
    hvg = source[:, source.var_names.isin(genes)].copy()
    _fit(hvg, tmp_path, epochs=1, lr=1e-10, key_added="scratch",
         model_kwargs={"n_hidden": 16, "n_latent": 4, "encode_covariates": True})  # fmt: skip
    init, scratch = source.uns["init"], hvg.uns["scratch"]
    assert Path(init["init_from"]) == Path(scvi["checkpoint"])
    loaded = pipeline.load_run(init["checkpoint"], device="cpu")
    assert list(loaded.preprocessing["feature_names"]) == list(genes)
    assert loaded.encoder("batch").categories == ("batch_0", "batch_1")
    assert init["params"]["batch_key"] == "batch" and init["params"]["use_hvg"] is False
    for name in ("n_hidden", "n_latent", "encode_covariates", "n_batch"):
        assert init["model_config"][name] == scvi["model_config"][name], name
    started, fresh = _parameters(init["checkpoint"]), _parameters(scratch["checkpoint"])
    assert set(reference) < set(started)  # plus the classifier
    for name, value in reference.items():
        torch.testing.assert_close(started[name], value, rtol=0, atol=1e-6, msg=name)
    encoder = [name for name in reference if name.startswith("encoder")]
    assert all((fresh[name] - reference[name]).abs().max() > 1e-2 for name in encoder)


def test_init_from_a_checkpoint_path_starts_with_a_lower_loss(source, tmp_path):
    checkpoint = Path(source.uns.pop("scvi")["checkpoint"])
    source.obs = source.obs.drop(columns="scvi_split")
    _fit(source, tmp_path, label_key="ct", unlabeled_category="Unknown", init_from=checkpoint,
         epochs=1, lr=1e-2, key_added="init")  # fmt: skip
    hvg = source.var_names.isin(pipeline.load_run(checkpoint).preprocessing["feature_names"])
    scratch = source[:, hvg].copy()
    _fit(scratch, tmp_path, epochs=1, lr=1e-2, key_added="scratch",
         model_kwargs={"n_hidden": 16, "n_latent": 4, "encode_covariates": True})  # fmt: skip
    init = source.uns["init"]
    assert Path(init["init_from"]) == checkpoint
    genes = pipeline.load_run(init["checkpoint"]).preprocessing["feature_names"]
    assert list(genes) == list(source.var_names[hvg]) and len(genes) == 40
    start = init["history"]["train_reconstruction"][0]
    scratch_start = scratch.uns["scratch"]["history"]["train_reconstruction"][0]
    assert start < 0.9 * scratch_start


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"init_from": "nothing"}, FileNotFoundError, r"init_from='nothing' is neither a run"),
        ({"init_from": "/no/such/bundle"}, FileNotFoundError, r"nor an existing checkpoint"),
        ({"init_from": "scvi", "batch_key": "cell_type"}, ValueError, r"batch_key"),
        (
            {"init_from": "scvi", "model_kwargs": {"n_latent": 7}},
            ValueError,
            r"architecture",
        ),
    ],
)
def test_init_from_errors_leave_the_data_unchanged(
    source, tmp_path, unchanged, options, error, message
):
    check = unchanged(source)
    with pytest.raises(error, match=message):
        _fit(source, tmp_path, label_key="ct", unlabeled_category="Unknown", **options)
    check()


# --------------------------------------------------------------------------- files


def test_h5ad_round_trip_predicts_the_same(trained, tmp_path):
    path = tmp_path / "annotated.h5ad"
    trained.write_h5ad(path)
    back = ad.read_h5ad(path)
    scdlkit.tl.predict(back, key_added="again")
    for name in ("X_{}", "{}_logits", "{}_probabilities"):
        np.testing.assert_array_equal(
            back.obsm[name.format("again")], trained.obsm[name.format("scdlkit")]
        )
    np.testing.assert_array_equal(
        back.obs["again_prediction"].to_numpy(), trained.obs["scdlkit_prediction"].to_numpy()
    )
    np.testing.assert_array_equal(back.obs["again_confidence"], trained.obs["scdlkit_confidence"])
    before, after = trained.uns["scdlkit"], back.uns["scdlkit"]
    assert after["unlabeled_category"] == "Unknown" == before["unlabeled_category"]
    assert list(after["label_categories"]) == list(before["label_categories"])
    assert list(after["label_categories"]) == ["type_0", "type_1", "type_2"]
    for name in ("temperature", "ece_before", "ece_after", "n_cells"):
        assert after["calibration"][name] == pytest.approx(before["calibration"][name])


# --------------------------------------------------------------------------- bad inputs


def _negative(adata):
    adata.X = adata.X.astype(np.float32)
    adata.X[0, 0] = -1.0


def _all_unlabelled(adata):
    adata.obs["ct"] = "Unknown"


def _fractional(adata):
    adata.X = adata.X.astype(np.float32) * 0.5


@pytest.mark.parametrize(
    ("change", "options", "message"),
    [
        (None, {"label_key": None, "unlabeled_category": None}, r"needs label_key="),
        (_all_unlabelled, {}, r"'ct' has no labelled cell"),
        (None, {"label_key": None}, r"unlabeled_category='Unknown' .* pass label_key= too"),
        (None, {"model": "mlp_classifier", "batch_key": None}, r"model='count_scanvi'"),
        (_negative, {}, r"negative values"),
        (_fractional, {}, r"non-integer values"),
    ],
)
def test_bad_inputs_leave_the_data_unchanged(tmp_path, unchanged, change, options, message):
    adata = _counts(120, 30)
    if change is not None:
        change(adata)
        adata.X = sp.csr_matrix(adata.X)
    check = unchanged(adata)
    with pytest.raises(ValueError, match=message):
        _fit(adata, tmp_path, **{**SCANVI, "model_kwargs": MODEL_KWARGS, **options})
    check()
    assert not list(tmp_path.iterdir())  # no bundle either


# --------------------------------------------------------------------------- encoder property

LABELS = st.lists(
    st.sampled_from(["T", "B", "NK", "Unknown", None, np.nan]), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(values=LABELS, categorical=st.booleans())
def test_category_encoder_codes_unlabelled_cells_as_minus_one(values, categorical):
    series = pd.Series(values, dtype="category" if categorical else object)
    unlabelled = series.isna().to_numpy() | (series.astype(str) == "Unknown").to_numpy()
    if unlabelled.all():
        with pytest.raises(ValueError, match="no labelled cell"):
            CategoryEncoder.fit(series, key="ct", unlabeled="Unknown")
        return
    encoder = CategoryEncoder.fit(series, key="ct", unlabeled="Unknown")
    assert "Unknown" not in encoder.categories
    assert set(encoder.categories) == set(series[~unlabelled].astype(str))
    codes = encoder.encode(series)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes < 0, unlabelled)
    assert (codes[unlabelled] == -1).all()
    decoded = np.asarray(encoder.decode(codes[~unlabelled])).astype(str)
    np.testing.assert_array_equal(decoded, series[~unlabelled].astype(str).to_numpy())
    again = CategoryEncoder.from_dict(encoder.to_dict())
    assert again == encoder
    np.testing.assert_array_equal(again.encode(series), codes)


# --------------------------------------------------------------------------- real data


def test_real_counts_label_the_unlabelled_cells(pbmc_3tech, tmp_path):
    adata = pbmc_3tech
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    labels = truth.copy()
    labels[::2] = "Unknown"
    adata.obs["ct"] = labels
    _fit(
        adata, tmp_path, use_hvg=True, n_top_genes=300, epochs=8, batch_size=128,
        model_kwargs={"n_latent": 10, "n_hidden": 64, "kl_warmup_steps": 50},
    )  # fmt: skip
    scdlkit.tl.predict(adata)
    calibration = adata.uns["scdlkit"]["calibration"]
    assert calibration["ece_after"] <= calibration["ece_before"]
    unlabelled = labels == "Unknown"
    predicted = adata.obs["scdlkit_prediction"].astype(str).to_numpy()
    assert (predicted == truth)[unlabelled].mean() > 0.9
