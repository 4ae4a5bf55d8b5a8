"""prepare_data / transform_adata: splits, preprocessing fitted on train, validation, no mutation."""

from __future__ import annotations

import json
import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

from scdlkit import prepare_data, transform_adata
from scdlkit.data import PreparedData, SplitData

FULL_PREP = {"normalize": True, "log1p": True, "scale": True}


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def hand_computed(adata: ad.AnnData, prepared: PreparedData, *, max_value: float | None = 10.0):
    """normalize_total(1e4) over all genes -> log1p -> gene subset -> z-score with train stats."""
    full = adata.copy()
    full.X = full.X.astype(np.float64)
    sc.pp.normalize_total(full, target_sum=1e4)
    sc.pp.log1p(full)
    values = _dense(full[:, prepared.feature_names].X).astype(np.float64)
    train = values[np.asarray(prepared.split == "train")]
    mean = train.mean(axis=0)
    std = train.std(axis=0, ddof=1)
    std[std == 0] = 1.0
    scaled = (values - mean) / std
    return scaled if max_value is None else np.clip(scaled, -max_value, max_value)


def all_cells(prepared: PreparedData) -> np.ndarray:
    """Model input of every cell in the original order, assembled from the splits."""
    out = np.full((len(prepared.split), prepared.input_dim), np.nan, dtype=np.float32)
    for split in prepared.splits.values():
        out[split.rows] = split.to_numpy()
    return out


# --------------------------------------------------------------------------- happy paths


def test_pbmc_defaults(pbmc, unchanged):
    check = unchanged(pbmc)
    prepared = prepare_data(pbmc, label_key="bulk_labels")
    check()
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (490, 105, 105)
    assert prepared.input_dim == 765
    assert prepared.feature_names == list(pbmc.var_names)
    assert prepared.label_encoder.categories == tuple(pbmc.obs["bulk_labels"].cat.categories)
    assert prepared.batch_encoder is None
    assert prepared.source == "adata.X"
    assert list(prepared.obs_names) == list(pbmc.obs_names)
    # the split labels, in the original order, agree with the rows of each split
    assert list(prepared.split.categories) == ["train", "val", "test"]
    for name, split in prepared.splits.items():
        np.testing.assert_array_equal(split.rows, np.flatnonzero(prepared.split == name))
        np.testing.assert_array_equal(
            split.y, prepared.label_encoder.encode(pbmc.obs["bulk_labels"].iloc[split.rows])
        )
    # no preprocessing: x is adata.X itself
    np.testing.assert_array_equal(all_cells(prepared), pbmc.X)


def test_preprocessing_is_json_able(synthetic):
    prepared = prepare_data(
        synthetic, **FULL_PREP, use_hvg=True, n_top_genes=40, label_key="cell_type"
    )
    text = json.dumps(prepared.preprocessing)
    payload = json.loads(text)
    assert payload == prepared.preprocessing
    assert payload["feature_names"] == prepared.feature_names
    assert len(payload["scale_mean"]) == len(payload["scale_std"]) == 40
    assert payload["n_top_genes"] == 40 and payload["use_hvg"] is True
    assert payload["scale_max_value"] == 10.0


def test_use_raw(pbmc):
    prepared = prepare_data(pbmc, use_raw=True, val_size=0.0, test_size=0.0)
    assert prepared.val is None and prepared.test is None
    assert prepared.source == "adata.raw.X"
    np.testing.assert_allclose(prepared.train.to_numpy(), _dense(pbmc.raw.X))


def test_layer_and_counts_with_full_preprocessing(synthetic, unchanged):
    synthetic.layers["counts"] = synthetic.X.copy()
    synthetic.X = sp.csr_matrix(synthetic.X.shape, dtype=np.float32)  # X is not what we train on
    check = unchanged(synthetic)
    prepared = prepare_data(synthetic, layer="counts", **FULL_PREP, label_key="cell_type")
    check()
    assert prepared.source == "adata.layers['counts']"
    assert prepared.train.matrix is synthetic.layers["counts"]
    reference = synthetic.copy()
    reference.X = reference.layers["counts"]
    np.testing.assert_allclose(all_cells(prepared), hand_computed(reference, prepared), atol=1e-4)


