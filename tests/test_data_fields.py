"""Field access: which matrix and which ``.obs`` columns a call means (AnnData, MuData, backed)."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from anndata.abc import CSRDataset

from scdlkit import prepare_data
from scdlkit._errors import MissingKeyError, format_names
from scdlkit.data import CategoryEncoder, get_obs_column, resolve_fields, resolve_target
from scdlkit.data.matrix import as_source_matrix, is_backed, summarize_matrix

# --------------------------------------------------------------------------- AnnData


def test_x_is_returned_without_copy(pbmc):
    fields = resolve_fields(pbmc)
    assert fields.matrix is pbmc.X
    assert fields.source == "adata.X"
    assert fields.target is pbmc
    assert list(fields.feature_names) == list(pbmc.var_names)
    assert list(fields.obs_names) == list(pbmc.obs_names)
    assert fields.labels is None and fields.batches is None and fields.split is None
    assert not fields.backed


def test_use_raw_reads_raw_matrix_and_names(pbmc):
    fields = resolve_fields(pbmc, use_raw=True)
    # read in place: pbmc68k_reduced's raw.X (unsorted indices) is not copied
    assert fields.matrix is pbmc.raw.X
    assert fields.source == "adata.raw.X"
    assert list(fields.feature_names) == list(pbmc.raw.var_names)


def test_layer_is_read_by_name(synthetic):
    synthetic.layers["counts"] = synthetic.X.copy()
    fields = resolve_fields(synthetic, layer="counts")
    assert fields.matrix is synthetic.layers["counts"]
    assert fields.source == "adata.layers['counts']"


def test_obs_columns_are_aligned(pbmc):
    pbmc.obs["split"] = np.where(np.arange(pbmc.n_obs) % 2, "train", "test")
    fields = resolve_fields(pbmc, label_key="bulk_labels", batch_key="phase", split_key="split")
    pd.testing.assert_series_equal(fields.labels, pbmc.obs["bulk_labels"], check_names=False)
    pd.testing.assert_series_equal(fields.batches, pbmc.obs["phase"], check_names=False)
    assert fields.split.tolist() == pbmc.obs["split"].tolist()
    assert fields.labels.name == "bulk_labels"


def test_missing_layer_lists_existing_layers(synthetic):
    synthetic.layers["spliced"] = synthetic.X
    synthetic.layers["unspliced"] = synthetic.X
    with pytest.raises(KeyError, match=r"layer 'counts'.*'spliced', 'unspliced'.*layer=None"):
        resolve_fields(synthetic, layer="counts")


def test_missing_layer_error_is_missing_key_error_with_plain_message(pbmc):
    with pytest.raises(MissingKeyError) as info:
        resolve_fields(pbmc, layer="counts")
    assert str(info.value).startswith(
        "Did not find layer 'counts' in adata.layers (available: none)"
    )


def test_use_raw_without_raw(synthetic):
    with pytest.raises(KeyError, match=r"use_raw=True but adata\.raw is None"):
        resolve_fields(synthetic, use_raw=True)


def test_layer_and_use_raw_together(pbmc):
    with pytest.raises(ValueError, match=r"either layer='counts' or use_raw=True"):
        resolve_fields(pbmc, layer="counts", use_raw=True)


@pytest.mark.parametrize("role", ["label_key", "batch_key", "split_key"])
def test_missing_obs_column_lists_columns(pbmc, role):
    with pytest.raises(KeyError, match=rf"{role} 'nope' in adata\.obs \(columns: 'bulk_labels'"):
        resolve_fields(pbmc, **{role: "nope"})


def test_mod_with_anndata_is_an_error(pbmc):
    with pytest.raises(ValueError, match=r"mod='rna' only applies to a MuData"):
        resolve_fields(pbmc, mod="rna")


def test_unsupported_object_is_type_error():
    with pytest.raises(TypeError, match="Expected an AnnData or a MuData, got DataFrame"):
        resolve_target(pd.DataFrame({"a": [1]}))


# --------------------------------------------------------------------------- matrix types


def test_dense_input_is_accepted_without_copy(synthetic):
    synthetic.X = synthetic.X.toarray()
    fields = resolve_fields(synthetic)
    assert fields.matrix is synthetic.X
    assert isinstance(fields.matrix, np.ndarray)


def test_duplicate_entries_are_summed_not_overwritten(unchanged):
    # two stored entries for (0, 1): 1 + 2 = 3
    matrix = sp.csr_matrix(
        (np.array([4.0, 1.0, 2.0, 5.0]), np.array([0, 1, 1, 2]), np.array([0, 3, 4])), shape=(2, 3)
    )
    adata = AnnData(matrix)
    check = unchanged(adata)
    fields = resolve_fields(adata)
    check()
    assert fields.matrix is adata.X  # read in place; minibatches sum the duplicates
    prepared = prepare_data(adata, log1p=True, val_size=0, test_size=0)
    expected = np.log1p(np.array([[4.0, 3.0, 0.0], [0.0, 0.0, 5.0]], dtype=np.float32))
    np.testing.assert_allclose(prepared.train.to_numpy(), expected, rtol=1e-6)


def test_csr_array_is_accepted_without_copy(synthetic):
    synthetic.X = sp.csr_array(synthetic.X)
    fields = resolve_fields(synthetic)
    assert fields.matrix is synthetic.X


def test_csc_is_converted_once_with_warning(synthetic):
    csr = synthetic.X.copy()
    synthetic.X = synthetic.X.tocsc()
    with pytest.warns(UserWarning, match=r"adata\.X is a CSC matrix; converting it to CSR once"):
        fields = resolve_fields(synthetic)
    assert sp.issparse(fields.matrix) and fields.matrix.format == "csr"
    assert (fields.matrix != csr).nnz == 0
    # the user's matrix is left as it was
    assert synthetic.X.format == "csc"


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_np_matrix_becomes_ndarray():
    out = as_source_matrix(np.matrix([[1.0, 2.0]]), source="m")
    assert type(out) is np.ndarray
    assert out.tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize(
    ("values", "dtype_text"),
    [
        (np.array([["a", "b"], ["c", "d"]]), "<U1"),
        (np.full((2, 2), 1 + 2j), "complex128"),
        (np.array([[object(), 1], [2, 3]], dtype=object), "object"),
    ],
)
def test_non_numeric_layer_is_type_error(values, dtype_text):
    adata = AnnData(np.ones((2, 2), dtype=np.float32))
    adata.layers["bad"] = values
    with pytest.raises(
        TypeError, match=rf"adata\.layers\['bad'\] has non-numeric dtype {dtype_text}"
    ):
        resolve_fields(adata, layer="bad")


def test_unsupported_matrix_type_and_dimensions():
    with pytest.raises(TypeError, match=r"m is a list, which scdlkit cannot read"):
        as_source_matrix([[1, 2]], source="m")
    with pytest.raises(TypeError, match=r"m must be 2-dimensional.*\(3,\)"):
        as_source_matrix(np.ones(3), source="m")


@pytest.mark.parametrize("shape", [(0, 5), (5, 0)])
def test_empty_anndata(shape):
    adata = AnnData(np.zeros(shape, dtype=np.float32))
    n_obs, n_vars = shape
    with pytest.raises(
        ValueError, match=rf"adata\.X is empty \({n_obs} cells x {n_vars} features\)"
    ):
        resolve_fields(adata)


def test_duplicate_var_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's own notice
        adata = AnnData(
            np.ones((3, 4), dtype=np.float32),
            var=pd.DataFrame(index=["g1", "g2", "g1", "g2"]),
        )
    with pytest.raises(
        ValueError, match=r"2 duplicated feature names \('g1', 'g2'\).*var_names_make_unique"
    ):
        resolve_fields(adata)


def test_backed_csr_is_read_from_disk(synthetic, tmp_path):
    path = tmp_path / "counts.h5ad"
    synthetic.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        fields = resolve_fields(backed, label_key="cell_type")
        assert isinstance(fields.matrix, CSRDataset)
        assert fields.backed and is_backed(fields.matrix)
        assert fields.matrix.shape == synthetic.shape
        assert fields.labels.tolist() == synthetic.obs["cell_type"].tolist()
    finally:
        backed.file.close()


def test_backed_dense_is_read_from_disk(synthetic, tmp_path):
    synthetic.X = synthetic.X.toarray()
    path = tmp_path / "dense.h5ad"
    synthetic.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        fields = resolve_fields(backed)
        assert isinstance(fields.matrix, h5py.Dataset)
        assert fields.backed
    finally:
        backed.file.close()


def test_backed_csc_is_loaded_and_converted_with_warning(synthetic, tmp_path):
    csr = synthetic.X.copy()
    synthetic.X = synthetic.X.tocsc()
    path = tmp_path / "csc.h5ad"
    synthetic.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.warns(UserWarning, match=r"backed CSC matrix; loading it into memory"):
            fields = resolve_fields(backed)
        assert sp.issparse(fields.matrix) and fields.matrix.format == "csr"
        assert (fields.matrix != csr).nnz == 0
        assert not fields.backed
    finally:
        backed.file.close()


# --------------------------------------------------------------------------- MuData


def test_mudata_requires_mod(small_mudata):
    with pytest.raises(ValueError, match=r"pass mod=.*available: 'rna', 'prot'"):
        resolve_fields(small_mudata)


def test_mudata_missing_modality_lists_modalities(small_mudata):
    with pytest.raises(
        KeyError, match=r"modality 'atac' in mdata\.mod \(available: 'rna', 'prot'\)"
    ):
        resolve_fields(small_mudata, mod="atac")
    with pytest.raises(KeyError, match=r"modality 'atac'"):
        resolve_fields(small_mudata, mod=["rna", "atac"])


def test_mudata_modality_listed_twice(small_mudata):
    with pytest.raises(ValueError, match="lists a modality twice"):
        resolve_fields(small_mudata, mod=["rna", "rna"])


def test_mudata_single_modality(small_mudata):
    rna = small_mudata.mod["rna"]
    fields = resolve_fields(small_mudata, mod="rna", label_key="cell_type")
    assert fields.target is rna
    assert fields.matrix is rna.X
    assert fields.source == "mdata.mod['rna'].X"
    assert fields.labels.tolist() == rna.obs["cell_type"].tolist()


def test_mudata_missing_layer_names_modality(small_mudata):
    with pytest.raises(KeyError, match=r"layer 'counts' in mdata\.mod\['prot'\]\.layers"):
        resolve_fields(small_mudata, mod="prot", layer="counts")


def test_mudata_column_lookup_order(small_mudata):
    prot = small_mudata.mod["prot"]
    # modality's own .obs
    fields = resolve_fields(small_mudata, mod="prot", label_key="qc")
    assert fields.labels.tolist() == prot.obs["qc"].tolist()
    # MuData-level column, aligned to the modality's cells
    fields = resolve_fields(small_mudata, mod="prot", batch_key="donor")
    expected = small_mudata.obs["donor"].reindex(prot.obs_names)
    assert fields.batches.tolist() == expected.tolist()
    # explicit "mod:column" addresses another modality's column
    fields = resolve_fields(small_mudata, mod="prot", label_key="rna:cell_type")
    expected = small_mudata.mod["rna"].obs["cell_type"].reindex(prot.obs_names)
    assert fields.labels.tolist() == expected.tolist()
    assert fields.labels.name == "rna:cell_type"


def test_mudata_missing_column_lists_every_place(small_mudata):
    pattern = (
        r"label_key 'cell_type' in mdata\.mod\['prot'\]\.obs \(columns: 'qc'\); "
        r"mdata\.obs \(columns: .*'donor'"
    )
    with pytest.raises(KeyError, match=pattern):
        resolve_fields(small_mudata, mod="prot", label_key="cell_type")


def test_mudata_modalities_side_by_side(small_mudata):
    rna, prot = small_mudata.mod["rna"], small_mudata.mod["prot"]
    fields = resolve_fields(
        small_mudata, mod=["rna", "prot"], label_key="cell_type", batch_key="donor"
    )
    shared = [name for name in small_mudata.obs_names if name in set(prot.obs_names)]
    assert list(fields.obs_names) == shared
    assert fields.target is small_mudata
    assert fields.source == "mdata.mod['rna'] + mdata.mod['prot']"
    assert list(fields.feature_names) == [f"rna:{g}" for g in rna.var_names] + [
        f"prot:{p}" for p in prot.var_names
    ]
    assert sp.issparse(fields.matrix) and fields.matrix.format == "csr"
    expected = np.hstack(
        [rna[shared].X.toarray(), prot[shared].X],
    )
    np.testing.assert_array_equal(fields.matrix.toarray(), expected)
    assert fields.labels.tolist() == rna.obs["cell_type"].reindex(shared).tolist()
    assert fields.batches.tolist() == small_mudata.obs["donor"].reindex(shared).tolist()


def test_citeseq_modalities(citeseq):
    fields = resolve_fields(citeseq, mod="rna", batch_key="batch")
    assert fields.matrix.shape == (400, 15792)
    assert fields.source == "mdata.mod['rna'].X"
    assert fields.batches.value_counts().to_dict() == {
        "pbmc_10k_protein_v3": 200,
        "pbmc_5k_protein_v3": 200,
    }
    both = resolve_fields(citeseq, mod=["rna", "prot"], batch_key="batch")
    assert both.matrix.shape == (400, 15792 + 14)
    assert both.feature_names[-14:].str.startswith("prot:").all()
    assert "prot:CD3_TotalSeqB" in set(both.feature_names)
    np.testing.assert_array_equal(
        both.matrix[:, 15792:].toarray(), citeseq.mod["prot"][both.obs_names].X.toarray()
    )


def test_get_obs_column_reindexes(pbmc):
    order = pbmc.obs_names[::-1]
    column = get_obs_column(pbmc, "bulk_labels", order)
    assert column.index.equals(order)
    assert column.tolist() == pbmc.obs["bulk_labels"].iloc[::-1].tolist()


# --------------------------------------------------------------------------- matrix scan


@pytest.mark.parametrize("sparse", [False, True])
def test_summarize_matrix_counts_non_finite(sparse):
    values = np.arange(60, dtype=np.float32).reshape(12, 5)
    values[7, 3] = np.nan
    values[9, 0] = np.inf
    values[11, 4] = -np.inf
    matrix = sp.csr_matrix(values) if sparse else values
    summary = summarize_matrix(matrix)
    assert summary.n_nonfinite == 3
    assert summary.first_nonfinite_row == 7
    assert summary.min_value == 0.0
    assert summary.is_integer


def test_summarize_matrix_minimum_and_integrality():
    assert summarize_matrix(np.array([[0.5, 2.0]])).is_integer is False
    assert summarize_matrix(np.array([[-3, 2]], dtype=np.int16)).min_value == -3.0
    # implicit sparse zeros count as 0
    assert summarize_matrix(sp.csr_matrix(np.array([[0.0, 2.0]]))).min_value == 0.0
    assert summarize_matrix(sp.csr_matrix(np.array([[3.0, 2.0]]))).min_value == 2.0


# --------------------------------------------------------------------------- encoders, messages


def test_category_encoder_keeps_categorical_order_and_drops_unused():
    values = pd.Series(pd.Categorical(["T", "B", "T"], categories=["T", "NK", "B"]))
    encoder = CategoryEncoder.fit(values, key="cell_type")
    assert encoder.categories == ("T", "B")
    np.testing.assert_array_equal(encoder.encode(values), [0, 1, 0])
    assert encoder.decode(np.array([1, 0])).tolist() == ["B", "T"]
    assert CategoryEncoder.from_dict(encoder.to_dict()) == encoder


def test_category_encoder_sorts_plain_values():
    encoder = CategoryEncoder.fit(pd.Series(["b", "a", "c", "a"]), key="k")
    assert encoder.categories == ("a", "b", "c")
    assert encoder.encode(["c", "a"]).dtype == np.int64


def test_category_encoder_unseen_and_missing_values():
    encoder = CategoryEncoder(("B", "T"), key="cell_type")
    with pytest.raises(
        ValueError, match=r"'cell_type' has values the model never saw: 'NK', 'pDC'"
    ):
        encoder.encode(["T", "pDC", "NK"])
    with pytest.raises(
        ValueError, match=r"'cell_type' has 1 missing values \(first at cell 'c2'\)"
    ):
        CategoryEncoder.fit(pd.Series(["T", "B", None], index=["c0", "c1", "c2"]), key="cell_type")


def test_format_names_truncates():
    assert format_names([]) == "none"
    assert format_names(["a", "b"]) == "'a', 'b'"
    text = format_names([f"g{i}" for i in range(25)])
    assert text.endswith("'g19', ... (5 more)")
    assert len(re.findall(r"'g\d+'", text)) == 20
