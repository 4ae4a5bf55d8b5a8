"""Reference mapping (``tl.map_query``, scArches) and ``tl.join_latents``."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scdlkit
from scdlkit import pipeline

MODEL_KWARGS = {
    "n_hidden": 16, "n_latent": 4, "n_classifier_hidden": 16, "encode_covariates": True,
    "kl_warmup_steps": 10,
}  # fmt: skip
QUERY_BATCH = "batch_2"


def _split(n_cells: int = 450, n_genes: int = 60, seed: int = 0) -> tuple[ad.AnnData, ad.AnnData]:
    """Synthetic counts of 3 batches: the reference (batches 0, 1; ``ct`` a third unlabelled) and the query."""
    adata = scdlkit.datasets.synthetic_counts(n_cells, n_genes, n_types=3, n_batches=3, seed=seed)
    is_query = (adata.obs["batch"] == QUERY_BATCH).to_numpy()
    reference, query = adata[~is_query].copy(), adata[is_query].copy()
    labels = reference.obs["cell_type"].astype(str).to_numpy()
    labels[::3] = "Unknown"
    reference.obs["ct"] = labels
    return reference, query


def _map(query, reference, checkpoint_dir, **kwargs) -> None:
    options = {"epochs": 5, "lr": 1e-2, "weight_decay": 0.1, "seed": 0, "progress": False,
               "checkpoint_dir": checkpoint_dir}  # fmt: skip
    scdlkit.tl.map_query(query, reference, **{**options, **kwargs})


def _mapped(checkpoint_dir: Path, norm: str) -> dict[str, ad.AnnData]:
    reference, query = _split()
    scdlkit.tl.fit(
        reference, "count_scanvi", batch_key="batch", label_key="ct", unlabeled_category="Unknown",
        epochs=10, lr=1e-2, batch_size=64, seed=0, progress=False, checkpoint_dir=checkpoint_dir,
        model_kwargs={**MODEL_KWARGS, "norm": norm},
    )  # fmt: skip
    scdlkit.tl.predict(reference, outputs=["latent", "logits", "probabilities", "prediction",
                                           "normalized"])  # fmt: skip
    raw = query.copy()
    _map(query, reference, checkpoint_dir)
    return {"reference": reference, "query": query, "raw": raw}


@pytest.fixture(scope="module")
def _mapped_batch(tmp_path_factory) -> dict[str, ad.AnnData]:
    return _mapped(tmp_path_factory.mktemp("norm_batch"), "batch")


@pytest.fixture(scope="module")
def _mapped_layer(tmp_path_factory) -> dict[str, ad.AnnData]:
    return _mapped(tmp_path_factory.mktemp("norm_layer"), "layer")


@pytest.fixture
def mapped(_mapped_batch) -> dict[str, ad.AnnData]:
    """A count_scanvi reference (BatchNorm, batches 0 and 1, predicted) and its query mapped
    (``"query"``, batch 2, 5 epochs, lr 1e-2, weight decay 0.1) or not yet (``"raw"``); copies."""
    return {name: adata.copy() for name, adata in _mapped_batch.items()}


def _state(checkpoint) -> dict[str, torch.Tensor]:
    return pipeline.load_run(checkpoint, device="cpu").trainer.model.state_dict()


def _model(checkpoint) -> torch.nn.Module:
    return pipeline.load_run(checkpoint, device="cpu").trainer.model


# --------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_mapping_leaves_every_reference_weight_and_output_unchanged(request, norm):
    data = request.getfixturevalue(f"_mapped_{norm}")
    reference, query = data["reference"].copy(), data["query"]
    record = query.uns["scdlkit"]
    assert record["params"]["lr"] == 1e-2
    before = _state(reference.uns["scdlkit"]["checkpoint"])
    mapped = _model(record["checkpoint"])
    after = mapped.state_dict()
    if norm == "batch":
        assert any(name.endswith("running_mean") for name in before)
    else:
        assert not any(name.endswith("running_mean") for name in before)
    for name, value in before.items():
        if name == "kl_step":  # a step counter, not a weight
            continue
        assert torch.equal(after[name], value), name
    # only the new batch's parameters trained, and they moved from where they started
    parameters = dict(mapped.named_parameters())
    new = sorted(name for name in parameters if name not in before)
    assert new and sorted(record["trainable"]) == new
    assert all(".extra_weights." in name or name.endswith("_extra") for name in new)
    assert any(name.startswith("encoder.") for name in new)
    start = copy.deepcopy(mapped)
    start.load_state_dict(before, strict=False)
    start.init_extra_batches()
    started = dict(start.named_parameters())
    for name in new:
        assert not torch.equal(started[name], parameters[name]), name
    # the reference cells' outputs through the mapped model: bit-identical
    scdlkit.tl.predict(reference, checkpoint=record["checkpoint"], key_added="again")
    np.testing.assert_array_equal(reference.obsm["X_again"], reference.obsm["X_scdlkit"])
    np.testing.assert_array_equal(
        reference.obsm["again_probabilities"], reference.obsm["scdlkit_probabilities"]
    )


def test_unfrozen_decoder_trains_and_changes_the_reference_expression(mapped, tmp_path):
    reference, query = mapped["reference"], mapped["raw"]
    _map(query, reference, tmp_path, unfreeze=("decoder",), epochs=3)
    record = query.uns["scdlkit"]
    assert list(record["unfreeze"]) == ["decoder"]
    before = _state(reference.uns["scdlkit"]["checkpoint"])
    after = dict(_model(record["checkpoint"]).named_parameters())
    decoder = [name for name in before if name.startswith("decoder.") and name in after]
    assert decoder and set(decoder) <= set(record["trainable"])
    weights = [name for name in decoder if name.endswith("weight") and after[name].ndim == 2]
    assert weights
    for name in weights:
        assert not torch.equal(after[name], before[name]), name
    for name in (n for n in after if n.startswith("encoder.") and n in before):
        assert torch.equal(after[name], before[name]), name  # the encoder stays frozen
    scdlkit.tl.predict(
        reference, checkpoint=record["checkpoint"], outputs=["latent", "normalized"],
        key_added="again",
    )  # fmt: skip
    np.testing.assert_array_equal(reference.obsm["X_again"], reference.obsm["X_scdlkit"])
    difference = np.abs(
        reference.layers["again_normalized"] - reference.layers["scdlkit_normalized"]
    )
    assert difference.max() > 1.0


# --------------------------------------------------------------------------- genes


def _other_genes(query: ad.AnnData, n_dropped: int, n_extra: int, seed: int = 0) -> ad.AnnData:
    """The query without ``n_dropped`` genes, with ``n_extra`` genes more, its genes shuffled."""
    rng = np.random.default_rng(seed)
    kept = np.sort(rng.permutation(query.n_vars)[n_dropped:])
    extra = sp.csr_matrix(rng.poisson(2.0, (query.n_obs, n_extra)).astype(np.int32))
    matrix = sp.hstack([query.X[:, kept], extra], format="csr")
    names = [*query.var_names[kept], *[f"extra_{i}" for i in range(n_extra)]]
    order = rng.permutation(len(names))
    return ad.AnnData(
        matrix[:, order], obs=query.obs.copy(), var=pd.DataFrame(index=np.array(names)[order])
    )


def test_query_genes_matched_by_name_and_missing_ones_zero_filled(mapped, tmp_path):
    reference = mapped["reference"]
    query = _other_genes(mapped["raw"], n_dropped=6, n_extra=5)
    with pytest.warns(UserWarning, match=r"\b6 of the 60 reference genes are missing"):
        _map(query, reference, tmp_path, key_added="genes")
    record = query.uns["genes"]
    assert record["missing_genes"] == 6
    assert list(record["new_batches"]) == [QUERY_BATCH]
    latent = query.obsm["X_genes"]
    assert latent.shape == (query.n_obs, 4) and np.isfinite(latent).all()
    # predicted again from the written file alone, through the mapped bundle
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    back = ad.read_h5ad(path)
    with pytest.warns(UserWarning, match=r"\b6 of the 60 reference genes are missing"):
        scdlkit.tl.predict(back, key="genes", key_added="again")
    np.testing.assert_allclose(back.obsm["X_again"], latent, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        back.obs["again_prediction"].astype(str), query.obs["genes_prediction"].astype(str)
    )


def test_too_few_shared_genes_are_refused(mapped, tmp_path, unchanged):
    reference = mapped["reference"]
    query = _other_genes(mapped["raw"], n_dropped=36, n_extra=5)  # 24 of 60 genes: 40%
    checks = [unchanged(query), unchanged(reference)]
    with pytest.raises(ValueError, match=r"24 of the 60 genes .* below min_gene_overlap=0.5"):
        _map(query, reference, tmp_path)
    for check in checks:
        check()
    assert not list(tmp_path.iterdir())
    with pytest.warns(UserWarning, match=r"\b36 of the 60 reference genes are missing"):
        _map(query, reference, tmp_path, min_gene_overlap=0.3, epochs=1)
    assert query.uns["scdlkit"]["missing_genes"] == 36


# --------------------------------------------------------------------------- references refused


@pytest.fixture(scope="module")
def _other_references(tmp_path_factory) -> dict[str, ad.AnnData]:
    folder = tmp_path_factory.mktemp("other_references")
    runs = {
        "batch_blind": ("count_vae", {"batch_key": "batch"}),
        "no_batch": ("count_vae", {"model_kwargs": {"encode_covariates": True, "n_hidden": 16}}),
        "vae": ("vae", {"batch_key": "batch"}),
    }
    references = {}
    for name, (model, options) in runs.items():
        reference, _ = _split(150, 60)
        scdlkit.tl.fit(reference, model, epochs=1, progress=False, checkpoint_dir=folder, **options)
        references[name] = reference
    return references


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("batch_blind", ValueError, r"does not see the batch .*encode_covariates'?\s*[:=]\s*True"),
        ("no_batch", ValueError, r"trained without batch_key"),
        ("vae", ValueError, r"maps onto count models .* the reference is 'vae'"),
    ],
)
def test_references_that_cannot_be_mapped_onto_are_refused(
    _other_references, mapped, tmp_path, unchanged, name, error, message
):
    reference, query = _other_references[name].copy(), mapped["raw"]
    checks = [unchanged(query), unchanged(reference)]
    with pytest.raises(error, match=message):
        _map(query, reference, tmp_path)
    for check in checks:
        check()


def _reference_batches(query, reference):
    return reference[:40].copy(), reference


def _no_batch_column(query, reference):
    del query.obs["batch"]
    return query, reference


@pytest.mark.parametrize(
    ("change", "options", "error", "message"),
    [
        (_reference_batches, {}, ValueError, r"nothing to map.*tl\.predict\(query, checkpoint="),
        (_no_batch_column, {}, KeyError, r"'batch' in adata\.obs"),
        (None, {"batch_key": "donor"}, KeyError, r"'donor' in adata\.obs"),
        (None, {"key": "other"}, KeyError, r"scdlkit run under \.uns\['other'\]"),
        (None, {"min_gene_overlap": 1.5}, ValueError, r"min_gene_overlap must be a fraction"),
        (None, {"unfreeze": ("nothing",)}, ValueError, r"\['nothing'\] match no parameter"),
        (None, {"key_added": "bad/key"}, ValueError, r"bad/key"),
    ],
)
def test_bad_inputs_leave_query_and_reference_unchanged(
    mapped, tmp_path, unchanged, change, options, error, message
):
    query, reference = mapped["raw"], mapped["reference"]
    if change is not None:
        query, reference = change(query, reference)
    checks = [unchanged(query), unchanged(reference)]
    with pytest.raises(error, match=message):
        _map(query, reference, tmp_path, **options)
    for check in checks:
        check()


def test_a_missing_reference_bundle_is_refused(mapped, tmp_path, unchanged):
    query = mapped["raw"]
    check = unchanged(query)
    with pytest.raises(FileNotFoundError, match=r"no_such_bundle' does not exist"):
        _map(query, tmp_path / "no_such_bundle", tmp_path)
    check()


# --------------------------------------------------------------------------- what is written


def test_writes_latent_labels_and_the_record(mapped):
    reference, query = mapped["reference"], mapped["query"]
    assert query.obsm["X_scdlkit"].shape == (query.n_obs, 4)
    assert query.obsm["X_scdlkit"].dtype == np.float32
    categories = list(reference.uns["scdlkit"]["label_categories"])
    assert categories == ["type_0", "type_1", "type_2"]
    prediction = query.obs["scdlkit_prediction"]
    assert isinstance(prediction.dtype, pd.CategoricalDtype)
    assert list(prediction.cat.categories) == categories
    probabilities = query.obsm["scdlkit_probabilities"]
    assert probabilities.shape == (query.n_obs, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(query.obs["scdlkit_confidence"], probabilities.max(axis=1))
    np.testing.assert_array_equal(
        prediction.astype(str), np.array(categories)[probabilities.argmax(axis=1)]
    )
    # the query's batch is new, its cell types are the reference's: labelled well
    truth = query.obs["cell_type"].astype(str).to_numpy()
    assert (prediction.astype(str).to_numpy() == truth).mean() > 0.8
    assert set(query.obs["scdlkit_split"].astype(str)) == {"train", "val"}

    record = query.uns["scdlkit"]
    reference_bundle = Path(reference.uns["scdlkit"]["checkpoint"]).resolve()
    digest = hashlib.sha256((reference_bundle / "model.pt").read_bytes()).hexdigest()
    assert record["reference"]["checkpoint"] == str(reference_bundle)
    assert record["reference"]["sha256"] == digest
    assert list(record["new_batches"]) == [QUERY_BATCH]
    assert record["missing_genes"] == 0
    assert record["model"] == "count_scanvi" and record["task"] == "annotation"
    bundle = Path(record["checkpoint"])
    assert bundle.resolve() != reference_bundle
    assert (bundle / "model.pt").is_file() and (bundle / "config.json").is_file()
    loaded = pipeline.load_run(bundle, device="cpu")
    assert loaded.encoder("batch").categories == ("batch_0", "batch_1", QUERY_BATCH)
    assert loaded.config["model"]["kwargs"]["n_batch_extra"] == 1


def test_the_mapped_query_predicts_again_from_its_h5ad(mapped, tmp_path):
    query = mapped["query"]
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.uns["scdlkit"]["reference"]["sha256"] == query.uns["scdlkit"]["reference"]["sha256"]
    scdlkit.tl.predict(back, key_added="again")
    np.testing.assert_allclose(back.obsm["X_again"], query.obsm["X_scdlkit"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        back.obs["again_prediction"].astype(str), query.obs["scdlkit_prediction"].astype(str)
    )


def test_a_bundle_path_is_a_reference_too(mapped, tmp_path):
    reference, query, raw = mapped["reference"], mapped["query"], mapped["raw"]
    _map(raw, Path(reference.uns["scdlkit"]["checkpoint"]), tmp_path)
    record, first = raw.uns["scdlkit"], query.uns["scdlkit"]
    assert record["reference"] == first["reference"]
    np.testing.assert_array_equal(raw.obsm["X_scdlkit"], query.obsm["X_scdlkit"])  # same seed


# --------------------------------------------------------------------------- join_latents


def test_join_latents(mapped):
    reference, query = mapped["reference"], mapped["query"]
    joint = scdlkit.tl.join_latents(reference, query, label_key="cell_type", batch_key="batch")
    n_ref, n_query = reference.n_obs, query.n_obs
    assert joint.shape == (n_ref + n_query, 0)
    np.testing.assert_array_equal(
        joint.obsm["X_scdlkit"],
        np.concatenate([reference.obsm["X_scdlkit"], query.obsm["X_scdlkit"]]),
    )
    assert joint.obs["source"].tolist() == ["reference"] * n_ref + ["query"] * n_query
    assert list(joint.obs_names) == [*reference.obs_names, *query.obs_names]
    labels = joint.obs["label"].astype(str).to_numpy()
    np.testing.assert_array_equal(labels[:n_ref], reference.obs["cell_type"].astype(str))
    np.testing.assert_array_equal(labels[n_ref:], query.obs["scdlkit_prediction"].astype(str))
    assert set(joint.obs["batch"].astype(str)) == {"batch_0", "batch_1", QUERY_BATCH}


def test_join_latents_suffixes_shared_cell_names(mapped):
    reference, query = mapped["reference"], mapped["query"]
    query.obs_names = reference.obs_names[: query.n_obs]
    joint = scdlkit.tl.join_latents(reference, query)
    assert joint.obs_names.is_unique
    assert joint.obs_names[0] == f"{reference.obs_names[0]}-reference"
    assert joint.obs_names[reference.n_obs] == f"{reference.obs_names[0]}-query"


def test_join_latents_errors(mapped, unchanged):
    reference, query = mapped["reference"], mapped["query"]
    no_latent = reference.copy()
    del no_latent.obsm["X_scdlkit"]
    with pytest.raises(KeyError, match=r"X_scdlkit.*tl\.predict"):
        scdlkit.tl.join_latents(no_latent, query)
    with pytest.raises(KeyError, match=r"X_other"):
        scdlkit.tl.join_latents(reference, query, query_key="other")
    with pytest.raises(KeyError, match=r"no_column"):
        scdlkit.tl.join_latents(reference, query, label_key="no_column")
    wider = query.copy()
    wider.obsm["X_scdlkit"] = np.zeros((query.n_obs, 7), dtype=np.float32)
    checks = [unchanged(reference), unchanged(wider)]
    with pytest.raises(ValueError, match=r"4 dimensions, the query's 7"):
        scdlkit.tl.join_latents(reference, wider)
    for check in checks:
        check()


# --------------------------------------------------------------------------- real data


def test_real_counts_map_a_new_technology(pbmc_3tech, tmp_path):
    adata = pbmc_3tech
    is_query = (adata.obs["batch"] == "VDJ").to_numpy()
    reference, query = adata[~is_query].copy(), adata[is_query].copy()
    scdlkit.tl.fit(
        reference, "count_scanvi", batch_key="batch", label_key="cell_type", use_hvg=True,
        n_top_genes=300, epochs=10, batch_size=128, seed=0, progress=False, checkpoint_dir=tmp_path,
        model_kwargs={"n_latent": 10, "n_hidden": 64, "encode_covariates": True,
                      "kl_warmup_steps": 50},
    )  # fmt: skip
    _map(query, reference, tmp_path, epochs=10, weight_decay=0.0, lr=1e-3)
    predicted = query.obs["scdlkit_prediction"].astype(str).to_numpy()
    assert (predicted == query.obs["cell_type"].astype(str).to_numpy()).mean() > 0.8
    assert list(query.uns["scdlkit"]["new_batches"]) == ["VDJ"]
    assert np.isfinite(query.obsm["X_scdlkit"]).all()