@pytest.mark.parametrize("dataset", ["synthetic", "pbmc_3tech", "pbmc_kang"])
def test_values_equal_hand_computation(dataset, request, collect):
    adata = request.getfixturevalue(dataset)
    prepared = prepare_data(adata, **FULL_PREP, use_hvg=True, n_top_genes=60, label_key="cell_type")
    expected = hand_computed(adata, prepared)
    assert prepared.input_dim == 60
    for split in prepared.splits.values():
        got = collect(split.loader(batch_size=50, shuffle=True, seed=3))
        np.testing.assert_allclose(got["x"], expected[got["index"]], rtol=1e-5, atol=2e-5)
    # scaled training cells have mean 0 and std 1 up to clipping
    train = expected[prepared.train.rows]
    unclipped = (np.abs(train) < 10).all(axis=0)
    np.testing.assert_allclose(train[:, unclipped].mean(axis=0), 0, atol=1e-6)


def test_scale_max_value(synthetic):
    prepared = prepare_data(synthetic, **FULL_PREP, scale_max_value=1.0)
    x = prepared.train.to_numpy()
    assert np.abs(x).max() == pytest.approx(1.0)
    # a gene seen in a single training cell: its z-score there is about sqrt(n_train) > 10
    dense = synthetic.X.toarray()
    dense[:, 0] = 0
    dense[prepared.train.rows[0], 0] = 50
    synthetic.X = sp.csr_matrix(dense)
    clipped = prepare_data(synthetic, **FULL_PREP)
    unclipped = prepare_data(synthetic, **FULL_PREP, scale_max_value=None)
    expected = hand_computed(synthetic, unclipped, max_value=None)
    assert expected[prepared.train.rows[0], 0] > 14
    np.testing.assert_allclose(all_cells(unclipped), expected, rtol=1e-5, atol=2e-5)
    assert all_cells(clipped)[prepared.train.rows[0], 0] == pytest.approx(10.0)
    assert unclipped.preprocessing["scale_max_value"] is None


@pytest.mark.parametrize("dataset", ["synthetic", "pbmc_3tech"])
@pytest.mark.parametrize("batch_key", [None, "batch"])
def test_hvg_equals_scanpy_on_training_cells(dataset, batch_key, request):
    adata = request.getfixturevalue(dataset)
    n_top = 50 if dataset == "synthetic" else 1000
    prepared = prepare_data(
        adata, normalize=True, log1p=True, use_hvg=True, n_top_genes=n_top,
        label_key="cell_type", batch_key=batch_key,
    )  # fmt: skip
    train = adata[np.asarray(prepared.split == "train")].copy()
    sc.pp.normalize_total(train, target_sum=1e4)
    sc.pp.log1p(train)
    sc.pp.highly_variable_genes(train, flavor="seurat", n_top_genes=n_top, batch_key=batch_key)
    expected = list(train.var_names[train.var["highly_variable"].to_numpy()])
    # same genes, kept in the source order
    assert prepared.feature_names == expected
    assert prepared.input_dim == len(expected) == n_top


def test_data_dependent_steps_ignore_non_training_cells(synthetic):
    kwargs = {**FULL_PREP, "use_hvg": True, "n_top_genes": 30, "label_key": "cell_type"}
    prepared = prepare_data(synthetic, **kwargs)
    held_out = np.flatnonzero(prepared.split != "train")
    # wildly change the validation/test cells: every gene gets a random scale
    rng = np.random.default_rng(0)
    dense = synthetic.X.toarray()
    dense[held_out] *= rng.integers(1, 50, size=(held_out.shape[0], dense.shape[1]))
    altered = synthetic.copy()
    altered.X = sp.csr_matrix(dense)
    again = prepare_data(altered, **kwargs)
    np.testing.assert_array_equal(again.split, prepared.split)
    assert again.feature_names == prepared.feature_names
    assert again.preprocessing["scale_mean"] == prepared.preprocessing["scale_mean"]
    assert again.preprocessing["scale_std"] == prepared.preprocessing["scale_std"]
    np.testing.assert_array_equal(again.train.to_numpy(), prepared.train.to_numpy())


