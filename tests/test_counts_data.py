"""Counts mode of the data layer: raw-count checks, library sizes, covariates, HVGs, backed, MuData, queries.

Count models (``count_vae``) read raw counts; every minibatch carries ``library``
(the sum over the model's genes, as scvi-tools' observed library), ``batch``,
``cat_covs`` and ``cont_covs``.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from mudata import MuData

import scdlkit
from scdlkit import prepare_data, transform_adata
from scdlkit._errors import MissingKeyError

N_CELLS, N_GENES = 400, 150


def _counts(n_cells: int = N_CELLS, n_genes: int = N_GENES, n_batches: int = 2, seed: int = 0):
    """Synthetic counts with a categorical (``donor``, unsorted categories) and a continuous covariate."""
    adata = scdlkit.datasets.synthetic_counts(
        n_cells, n_genes, n_types=3, n_batches=n_batches, seed=seed
    )
    rng = np.random.default_rng(seed)
    donors = rng.choice(["d2", "d0", "d1"], size=n_cells)
    adata.obs["donor"] = pd.Categorical(donors, categories=["d2", "d0", "d1"])
    adata.obs["pct_mito"] = rng.random(n_cells).round(4)
    return adata


def _row_sums(matrix) -> np.ndarray:
    return np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _all_batches(split, batch_size: int = 64) -> dict[str, np.ndarray]:
    batches = list(split.loader(batch_size))
    return {key: np.concatenate([b[key].numpy() for b in batches]) for key in batches[0]}


def _fit(adata, checkpoint_dir, **kwargs):
    kwargs = {"epochs": 1, "progress": False, **kwargs}
    scdlkit.tl.fit(adata, "count_vae", checkpoint_dir=checkpoint_dir, **kwargs)


# --------------------------------------------------------------------------- bad inputs


def _log_normalised(adata):
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)


def _negative(adata):
    matrix = adata.X.astype(np.float32)
    matrix.data[3] = -2.0
    adata.X = matrix


def _empty_cells(adata):
    matrix = adata.X.tolil()
    matrix[[4, 9, 17], :] = 0
    adata.X = matrix.tocsr()


def _nan_category(adata):
    donors = adata.obs["donor"].copy()
    donors.iloc[11] = np.nan
    adata.obs["donor"] = donors


def _nan_continuous(adata):
    adata.obs.loc[adata.obs_names[6], "pct_mito"] = np.nan


def _text_continuous(adata):
    values = adata.obs["pct_mito"].astype(str)
    values.iloc[8] = "high"
    adata.obs["pct_mito"] = values


BAD_INPUTS = {
    "log-normalised": (
        _log_normalised,
        {},
        r"adata\.X holds non-integer values .*layer=\"counts\"",
    ),
    "negative": (_negative, {}, r"adata\.X has negative values \(minimum -2\).*layer=\"counts\""),
    "empty cells": (
        _empty_cells,
        {},
        r"3 cells of adata\.X have no counts in the 150 selected genes \(e\.g\. 'cell_4', "
        r"'cell_9', 'cell_17'\).*sc\.pp\.filter_cells\(adata, min_counts=1\)",
    ),
    "NaN categorical covariate": (
        _nan_category,
        {"categorical_covariate_keys": ["donor"]},
        r"'donor' has 1 missing values \(first at cell 'cell_11'\)",
    ),
    "NaN continuous covariate": (
        _nan_continuous,
        {"continuous_covariate_keys": ["pct_mito"]},
        r"Continuous covariate 'pct_mito' has 1 missing, NaN or non-numeric values "
        r"\(e\.g\. cell 'cell_6'\)",
    ),
    "non-numeric continuous covariate": (
        _text_continuous,
        {"continuous_covariate_keys": ["pct_mito"]},
        r"Continuous covariate 'pct_mito' .*\(e\.g\. cell 'cell_8'\)",
    ),
    "normalize": (None, {"normalize": True}, r"pass normalize=False"),
    "log1p": (None, {"log1p": True}, r"pass log1p=False"),
    "scale": (None, {"scale": True}, r"pass scale=False"),
    "normalize and log1p": (
        None,
        {"normalize": True, "log1p": True},
        "normalize=False, log1p=False",
    ),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("front", ["prepare_data", "tl.fit"])
def test_bad_inputs_raise_naming_the_problem_and_leave_data_unchanged(
    case, front, unchanged, tmp_path
):
    damage, options, message = BAD_INPUTS[case]
    adata = _counts(300, N_GENES)
    if damage is not None:
        damage(adata)
    check = unchanged(adata)
    with pytest.raises(ValueError, match=message):
        if front == "prepare_data":
            prepare_data(adata, counts=True, batch_key="batch", **options)
        else:
            _fit(adata, tmp_path, batch_key="batch", **options)
    check()
    assert not list(tmp_path.iterdir()), "no checkpoint is written for refused data"


def test_empty_cells_in_the_selected_genes_are_refused_not_dropped(unchanged):
    adata = _counts()
    prepared = prepare_data(adata, counts=True, use_hvg=True, n_top_genes=20, seed=0)
    hvg = adata.var_names.get_indexer(prepared.feature_names)
    matrix = adata.X.tolil()
    matrix[np.ix_([2, 5], hvg)] = 0  # counts left in other genes: the library is positive
    adata.X = matrix.tocsr()
    assert (_row_sums(adata.X)[[2, 5]] > 0).all()
    check = unchanged(adata)
    with pytest.raises(ValueError, match=r"^2 cells of adata\.X have no counts in the 20 selected"):
        prepare_data(adata, counts=True, use_hvg=True, n_top_genes=20, seed=0)
    check()


@pytest.mark.parametrize(
    "options",
    [{"categorical_covariate_keys": ["donor"]}, {"continuous_covariate_keys": ["pct_mito"]}],
)
def test_covariates_need_a_count_model(options, unchanged, tmp_path):
    adata = _counts(200, 60)
    check = unchanged(adata)
    message = r"covariate_keys are inputs of count models \(e\.g\. model='count_vae'\)"
    with pytest.raises(ValueError, match=message):
        scdlkit.tl.fit(adata, "vae", epochs=1, checkpoint_dir=tmp_path, **options)
    with pytest.raises(ValueError, match=message):
        prepare_data(adata, **options)
    check()


def test_missing_covariate_column_lists_the_columns(unchanged):
    adata = _counts(200, 60)
    check = unchanged(adata)
    with pytest.raises(
        MissingKeyError, match=r"categorical covariate 'sample'.*'donor', 'pct_mito'"
    ):
        prepare_data(adata, counts=True, categorical_covariate_keys=["sample"])
    with pytest.raises(MissingKeyError, match=r"continuous covariate 'depth'"):
        prepare_data(adata, counts=True, continuous_covariate_keys=["depth"])
    check()


def test_counts_in_a_layer_are_read_and_x_may_be_log_normalised(unchanged):
    adata = _counts(200, 60)
    adata.layers["counts"] = adata.X.copy()
    _log_normalised(adata)
    check = unchanged(adata)
    prepared = prepare_data(adata, layer="counts", counts=True, batch_key="batch")
    check()
    assert prepared.source == "adata.layers['counts']"
    got = _all_batches(prepared.train)
    rows = got["index"]
    np.testing.assert_array_equal(got["x"], _dense(adata.layers["counts"][rows]))
    np.testing.assert_array_equal(got["library"][:, 0], _row_sums(adata.layers["counts"][rows]))


# --------------------------------------------------------------------------- batch dictionary


def test_minibatches_carry_counts_library_batch_and_covariates():
    adata = _counts()
    prepared = prepare_data(
        adata, counts=True, batch_key="batch", use_hvg=True, n_top_genes=40,
        categorical_covariate_keys=["donor", "cell_type"], continuous_covariate_keys=["pct_mito"],
        seed=3,
    )  # fmt: skip
    assert prepared.preprocessing["counts"] is True
    assert prepared.raw_counts and prepared.input_dim == 40
    columns = adata.var_names.get_indexer(prepared.feature_names)
    for name, split in prepared.splits.items():
        got = _all_batches(split, batch_size=48)
        assert set(got) == {"x", "index", "batch", "library", "cat_covs", "cont_covs"}, name
        rows = got["index"]
        assert got["library"].dtype == np.float32 and got["library"].shape == (len(rows), 1)
        # raw counts of the HVGs, untransformed
        np.testing.assert_array_equal(got["x"], _dense(adata.X[rows][:, columns]))
        # the library is the sum over the 40 model genes (the decoder spreads exactly
        # this total over them), not over every gene of the matrix
        np.testing.assert_array_equal(got["library"][:, 0], got["x"].sum(axis=1))
        assert (got["library"][:, 0] < _row_sums(adata.X[rows])).all()
        batches = adata.obs["batch"].cat.categories
        np.testing.assert_array_equal(
            batches[got["batch"]], adata.obs["batch"].to_numpy()[rows].astype(str)
        )
        assert got["cat_covs"].dtype == np.int64 and got["cat_covs"].shape == (len(rows), 2)
        np.testing.assert_array_equal(
            got["cat_covs"][:, 0], adata.obs["donor"].cat.codes.to_numpy()[rows]
        )
        np.testing.assert_array_equal(
            got["cat_covs"][:, 1], adata.obs["cell_type"].cat.codes.to_numpy()[rows]
        )
        assert got["cont_covs"].dtype == np.float32
        np.testing.assert_array_equal(
            got["cont_covs"][:, 0], adata.obs["pct_mito"].to_numpy(np.float32)[rows]
        )
    donor, cell_type = prepared.covariates.categorical
    # a categorical column keeps its category order (not sorted): codes follow it
    assert donor.categories == ("d2", "d0", "d1") and donor.key == "donor"
    assert cell_type.categories == ("type_0", "type_1", "type_2")
    assert prepared.covariates.n_cats_per_cov == (3, 3)
    assert prepared.covariates.continuous == ("pct_mito",)
    assert prepared.preprocessing["covariates"] == {
        "categorical": [
            {"key": "donor", "categories": ["d2", "d0", "d1"]},
            {"key": "cell_type", "categories": ["type_0", "type_1", "type_2"]},
        ],
        "continuous": ["pct_mito"],
    }


def test_string_covariate_categories_are_sorted_and_numeric_strings_are_continuous():
    adata = _counts(200, 60)
    adata.obs["site"] = np.where(np.arange(200) % 2, "zurich", "basel")
    adata.obs["depth"] = adata.obs["pct_mito"].astype(str)  # numbers stored as text
    prepared = prepare_data(
        adata, counts=True, categorical_covariate_keys=["site"], continuous_covariate_keys=["depth"]
    )
    assert prepared.covariates.categorical[0].categories == ("basel", "zurich")
    got = _all_batches(prepared.train)
    rows = got["index"]
    np.testing.assert_array_equal(got["cat_covs"][:, 0], rows % 2)
    np.testing.assert_allclose(got["cont_covs"][:, 0], adata.obs["pct_mito"].to_numpy()[rows])
    assert "batch" not in got  # no batch_key: no batch codes


def test_counts_mode_keeps_sparse_source_and_densifies_per_minibatch():
    adata = _counts(200, 60)
    prepared = prepare_data(adata, counts=True)
    assert prepared.train.matrix is adata.X
    cell = prepared.train[0]
    row = int(cell["index"])
    np.testing.assert_array_equal(cell["x"].numpy(), _dense(adata.X[row]).ravel())
    assert float(cell["library"][0]) == _row_sums(adata.X[row])[0]


# --------------------------------------------------------------------------- highly variable genes


def _scanpy_seurat_v3(adata, train_mask, n_top_genes, batch_key):
    subset = adata[train_mask].copy()
    sc.pp.highly_variable_genes(
        subset, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=batch_key
    )
    return list(subset.var_names[subset.var["highly_variable"].to_numpy()])


@pytest.mark.parametrize("batch_key", [None, "batch"])
def test_hvgs_are_scanpys_seurat_v3_on_the_training_counts(batch_key, unchanged):
    adata = _counts(600, 300, n_batches=3, seed=1)
    check = unchanged(adata)
    prepared = prepare_data(
        adata, counts=True, use_hvg=True, n_top_genes=60, batch_key=batch_key, seed=5
    )
    check()
    train = np.asarray(prepared.split) == "train"
    assert 0 < train.sum() < adata.n_obs
    expected = _scanpy_seurat_v3(adata, train, 60, batch_key)
    assert len(expected) == 60
    assert prepared.feature_names == expected
    assert prepared.preprocessing["feature_names"] == expected
    # fitted on the training cells only: another split is ranked on its own training cells
    other = prepare_data(
        adata, counts=True, use_hvg=True, n_top_genes=60, batch_key=batch_key, seed=6
    )
    other_train = np.asarray(other.split) == "train"
    assert other.feature_names == _scanpy_seurat_v3(adata, other_train, 60, batch_key)


def test_hvgs_of_real_counts_match_scanpy_per_batch(pbmc_3tech):
    adata = pbmc_3tech
    prepared = prepare_data(
        adata, counts=True, use_hvg=True, n_top_genes=500, batch_key="batch", seed=0
    )
    train = np.asarray(prepared.split) == "train"
    assert prepared.feature_names == _scanpy_seurat_v3(adata, train, 500, "batch")
    got = _all_batches(prepared.val, batch_size=512)
    np.testing.assert_array_equal(got["library"][:, 0], got["x"].sum(axis=1))


# --------------------------------------------------------------------------- backed files


@pytest.fixture
def backed(tmp_path):
    handles = []

    def open_(adata):
        path = tmp_path / f"counts{len(handles)}.h5ad"
        adata.write_h5ad(path)
        handle = ad.read_h5ad(path, backed="r")
        handles.append(handle)
        return handle

    yield open_
    for handle in handles:
        handle.file.close()


def test_backed_file_gives_the_same_minibatches_as_in_memory(backed):
    adata = _counts()
    on_disk = backed(adata)
    options = {
        "counts": True, "batch_key": "batch", "use_hvg": True, "n_top_genes": 50,
        "categorical_covariate_keys": ["donor"], "continuous_covariate_keys": ["pct_mito"],
        "seed": 2,
    }  # fmt: skip
    memory = prepare_data(adata, **options)
    disk = prepare_data(on_disk, **options)
    assert disk.train.matrix is not adata.X and disk.source == memory.source == "adata.X"
    assert disk.feature_names == memory.feature_names
    assert disk.preprocessing == memory.preprocessing
    np.testing.assert_array_equal(np.asarray(disk.split), np.asarray(memory.split))
    for name in memory.splits:
        expected, got = _all_batches(memory.splits[name]), _all_batches(disk.splits[name])
        assert set(got) == set(expected) == {
            "x", "index", "batch", "library", "cat_covs", "cont_covs"
        }  # fmt: skip
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name}: {key}")
    query = transform_adata(on_disk, memory.preprocessing, batch_encoder=memory.batch_encoder)
    reference = transform_adata(adata, memory.preprocessing, batch_encoder=memory.batch_encoder)
    for key, values in _all_batches(reference).items():
        np.testing.assert_array_equal(_all_batches(query)[key], values, err_msg=key)


def test_backed_file_with_non_integer_values_is_refused(backed):
    adata = _counts(200, 60)
    _log_normalised(adata)
    on_disk = backed(adata)
    with pytest.raises(ValueError, match=r"non-integer values .*layer=\"counts\""):
        prepare_data(on_disk, counts=True)


# --------------------------------------------------------------------------- MuData


@pytest.fixture
def count_mudata():
    rna = _counts(300, 80)
    prot = ad.AnnData(
        np.random.default_rng(0).poisson(20.0, (300, 6)).astype(np.float32),
        obs=pd.DataFrame(index=rna.obs_names),
        var=pd.DataFrame(index=[f"prot{i}" for i in range(6)]),
    )
    pct = rna.obs.pop("pct_mito")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = MuData({"rna": rna, "prot": prot})
    mdata.obs["rna:pct_mito"] = pct.to_numpy()  # only at the MuData level, "mod:column" name
    mdata.obs["site"] = pd.Categorical(np.where(np.arange(300) % 3 == 0, "north", "south"))
    return mdata


def test_mudata_covariates_from_the_modality_and_mod_column_names(count_mudata, unchanged):
    mdata = count_mudata
    rna = mdata.mod["rna"]
    check = unchanged(mdata)
    prepared = prepare_data(
        mdata, mod="rna", counts=True, batch_key="batch",
        categorical_covariate_keys=["donor", "site", "rna:cell_type"],
        continuous_covariate_keys=["rna:pct_mito"],
    )  # fmt: skip
    check()
    assert prepared.source == "mdata.mod['rna'].X"
    got = _all_batches(prepared.train)
    rows = got["index"]
    np.testing.assert_array_equal(got["library"][:, 0], _row_sums(rna.X[rows]))
    # "donor": the modality's .obs; "site": the MuData's .obs; "rna:cell_type": explicit modality
    np.testing.assert_array_equal(
        got["cat_covs"][:, 0], rna.obs["donor"].cat.codes.to_numpy()[rows]
    )
    np.testing.assert_array_equal(got["cat_covs"][:, 1], (rows % 3 != 0).astype(np.int64))
    np.testing.assert_array_equal(
        got["cat_covs"][:, 2], rna.obs["cell_type"].cat.codes.to_numpy()[rows]
    )
    np.testing.assert_array_equal(
        got["cont_covs"][:, 0], mdata.obs["rna:pct_mito"].to_numpy(np.float32)[rows]
    )
    assert [encoder.key for encoder in prepared.covariates.categorical] == [
        "donor", "site", "rna:cell_type"
    ]  # fmt: skip
    # the same names resolve on a query of the same MuData
    query = transform_adata(mdata, prepared.preprocessing, batch_encoder=prepared.batch_encoder)
    everything = _all_batches(query)
    for key in ("cat_covs", "cont_covs", "library"):
        np.testing.assert_array_equal(everything[key][rows], got[key], err_msg=key)


def test_mudata_plain_names_also_find_mod_columns_and_missing_ones_list_places(count_mudata):
    mdata = count_mudata
    # "pct_mito" is not in the modality's .obs, so mdata.obs["rna:pct_mito"] is used
    plain = prepare_data(mdata, mod="rna", counts=True, continuous_covariate_keys=["pct_mito"])
    got = _all_batches(plain.train)
    np.testing.assert_array_equal(
        got["cont_covs"][:, 0], mdata.obs["rna:pct_mito"].to_numpy(np.float32)[got["index"]]
    )
    with pytest.raises(
        MissingKeyError,
        match=r"continuous covariate 'depth' in mdata\.mod\['rna'\]\.obs .*mdata\.obs",
    ):
        prepare_data(mdata, mod="rna", counts=True, continuous_covariate_keys=["depth"])


# --------------------------------------------------------------------------- queries


@pytest.fixture
def trained_counts():
    adata = _counts()
    prepared = prepare_data(
        adata, counts=True, batch_key="batch", use_hvg=True, n_top_genes=50,
        categorical_covariate_keys=["donor"], continuous_covariate_keys=["pct_mito"],
    )  # fmt: skip
    return adata, prepared


def test_query_with_shuffled_genes_gives_the_same_minibatches(trained_counts, unchanged):
    adata, prepared = trained_counts
    order = np.random.default_rng(4).permutation(adata.n_vars)
    query = adata[:, order].copy()
    check = unchanged(query)
    shuffled = transform_adata(query, prepared.preprocessing, batch_encoder=prepared.batch_encoder)
    check()
    reference = transform_adata(adata, prepared.preprocessing, batch_encoder=prepared.batch_encoder)
    expected = _all_batches(reference)
    got = _all_batches(shuffled)
    assert set(got) == {"x", "index", "batch", "library", "cat_covs", "cont_covs"}
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    columns = adata.var_names.get_indexer(prepared.feature_names)
    np.testing.assert_array_equal(got["x"], _dense(adata.X[:, columns]))


def test_query_without_the_batch_column_is_refused(trained_counts, unchanged):
    adata, prepared = trained_counts
    query = adata.copy()
    del query.obs["batch"]
    check = unchanged(query)
    with pytest.raises(
        MissingKeyError, match=r"trained with batch_key='batch'.*'batch_0', 'batch_1'"
    ):
        transform_adata(query, prepared.preprocessing, batch_encoder=prepared.batch_encoder)
    check()


def test_query_with_an_unseen_batch_names_it(trained_counts, unchanged):
    adata, prepared = trained_counts
    query = adata.copy()
    query.obs["batch"] = query.obs["batch"].cat.add_categories("batch_new")
    query.obs.loc[query.obs_names[:3], "batch"] = "batch_new"
    check = unchanged(query)
    with pytest.raises(ValueError, match=r"'batch' has values the model never saw: 'batch_new'"):
        transform_adata(query, prepared.preprocessing, batch_encoder=prepared.batch_encoder)
    check()


def test_query_covariate_problems_name_the_column(trained_counts):
    adata, prepared = trained_counts
    unseen = adata.copy()
    unseen.obs["donor"] = unseen.obs["donor"].cat.add_categories("d9")
    unseen.obs.loc[unseen.obs_names[0], "donor"] = "d9"
    with pytest.raises(ValueError, match=r"'donor' has values the model never saw: 'd9'"):
        transform_adata(unseen, prepared.preprocessing, batch_encoder=prepared.batch_encoder)
    missing = adata.copy()
    del missing.obs["pct_mito"]
    with pytest.raises(MissingKeyError, match=r"continuous covariate 'pct_mito'"):
        transform_adata(missing, prepared.preprocessing, batch_encoder=prepared.batch_encoder)


def test_query_of_non_integer_values_is_refused(trained_counts):
    adata, prepared = trained_counts
    query = adata.copy()
    _log_normalised(query)
    with pytest.raises(ValueError, match=r"non-integer values .*layer=\"counts\""):
        transform_adata(query, prepared.preprocessing, batch_encoder=prepared.batch_encoder)


def test_hvgs_with_a_one_cell_batch_are_refused_not_crashed(unchanged):
    # skmisc's loess inside scanpy's seurat_v3 crashes the process (segfault) on a batch of one cell
    adata = _counts(300, 120)
    batches = adata.obs["batch"].astype(str).to_numpy()
    batches[0] = "tiny"
    adata.obs["batch"] = pd.Categorical(batches)
    adata.obs["split"] = np.where(np.arange(300) < 250, "train", "val")
    check = unchanged(adata)
    with pytest.raises(
        ValueError,
        match=r"batches of the training split 'tiny' \(1 cell\(s\), 0 varying genes\) need at least"
        r" 2 cells and 10 genes .*use_hvg=False",
    ):
        prepare_data(
            adata, counts=True, use_hvg=True, n_top_genes=30, batch_key="batch", split_key="split"
        )
    check()
    # without the gene ranking the same data is fine
    prepared = prepare_data(adata, counts=True, batch_key="batch", split_key="split")
    assert prepared.batch_encoder.categories == ("batch_0", "batch_1", "tiny")


def test_hvgs_of_a_batch_with_few_cells_give_a_clear_error():
    adata = _counts(300, 120)
    matrix = adata.X.toarray()
    matrix[:2] = 1
    matrix[1, :12] = 0  # 12 varying genes, all with the same mean and variance: a singular loess
    adata.X = sp.csr_matrix(matrix)
    batches = adata.obs["batch"].astype(str).to_numpy()
    batches[:2] = "small"
    adata.obs["batch"] = pd.Categorical(batches)
    adata.obs["split"] = "train"
    with pytest.raises(ValueError, match=r"flavor='seurat_v3'.*remove or merge small batches"):
        prepare_data(
            adata, counts=True, use_hvg=True, n_top_genes=30, batch_key="batch", split_key="split"
        )
