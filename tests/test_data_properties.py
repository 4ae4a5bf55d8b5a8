"""Property-based tests (hypothesis) of the data layer: odd inputs fail only in documented ways."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from scdlkit import prepare_data
from scdlkit.data import CategoryEncoder, SplitData
from scdlkit.data.splits import draw_split, parse_split_column
from scdlkit.data.transform import FeatureTransform

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    # the only fixture used (``unchanged``) returns a stateless function
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)

DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "float16",
    "float32",
    "float64",
]
DOCUMENTED = (ValueError, TypeError, KeyError)


def rarely(draw, percent: int) -> bool:
    """True in about ``percent`` % of examples (shrinks towards False)."""
    return draw(st.integers(0, 99)) >= 100 - percent


@st.composite
def matrices(draw):
    """A random (n_obs x n_vars) matrix: dtype, sparsity, shape (incl. empty), NaN/Inf, negatives."""
    n_obs = 0 if rarely(draw, 8) else draw(st.integers(1, 40))
    n_vars = 0 if rarely(draw, 8) else draw(st.integers(1, 12))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    sparse = draw(st.booleans()) and dtype != np.float16  # scipy.sparse has no float16
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    high = 2 if dtype == np.bool_ else 200
    values = rng.integers(0, high, size=(n_obs, n_vars)) * (rng.random((n_obs, n_vars)) < density)
    values = values.astype(np.float64)
    if dtype.kind == "f" and draw(st.booleans()):
        values *= rng.random((n_obs, n_vars))  # non-integer values
    if dtype.kind in "fi" and values.size and rarely(draw, 15):
        values[rng.integers(0, n_obs), rng.integers(0, n_vars)] = -draw(st.integers(1, 5))
    n_bad = 0
    if dtype.kind == "f" and values.size and rarely(draw, 25):
        bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        positions = rng.integers(0, values.size, size=draw(st.integers(1, 3)))
        values.ravel()[positions] = bad
        n_bad = len(np.unique(positions))
    matrix = values.astype(dtype)
    if sparse:
        matrix = sp.csr_matrix(matrix)
    return matrix, n_bad


@st.composite
def options(draw, n_obs: int):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kwargs = {
        "normalize": draw(st.booleans()),
        "log1p": draw(st.booleans()),
        "scale": draw(st.booleans()),
        "val_size": draw(st.sampled_from([0.0, 0.1, 0.15, 0.3, 0.5])),
        "test_size": draw(st.sampled_from([0.0, 0.15, 0.3, 0.5])),
        "stratify": draw(st.booleans()),
        "random_state": draw(st.integers(0, 1000)),
    }
    if draw(st.booleans()):
        kwargs["use_hvg"] = True
        kwargs["n_top_genes"] = draw(st.integers(1, 15))
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n_obs)])
    if draw(st.booleans()):
        n_labels = draw(st.integers(1, 4))
        obs["label"] = pd.Categorical(rng.integers(0, n_labels, n_obs).astype(str))
        kwargs["label_key"] = "label"
    if draw(st.booleans()):
        obs["batch"] = rng.integers(0, draw(st.integers(1, 3)), n_obs).astype(str)
        kwargs["batch_key"] = "batch"
        kwargs["batch_aware_split"] = rarely(draw, 20)
    return kwargs, obs


@SETTINGS
@given(data=st.data())
def test_prepare_data_fails_only_in_documented_ways(unchanged, data):
    matrix, n_bad = data.draw(matrices())
    kwargs, obs = data.draw(options(matrix.shape[0]))
    adata = AnnData(matrix, obs=obs)
    adata.var_names = [f"g{i}" for i in range(matrix.shape[1])]
    check = unchanged(adata)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_data(adata, **kwargs)
    except DOCUMENTED as err:
        message = str(err)
        event(f"{type(err).__name__}: {message[:40]}")
        assert message  # every documented error says what went wrong
        sizes_ok = kwargs["val_size"] + kwargs["test_size"] < 1
        if n_bad and 0 not in matrix.shape and sizes_ok and not kwargs.get("batch_aware_split"):
            assert "NaN or infinite" in message
        if 0 in matrix.shape and sizes_ok and not kwargs.get("batch_aware_split"):
            assert "is empty" in message
        prepared = None
    check()
    if prepared is None:
        return
    event("prepared")

    assert n_bad == 0
    n_obs, n_vars = matrix.shape
    # the splits partition the cells
    rows = np.concatenate([split.rows for split in prepared.splits.values()])
    np.testing.assert_array_equal(np.sort(rows), np.arange(n_obs))
    assert len(prepared.split) == n_obs
    if kwargs.get("use_hvg"):
        # scanpy keeps every gene tied with the n-th highest dispersion, so this may exceed n_top_genes
        assert 1 <= prepared.input_dim <= n_vars
    else:
        assert prepared.input_dim == n_vars
    assert len(prepared.feature_names) == prepared.input_dim
    for split in prepared.splits.values():
        batches = list(split.loader(batch_size=7, shuffle=True))
        x = torch.cat([b["x"] for b in batches])
        assert x.dtype == torch.float32 and x.shape == (len(split), prepared.input_dim)
        assert torch.isfinite(x).all()
        if kwargs.get("scale") and kwargs.get("scale_max_value", 10.0) is not None:
            assert x.abs().max() <= 10.0
        if "label_key" in kwargs:
            assert all(b["y"].dtype == torch.int64 for b in batches)


@SETTINGS
@given(matrix_and_bad=matrices(), data=st.data())
def test_sparse_and_dense_rows_agree(matrix_and_bad, data):
    matrix, n_bad = matrix_and_bad
    n_obs, n_vars = matrix.shape
    assume(n_bad == 0 and n_obs > 0 and n_vars > 0)
    dense = matrix.toarray() if sp.issparse(matrix) else matrix
    assume(dense.min() >= 0)
    columns = data.draw(st.permutations(range(n_vars)))[: data.draw(st.integers(1, n_vars))]
    transform = FeatureTransform(
        n_vars,
        columns=np.asarray(columns, dtype=np.int64),
        normalize=data.draw(st.booleans()),
        log1p=data.draw(st.booleans()),
    )
    rows = np.asarray(data.draw(st.lists(st.integers(0, n_obs - 1), min_size=1, max_size=20)))
    from_dense = transform.transform_rows(dense, rows)
    sparse = sp.csr_matrix(dense.astype(np.float32) if dense.dtype == np.float16 else dense)
    from_sparse = transform.transform_rows(sparse, rows)
    expected = dense[rows].astype(np.float64)
    if transform.normalize:
        totals = expected.sum(axis=1, keepdims=True)
        expected = np.divide(expected * 1e4, totals, out=np.zeros_like(expected), where=totals > 0)
    if transform.log1p:
        expected = np.log1p(expected)
    expected = expected[:, columns]
    assert from_dense.dtype == from_sparse.dtype == np.float32
    np.testing.assert_allclose(from_dense, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_sparse, expected, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
    n_obs=st.integers(1, 60),
    batch_size=st.integers(1, 25),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    seed=st.integers(0, 100),
    epoch=st.integers(0, 5),
)
def test_loader_visits_every_cell_once(n_obs, batch_size, shuffle, drop_last, seed, epoch):
    matrix = np.arange(n_obs * 3, dtype=np.float32).reshape(n_obs, 3)
    rows = np.arange(0, n_obs, 2)  # every other source row
    split = SplitData(matrix, rows, FeatureTransform(3), y=rows % 3)
    loader = split.loader(batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
    loader.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader)
    sizes = [len(b["index"]) for b in batches]
    n = len(rows)
    if drop_last:
        assert sizes == [batch_size] * (n // batch_size)
    else:
        assert sum(sizes) == n and all(s == batch_size for s in sizes[:-1])
    if not batches:
        return
    index = torch.cat([b["index"] for b in batches]).numpy()
    assert len(np.unique(index)) == len(index)
    assert set(index) <= set(rows)
    if not shuffle:
        np.testing.assert_array_equal(index, rows[: len(index)])
    x = torch.cat([b["x"] for b in batches]).numpy()
    np.testing.assert_array_equal(x, matrix[index])
    np.testing.assert_array_equal(torch.cat([b["y"] for b in batches]).numpy(), index % 3)
    again = split.loader(batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
    again.set_epoch(epoch)
    np.testing.assert_array_equal(torch.cat([b["index"] for b in again]).numpy(), index)


@SETTINGS
@given(
    n_obs=st.integers(1, 200),
    n_labels=st.integers(1, 6),
    val_size=st.sampled_from([0.0, 0.05, 0.15, 0.25, 0.4]),
    test_size=st.sampled_from([0.0, 0.1, 0.15, 0.3]),
    stratify=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_draw_split_properties(n_obs, n_labels, val_size, test_size, stratify, seed):
    labels = np.random.default_rng(seed).integers(0, n_labels, n_obs)
    kwargs = {"labels": labels, "val_size": val_size, "test_size": test_size, "stratify": stratify}
    try:
        split = draw_split(n_obs, seed=seed, **kwargs)
    except ValueError as err:
        assert "ended up empty" in str(err)
        return
    assert split.shape == (n_obs,)
    assert set(split) <= {"train", "val", "test"}
    assert (val_size == 0) == ("val" not in set(split))
    assert (test_size == 0) == ("test" not in set(split))
    np.testing.assert_array_equal(split, draw_split(n_obs, seed=seed, **kwargs))
    if stratify:
        assert set(labels[split == "train"]) == set(labels)  # every class keeps a training cell
    else:
        n_test = min(round(n_obs * test_size), n_obs - 1)
        assert int((split == "test").sum()) == n_test
        assert int((split == "val").sum()) == min(round(n_obs * val_size), n_obs - 1 - n_test)


ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@st.composite
def spelled(draw, word: str) -> str:
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in word)
    return " " * draw(st.integers(0, 2)) + cased + " " * draw(st.integers(0, 2))


@SETTINGS
@given(data=st.data(), words=st.lists(st.sampled_from(sorted(ALIASES)), min_size=1, max_size=30))
def test_parse_split_column_accepts_aliases_in_any_case(data, words):
    values = pd.Series([data.draw(spelled(word)) for word in words])
    np.testing.assert_array_equal(
        parse_split_column(values, key="fold"), [ALIASES[w] for w in words]
    )


@SETTINGS
@given(
    good=st.lists(st.sampled_from(sorted(ALIASES)), max_size=5),
    bad=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5),
)
def test_parse_split_column_rejects_other_values(good, bad):
    bad = [value for value in bad if value.strip().lower() not in ALIASES]
    assume(bad)
    with pytest.raises(ValueError, match="split_key 'fold' has") as info:
        parse_split_column(pd.Series(good + bad), key="fold")
    assert f"has {len(bad)} cells" in str(info.value)
    for value in dict.fromkeys(bad):
        assert repr(value) in str(info.value)


@SETTINGS
@given(values=st.lists(st.sampled_from(["B", "T", "NK", "1", "pDC"]), min_size=1, max_size=40))
def test_category_encoder_round_trip(values):
    series = pd.Series(values)
    encoder = CategoryEncoder.fit(series, key="cell_type")
    codes = encoder.encode(series)
    assert codes.dtype == np.int64
    assert list(encoder.categories) == sorted(set(values))
    assert list(encoder.decode(codes)) == values
    assert CategoryEncoder.from_dict(encoder.to_dict()) == encoder