def test_sparse_input_stays_sparse_and_is_not_copied(synthetic, unchanged):
    check = unchanged(synthetic)
    prepared = prepare_data(synthetic, **FULL_PREP, use_hvg=True, n_top_genes=30)
    check()
    for split in prepared.splits.values():
        assert split.matrix is synthetic.X


def test_csc_input_is_converted_with_warning_and_left_as_is(synthetic, unchanged):
    synthetic.X = synthetic.X.tocsc()
    check = unchanged(synthetic)
    with pytest.warns(UserWarning, match="CSC matrix; converting it to CSR once"):
        prepared = prepare_data(synthetic, **FULL_PREP)
    check()
    assert prepared.train.matrix.format == "csr"
    np.testing.assert_allclose(all_cells(prepared), hand_computed(synthetic, prepared), atol=2e-5)


@pytest.mark.parametrize(
    "convert",
    [lambda x: x.toarray(), sp.csr_array, lambda x: x.astype(np.float64)],
    ids=["dense", "csr_array", "float64"],
)
def test_matrix_types_agree(synthetic, convert):
    kwargs = {**FULL_PREP, "use_hvg": True, "n_top_genes": 30, "label_key": "cell_type"}
    reference = prepare_data(synthetic, **kwargs)
    other = synthetic.copy()
    other.X = convert(other.X)
    prepared = prepare_data(other, **kwargs)
    assert prepared.train.matrix is other.X
    assert prepared.feature_names == reference.feature_names
    np.testing.assert_allclose(all_cells(prepared), all_cells(reference), rtol=1e-5, atol=1e-5)


def test_real_counts_with_batches(pbmc_3tech, unchanged):
    check = unchanged(pbmc_3tech)
    prepared = prepare_data(
        pbmc_3tech, **FULL_PREP, use_hvg=True, n_top_genes=500,
        label_key="cell_type", batch_key="batch",
    )  # fmt: skip
    check()
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (1400, 300, 300)
    assert prepared.batch_encoder.categories == tuple(pbmc_3tech.obs["batch"].cat.categories)
    batches = prepared.batch_encoder.decode(prepared.train.batch)
    assert list(batches) == list(pbmc_3tech.obs["batch"].iloc[prepared.train.rows])


def test_kang_sample_batches(pbmc_kang):
    prepared = prepare_data(
        pbmc_kang, normalize=True, log1p=True, label_key="cell_type", batch_key="sample_id"
    )
    assert prepared.input_dim == 1267
    assert set(prepared.batch_encoder.categories) == {"ctrl101", "ctrl107", "stim101", "stim107"}
    counts = pd.crosstab(np.asarray(prepared.split), pbmc_kang.obs["cell_type"].to_numpy())
    assert (counts.loc["train"] > 0).all()
    x = prepared.val.to_numpy()
    expected = np.log1p(
        _dense(pbmc_kang.X[prepared.val.rows]) * 1e4 / pbmc_kang.X[prepared.val.rows].sum(axis=1)
    )
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


def test_small_mudata_one_and_two_modalities(small_mudata, unchanged):
    check = unchanged(small_mudata)
    rna = prepare_data(small_mudata, mod="rna", label_key="cell_type", val_size=0.2, test_size=0.2)
    both = prepare_data(
        small_mudata, mod=["rna", "prot"], label_key="cell_type", batch_key="donor",
        val_size=0.2, test_size=0.2,
    )  # fmt: skip
    check()
    assert rna.input_dim == 30 and len(rna.split) == 40
    assert rna.source == "mdata.mod['rna'].X"
    assert both.input_dim == 35 and len(both.split) == 36
    assert both.feature_names[:2] == ["rna:gene0", "rna:gene1"]
    assert both.feature_names[-1] == "prot:prot4"
    assert both.preprocessing["mod"] == ["rna", "prot"]
    cells = both.obs_names
    expected = np.hstack(
        [small_mudata.mod["rna"][cells].X.toarray(), small_mudata["prot"][cells].X]
    )
    np.testing.assert_array_equal(all_cells(both), expected)
    assert both.batch_encoder.categories == ("d1", "d2")


def test_citeseq(citeseq, unchanged):
    check = unchanged(citeseq)
    rna = prepare_data(citeseq, mod="rna", normalize=True, log1p=True, batch_key="batch")
    both = prepare_data(
        citeseq, mod=["rna", "prot"], normalize=True, log1p=True, scale=True, batch_key="batch"
    )
    check()
    assert rna.input_dim == 15792 and both.input_dim == 15806
    assert (len(both.train), len(both.val), len(both.test)) == (280, 60, 60)
    # the protein block of the side-by-side input: counts normalised over RNA + protein together
    rows = both.val.rows
    counts = np.hstack(
        [_dense(citeseq.mod["rna"].X[rows]), _dense(citeseq.mod["prot"].X[rows])]
    ).astype(np.float64)
    log = np.log1p(counts * 1e4 / counts.sum(axis=1, keepdims=True))
    mean = np.asarray(both.preprocessing["scale_mean"])
    std = np.asarray(both.preprocessing["scale_std"])
    expected = np.clip((log - mean) / std, -10, 10)
    np.testing.assert_allclose(both.val.to_numpy(), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- splits


def test_split_is_reproducible(synthetic):
    first = prepare_data(synthetic, label_key="cell_type", seed=3)
    second = prepare_data(synthetic, label_key="cell_type", seed=3)
    other = prepare_data(synthetic, label_key="cell_type", seed=4)
    np.testing.assert_array_equal(first.split, second.split)
    assert not np.array_equal(first.split, other.split)
    # sizes do not depend on the seed
    assert (
        pd.Series(first.split).value_counts().to_dict()
        == pd.Series(other.split).value_counts().to_dict()
    )


def test_stratified_split_keeps_every_class_in_train(synthetic):
    labels = np.array(["common"] * 290 + ["rare_a"] * 2 + ["rare_b"] * 1 + ["mid"] * 7)
    synthetic.obs["label"] = pd.Categorical(labels)
    for seed in range(5):
        prepared = prepare_data(synthetic, label_key="label", seed=seed)
        table = pd.crosstab(np.asarray(prepared.split), labels)
        assert (table.loc["train"] >= 1).all()
        assert table.loc["train", "rare_b"] == 1
        # proportional shares for the big class: 15 % of 290 is 43.5
        assert table.loc["val", "common"] in (43, 44)
        assert table.loc["test", "common"] in (43, 44)
    assert (len(prepared.val), len(prepared.test)) == (45, 45)


def test_unstratified_split_sizes(synthetic):
    prepared = prepare_data(
        synthetic, label_key="cell_type", stratify=False, val_size=0.1, test_size=0.2
    )
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (210, 30, 60)


def test_split_key_is_honoured_exactly(synthetic, unchanged):
    rng = np.random.default_rng(1)
    values = rng.choice(
        ["train", "Training", "VAL", "validation", "Test", " test "], synthetic.n_obs
    )
    synthetic.obs["fold"] = values
    check = unchanged(synthetic)
    prepared = prepare_data(synthetic, split_key="fold", label_key="cell_type", seed=99)
    check()
    canonical = {
        "train": "train",
        "training": "train",
        "val": "val",
        "validation": "val",
        "test": "test",
    }
    expected = [canonical[v.strip().lower()] for v in values]
    assert list(prepared.split) == expected
    for name, split in prepared.splits.items():
        np.testing.assert_array_equal(split.rows, np.flatnonzero(np.array(expected) == name))


def test_split_key_without_test_cells(synthetic):
    synthetic.obs["fold"] = np.where(np.arange(synthetic.n_obs) < 250, "train", "val")
    prepared = prepare_data(synthetic, split_key="fold")
    assert prepared.test is None
    assert (len(prepared.train), len(prepared.val)) == (250, 50)
    assert set(prepared.splits) == {"train", "val"}


def test_split_key_label_missing_from_train_warns(synthetic):
    synthetic.obs["fold"] = np.where(synthetic.obs["cell_type"] == "type_2", "test", "train")
    with pytest.warns(
        UserWarning, match=r"Labels 'type_2' have no cell in the training split of 'fold'"
    ):
        prepare_data(synthetic, split_key="fold", label_key="cell_type")


def test_batch_aware_split_holds_out_whole_batches(synthetic):
    synthetic.obs["donor"] = pd.Categorical([f"d{i % 5}" for i in range(synthetic.n_obs)])
    prepared = prepare_data(synthetic, batch_key="donor", batch_aware_split=True, seed=0)
    table = pd.crosstab(np.asarray(prepared.split), synthetic.obs["donor"].to_numpy())
    assert ((table > 0).sum(axis=0) == 1).all()  # each batch in exactly one split
    assert set(table.index) == {"train", "val", "test"}


def test_val_and_test_size_zero(synthetic):
    prepared = prepare_data(synthetic, val_size=0, test_size=0)
    assert prepared.val is None and prepared.test is None
    assert len(prepared.train) == synthetic.n_obs
    assert set(prepared.split) == {"train"}


# --------------------------------------------------------------------------- warnings


def test_hvg_on_raw_counts_without_log_warns(synthetic):
    synthetic.X.data = np.minimum(synthetic.X.data, 20)  # small enough for expm1 not to overflow
    with pytest.warns(UserWarning, match="looks like raw counts"):
        prepared = prepare_data(synthetic, use_hvg=True, n_top_genes=20)
    assert prepared.input_dim == 20


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_hvg_on_large_raw_counts_without_log_is_a_value_error(synthetic, unchanged):
    check = unchanged(synthetic)
    with (
        pytest.warns(UserWarning, match="looks like raw counts"),
        pytest.raises(ValueError, match=r"Could not rank highly variable genes.*log1p=True"),
    ):
        prepare_data(synthetic, use_hvg=True, n_top_genes=20)
    check()


def test_n_top_genes_not_below_features_keeps_all(synthetic):
    with pytest.warns(UserWarning, match=r"n_top_genes=500 is not below the 120 features"):
        prepared = prepare_data(
            synthetic, normalize=True, log1p=True, use_hvg=True, n_top_genes=500
        )
    assert prepared.feature_names == list(synthetic.var_names)


# --------------------------------------------------------------------------- errors


def _nan_matrix(adata):
    dense = adata.X.toarray().astype(np.float32)
    dense[17, 3] = np.nan
    dense[40, 0] = np.inf
    adata.X = sp.csr_matrix(dense)


def _negative_layer(adata):
    adata.layers["scaled"] = adata.X.toarray().astype(np.float32) - 1


def _string_layer(adata):
    adata.layers["names"] = np.full(adata.shape, "x")


def _bad_split_column(adata):
    values = np.array(["train"] * adata.n_obs, dtype=object)
    values[:3] = "holdout"
    values[5] = "dev"
    adata.obs["fold"] = values


def _no_train_column(adata):
    adata.obs["fold"] = np.where(np.arange(adata.n_obs) % 2, "val", "test")


def _two_batches(adata):
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")


def _tiny(adata):
    adata._inplace_subset_obs(np.arange(2))


def _none(adata):
    return None


ERROR_CASES = [
    # id, setup, kwargs, exception, message pattern
    ("layer", _none, {"layer": "counts"}, KeyError, r"layer 'counts' in adata\.layers"),
    ("label_key", _none, {"label_key": "celltype"}, KeyError, r"label_key 'celltype'.*'cell_type', 'batch'"),
    ("batch_key", _none, {"batch_key": "donor"}, KeyError, r"batch_key 'donor'.*'cell_type', 'batch'"),
    ("split_key", _none, {"split_key": "fold"}, KeyError, r"split_key 'fold'.*'cell_type', 'batch'"),
    ("mod", _none, {"mod": "rna"}, ValueError, r"mod='rna' only applies to a MuData"),
    ("sizes", _none, {"val_size": 0.6, "test_size": 0.4}, ValueError, r"val_size \+ test_size must be below 1.*0\.6 \+ 0\.4"),
    ("val_size", _none, {"val_size": 1.5}, ValueError, r"val_size must be a fraction in \[0, 1\), got 1\.5"),
    ("test_size", _none, {"test_size": -0.1}, ValueError, r"test_size must be a fraction"),
    ("batch_aware", _none, {"batch_aware_split": True}, ValueError, r"batch_aware_split=True needs batch_key="),
    ("n_top_genes", _none, {"use_hvg": True, "n_top_genes": 0}, ValueError, r"n_top_genes must be a positive integer, got 0"),
    ("nan", _nan_matrix, {}, ValueError, r"adata\.X has 2 NaN or infinite values \(first in cell 'cell_17', row 17\)"),
    ("negative", _negative_layer, {"layer": "scaled", "log1p": True}, ValueError, r"adata\.layers\['scaled'\] has negative values \(minimum -1\).*log1p"),
    ("non_numeric", _string_layer, {"layer": "names"}, TypeError, r"adata\.layers\['names'\] has non-numeric dtype"),
    ("split_values", _bad_split_column, {"split_key": "fold"}, ValueError, r"split_key 'fold' has 4 cells with values that are not a split name: 'holdout', 'dev'"),
    ("split_no_train", _no_train_column, {"split_key": "fold"}, ValueError, r"split_key 'fold' marks no cell as 'train'"),
    ("empty_split", _tiny, {}, ValueError, r"The 'val' split ended up empty: 2 cells are too few"),
    ("empty_batch_split", _two_batches, {"batch_key": "donor", "batch_aware_split": True}, ValueError, r"The 'train' split ended up empty: there are too few batches"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "kwargs", "exception", "pattern"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_errors_name_the_key_and_leave_input_unchanged(
    synthetic, unchanged, setup, kwargs, exception, pattern
):
    setup(synthetic)
    check = unchanged(synthetic)
    with pytest.raises(exception, match=pattern):
        prepare_data(synthetic, **kwargs)
    check()


def test_empty_anndata_is_an_error():
    adata = ad.AnnData(sp.csr_matrix((0, 10), dtype=np.float32))
    with pytest.raises(ValueError, match=r"adata\.X is empty \(0 cells x 10 features\)"):
        prepare_data(adata)


def test_duplicate_var_names_is_an_error(synthetic, unchanged):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        synthetic.var_names = ["gene_a"] * 2 + list(synthetic.var_names[2:])
    check = unchanged(synthetic)
    with pytest.raises(ValueError, match=r"1 duplicated feature names \('gene_a'\)"):
        prepare_data(synthetic)
    check()


def test_missing_label_values_is_an_error(synthetic, unchanged):
    synthetic.obs["label"] = synthetic.obs["cell_type"].astype(object)
    synthetic.obs.iloc[5, synthetic.obs.columns.get_loc("label")] = None
    check = unchanged(synthetic)
    with pytest.raises(
        ValueError, match=r"'label' has 1 missing values \(first at cell 'cell_5'\)"
    ):
        prepare_data(synthetic, label_key="label")
    check()


@pytest.mark.filterwarnings("ignore:`n_top_genes` > number of normalized dispersions:UserWarning")
def test_hvg_without_any_variable_gene_is_a_value_error():
    adata = ad.AnnData(sp.csr_matrix((30, 6), dtype=np.float32))
    with pytest.raises(ValueError, match=r"highly variable genes.*use_hvg=False"):
        prepare_data(adata, normalize=True, log1p=True, use_hvg=True, n_top_genes=3)


def test_mudata_errors_leave_input_unchanged(small_mudata, unchanged):
    check = unchanged(small_mudata)
    with pytest.raises(ValueError, match=r"pass mod="):
        prepare_data(small_mudata)
    with pytest.raises(KeyError, match=r"modality 'atac'.*'rna', 'prot'"):
        prepare_data(small_mudata, mod="atac")
    with pytest.raises(KeyError, match=r"label_key 'cell_type' in mdata\.mod\['prot'\]\.obs"):
        prepare_data(small_mudata, mod="prot", label_key="cell_type")
    check()


# --------------------------------------------------------------------------- transform_adata


@pytest.fixture
def trained(synthetic):
    prepared = prepare_data(
        synthetic, **FULL_PREP, use_hvg=True, n_top_genes=40,
        label_key="cell_type", batch_key="batch",
    )  # fmt: skip
    return synthetic, prepared


def test_transform_adata_on_training_data_matches_prepare(trained):
    adata, prepared = trained
    data = transform_adata(
        adata, prepared.preprocessing,
        label_encoder=prepared.label_encoder, batch_encoder=prepared.batch_encoder,
    )  # fmt: skip
    assert isinstance(data, SplitData) and data.name == "all"
    assert len(data) == adata.n_obs and data.n_features == 40
    np.testing.assert_array_equal(data.rows, np.arange(adata.n_obs))
    np.testing.assert_allclose(data.to_numpy(), all_cells(prepared), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(data.y, prepared.label_encoder.encode(adata.obs["cell_type"]))
    np.testing.assert_array_equal(data.batch, prepared.batch_encoder.encode(adata.obs["batch"]))


def test_transform_adata_reorders_genes(trained, unchanged):
    adata, prepared = trained
    reference = transform_adata(adata, prepared.preprocessing).to_numpy()
    query = adata[:, np.random.default_rng(0).permutation(adata.n_vars)].copy()
    check = unchanged(query)
    data = transform_adata(query, prepared.preprocessing)
    check()
    assert data.transform.columns is not None
    np.testing.assert_allclose(data.to_numpy(), reference, rtol=1e-6, atol=1e-6)


def test_transform_adata_drops_extra_genes(synthetic):
    prepared = prepare_data(synthetic, scale=True)  # no normalisation: extra genes cannot matter
    extra = ad.AnnData(
        sp.hstack(
            [synthetic.X, sp.csr_matrix(np.ones((synthetic.n_obs, 3), dtype=np.int32))],
            format="csr",
        ),
        var=pd.DataFrame(index=[*synthetic.var_names, "extra1", "extra2", "extra3"]),
    )
    data = transform_adata(extra, prepared.preprocessing)
    assert data.n_features == synthetic.n_vars
    np.testing.assert_allclose(data.to_numpy(), all_cells(prepared), rtol=1e-6, atol=1e-6)


def test_transform_adata_missing_genes_lists_twenty_and_count(trained):
    adata, prepared = trained
    missing = prepared.feature_names[:25]
    query = adata[:, ~adata.var_names.isin(missing)].copy()
    with pytest.raises(ValueError, match=r"adata\.X lacks 25 of the 40 features") as info:
        transform_adata(query, prepared.preprocessing)
    message = str(info.value)
    listed = re.findall(r"'(gene_\d+)'", message)
    assert listed == missing[:20]
    assert "... (5 more)" in message


def test_transform_adata_unseen_labels_are_named(trained, unchanged):
    adata, prepared = trained
    query = adata.copy()
    labels = query.obs["cell_type"].astype(str).to_numpy()
    labels[:4] = ["pDC", "pDC", "Platelet", "type_0"]
    query.obs["cell_type"] = labels
    check = unchanged(query)
    with pytest.raises(
        ValueError, match=r"'cell_type' has values the model never saw: 'Platelet', 'pDC'"
    ):
        transform_adata(query, prepared.preprocessing, label_encoder=prepared.label_encoder)
    check()


def test_transform_adata_without_label_column_has_no_y(trained):
    adata, prepared = trained
    query = adata.copy()
    del query.obs["cell_type"]
    data = transform_adata(query, prepared.preprocessing, label_encoder=prepared.label_encoder)
    assert data.y is None
    assert "y" not in data[0]


def test_transform_adata_validates_values(trained):
    adata, prepared = trained
    query = adata.copy()
    query.X = query.X.astype(np.float32)
    query.X.data[0] = np.nan
    with pytest.raises(
        ValueError, match=r"1 NaN or infinite values \(first in cell 'cell_0', row 0\)"
    ):
        transform_adata(query, prepared.preprocessing)


def test_transform_adata_mudata_modality(small_mudata):
    prepared = prepare_data(
        small_mudata, mod="rna", normalize=True, log1p=True, label_key="cell_type"
    )
    from_mudata = transform_adata(
        small_mudata, prepared.preprocessing, label_encoder=prepared.label_encoder
    )
    from_modality = transform_adata(
        small_mudata.mod["rna"], prepared.preprocessing, label_encoder=prepared.label_encoder
    )
    np.testing.assert_array_equal(from_mudata.to_numpy(), from_modality.to_numpy())
    np.testing.assert_array_equal(from_mudata.y, from_modality.y)
    np.testing.assert_allclose(from_mudata.to_numpy(), all_cells(prepared), rtol=1e-6, atol=1e-6)


def test_hvg_selection_keeps_torch_thread_count(synthetic):
    # scanpy's numba kernels start an OpenMP pool that would reset torch to every core
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepare_data(synthetic, normalize=True, log1p=True, use_hvg=True, n_top_genes=50)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
