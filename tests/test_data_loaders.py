"""Minibatch loading: the batch dictionary, epochs and shuffling, backed files, torch Dataset."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from anndata.abc import CSRDataset
from torch.utils.data import DataLoader

from scdlkit import prepare_data, transform_adata
from scdlkit.data import MinibatchLoader, SplitData, loaders
from scdlkit.data.transform import FeatureTransform

PREPROCESSING = {
    "none": {},
    "log": {"normalize": True, "log1p": True},
    "scaled": {"normalize": True, "log1p": True, "scale": True},
    "hvg": {"normalize": True, "log1p": True, "scale": True, "use_hvg": True, "n_top_genes": 40},
}


@pytest.fixture
def prepared(synthetic):
    return prepare_data(
        synthetic, normalize=True, log1p=True, scale=True, label_key="cell_type", batch_key="batch"
    )


@pytest.fixture
def backed_path(synthetic, tmp_path):
    path = tmp_path / "synthetic.h5ad"
    synthetic.write_h5ad(path)
    return path


@pytest.fixture
def open_backed():
    handles = []

    def read(path):
        adata = ad.read_h5ad(path, backed="r")
        handles.append(adata)
        return adata

    yield read
    for adata in handles:
        adata.file.close()


# --------------------------------------------------------------------------- batch dictionary


def test_batch_dictionary_contract(prepared, synthetic):
    batch = next(iter(prepared.train.loader(batch_size=32)))
    assert set(batch) == {"x", "y", "batch", "index"}
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (32, synthetic.n_vars)
    for key in ("y", "batch", "index"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (32,)
    rows = batch["index"].numpy()
    np.testing.assert_array_equal(rows, prepared.train.rows[:32])
    expected_y = prepared.label_encoder.encode(synthetic.obs["cell_type"].iloc[rows])
    np.testing.assert_array_equal(batch["y"].numpy(), expected_y)
    expected_batch = prepared.batch_encoder.encode(synthetic.obs["batch"].iloc[rows])
    np.testing.assert_array_equal(batch["batch"].numpy(), expected_batch)


def test_no_labels_means_no_y_or_batch(synthetic):
    prepared = prepare_data(synthetic)
    batch = next(iter(prepared.train.loader(batch_size=8)))
    assert set(batch) == {"x", "index"}


def test_loader_equals_to_numpy(prepared, collect):
    got = collect(prepared.val.loader(batch_size=17))
    np.testing.assert_array_equal(got["x"], prepared.val.to_numpy())
    np.testing.assert_array_equal(got["index"], prepared.val.rows)


# --------------------------------------------------------------------------- epochs and order


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_cell_once_per_epoch(prepared, collect, shuffle):
    loader = prepared.train.loader(batch_size=64, shuffle=shuffle, seed=5)
    sizes = [len(batch["index"]) for batch in loader]
    assert sizes == [64, 64, 64, 18]
    assert len(loader) == 4
    for epoch in range(3):
        loader.set_epoch(epoch)
        index = collect(loader)["index"]
        assert len(index) == len(prepared.train)
        np.testing.assert_array_equal(np.sort(index), prepared.train.rows)


def test_shuffle_differs_between_epochs_and_is_reproducible(prepared, collect):
    loader = prepared.train.loader(batch_size=50, shuffle=True, seed=11)
    epoch0 = collect(loader)["index"]
    loader.set_epoch(1)
    epoch1 = collect(loader)["index"]
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(epoch0, prepared.train.rows)

    again = prepared.train.loader(batch_size=50, shuffle=True, seed=11)
    np.testing.assert_array_equal(collect(again)["index"], epoch0)
    again.set_epoch(1)
    np.testing.assert_array_equal(collect(again)["index"], epoch1)
    # the order of an epoch does not depend on how often the loader was iterated before
    np.testing.assert_array_equal(collect(again)["index"], epoch1)

    other_seed = prepared.train.loader(batch_size=50, shuffle=True, seed=12)
    assert not np.array_equal(collect(other_seed)["index"], epoch0)


def test_unshuffled_order_is_split_order(prepared, collect):
    loader = prepared.test.loader(batch_size=7, shuffle=False)
    loader.set_epoch(3)
    np.testing.assert_array_equal(collect(loader)["index"], prepared.test.rows)


@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_last(prepared, collect, shuffle):
    n = len(prepared.train)  # 210
    loader = prepared.train.loader(batch_size=64, shuffle=shuffle, drop_last=True)
    assert len(loader) == n // 64 == 3
    sizes = [len(batch["x"]) for batch in loader]
    assert sizes == [64, 64, 64]
    index = collect(loader)["index"]
    assert len(np.unique(index)) == 192
    assert set(index) <= set(prepared.train.rows)


def test_batch_size_edge_cases(prepared, collect):
    single = prepared.val.loader(batch_size=1)
    assert len(single) == len(prepared.val)
    assert all(batch["x"].shape == (1, prepared.input_dim) for batch in single)
    whole = list(prepared.val.loader(batch_size=10_000))
    assert len(whole) == 1 and whole[0]["x"].shape[0] == len(prepared.val)
    assert list(prepared.val.loader(batch_size=10_000, drop_last=True)) == []
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        prepared.val.loader(batch_size=0)


# --------------------------------------------------------------------------- fast path


def test_one_vectorised_transform_per_minibatch(prepared, monkeypatch):
    calls = []
    original = FeatureTransform.transform_rows

    def counting(self, block, rows):
        calls.append(rows.shape[0])
        return original(self, block, rows)

    def refuse(self, position):
        raise AssertionError("the fast loader must not go through __getitem__")

    monkeypatch.setattr(FeatureTransform, "transform_rows", counting)
    monkeypatch.setattr(SplitData, "__getitem__", refuse)
    loader = prepared.train.loader(batch_size=64, shuffle=True)
    assert len(list(loader)) == 4
    assert calls == [64, 64, 64, 18]


def test_sparse_source_is_never_densified(prepared, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("the source matrix was densified")

    for cls in (sp.csr_matrix, sp.csr_array):
        monkeypatch.setattr(cls, "toarray", refuse)
        monkeypatch.setattr(cls, "todense", refuse)
    batches = list(prepared.train.loader(batch_size=64, shuffle=True))
    assert sum(len(b["x"]) for b in batches) == len(prepared.train)
    assert prepared.train.matrix.format == "csr"


def test_torch_dataloader_gives_the_same_x(prepared, collect):
    dataset = prepared.train
    assert isinstance(dataset, torch.utils.data.Dataset)
    slow = collect(DataLoader(dataset, batch_size=32, shuffle=False))
    fast = collect(dataset.loader(batch_size=32, shuffle=False))
    assert set(slow) == set(fast) == {"x", "y", "batch", "index"}
    for key in fast:
        assert slow[key].dtype == fast[key].dtype
        np.testing.assert_array_equal(slow[key], fast[key])


def test_split_data_items(prepared):
    split = prepared.val
    cell = split[3]
    assert set(cell) == {"x", "y", "batch", "index"}
    assert cell["x"].shape == (prepared.input_dim,)
    assert cell["index"].item() == split.rows[3]
    np.testing.assert_array_equal(split[-1]["x"].numpy(), split.to_numpy()[-1])
    with pytest.raises(IndexError, match=f"Cell {len(split)} is out of range"):
        split[len(split)]
    assert (
        repr(split)
        == f"SplitData('val': {len(split)} cells x {prepared.input_dim} features, y, batch)"
    )
    assert split.n_obs == len(split) == 45


def test_loader_over_transform_adata(prepared, synthetic, collect):
    data = transform_adata(synthetic, prepared.preprocessing, label_encoder=prepared.label_encoder)
    got = collect(data.loader(batch_size=100, shuffle=True, seed=1))
    np.testing.assert_array_equal(np.sort(got["index"]), np.arange(synthetic.n_obs))
    train = np.isin(got["index"], prepared.train.rows)
    order = np.argsort(got["index"][train])
    np.testing.assert_allclose(
        got["x"][train][order], prepared.train.to_numpy(), rtol=1e-6, atol=1e-6
    )


def test_minibatch_loader_is_exported():
    assert MinibatchLoader is loaders.MinibatchLoader


# --------------------------------------------------------------------------- backed


def _sorted_by_index(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(batch["index"], kind="stable")
    return {key: value[order] for key, value in batch.items()}


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("options", list(PREPROCESSING), ids=list(PREPROCESSING))
@pytest.mark.parametrize("block_rows", [None, 50])
def test_backed_equals_in_memory(
    synthetic, backed_path, open_backed, collect, shuffle, options, block_rows
):
    backed = open_backed(backed_path)
    kwargs = {**PREPROCESSING[options], "label_key": "cell_type", "batch_key": "batch"}
    in_memory = prepare_data(synthetic, **kwargs)
    from_disk = prepare_data(backed, **kwargs)
    assert isinstance(from_disk.train.matrix, CSRDataset)  # read from disk, not loaded
    assert from_disk.feature_names == in_memory.feature_names
    assert from_disk.preprocessing == in_memory.preprocessing
    np.testing.assert_array_equal(from_disk.split, in_memory.split)
    for name in ("train", "val", "test"):
        memory_loader = in_memory.splits[name].loader(batch_size=32, shuffle=shuffle, seed=4)
        disk_loader = from_disk.splits[name].loader(
            batch_size=32, shuffle=shuffle, seed=4, block_rows=block_rows
        )
        assert [len(b["x"]) for b in disk_loader] == [len(b["x"]) for b in memory_loader]
        memory, disk = collect(memory_loader), collect(disk_loader)
        if not shuffle:
            np.testing.assert_array_equal(disk["index"], memory["index"])
        memory, disk = _sorted_by_index(memory), _sorted_by_index(disk)
        np.testing.assert_array_equal(disk["index"], in_memory.splits[name].rows)
        for key in ("x", "y", "batch", "index"):
            np.testing.assert_allclose(disk[key], memory[key], rtol=1e-6, atol=1e-6)


def test_backed_dense_equals_in_memory(synthetic, tmp_path, open_backed, collect):
    synthetic.X = synthetic.X.toarray().astype(np.float32)
    path = tmp_path / "dense.h5ad"
    synthetic.write_h5ad(path)
    backed = open_backed(path)
    kwargs = {**PREPROCESSING["hvg"], "label_key": "cell_type"}
    in_memory, from_disk = prepare_data(synthetic, **kwargs), prepare_data(backed, **kwargs)
    assert from_disk.feature_names == in_memory.feature_names
    for shuffle in (False, True):
        memory = _sorted_by_index(collect(in_memory.train.loader(batch_size=40, shuffle=shuffle)))
        disk = _sorted_by_index(
            collect(from_disk.train.loader(batch_size=40, shuffle=shuffle, block_rows=64))
        )
        np.testing.assert_array_equal(disk["index"], memory["index"])
        np.testing.assert_allclose(disk["x"], memory["x"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        from_disk.val.to_numpy(), in_memory.val.to_numpy(), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(from_disk.val[2]["x"], in_memory.val[2]["x"], rtol=1e-6, atol=1e-6)


def test_backed_split_data_items_and_to_numpy(synthetic, backed_path, open_backed):
    kwargs = PREPROCESSING["scaled"]
    in_memory, from_disk = (
        prepare_data(synthetic, **kwargs),
        prepare_data(open_backed(backed_path), **kwargs),
    )
    np.testing.assert_allclose(
        from_disk.test.to_numpy(), in_memory.test.to_numpy(), rtol=1e-6, atol=1e-6
    )
    for position in (0, 7, -1):
        np.testing.assert_allclose(
            from_disk.test[position]["x"], in_memory.test[position]["x"], rtol=1e-6, atol=1e-6
        )
    assert repr(from_disk.test).endswith(", backed)")


def test_backed_loader_reads_disjoint_contiguous_blocks(
    synthetic, backed_path, open_backed, monkeypatch, collect
):
    reads = []
    original = loaders.read_row_block

    def recording(matrix, start, stop):
        reads.append((start, stop))
        return original(matrix, start, stop)

    monkeypatch.setattr(loaders, "read_row_block", recording)
    prepared = prepare_data(open_backed(backed_path), normalize=True, log1p=True)
    loader = prepared.train.loader(batch_size=16, shuffle=True, seed=2, block_rows=50)
    orders = []
    for epoch in range(3):
        reads.clear()
        loader.set_epoch(epoch)
        index = collect(loader)["index"]
        np.testing.assert_array_equal(np.sort(index), prepared.train.rows)
        # one read per block of 50 source rows holding training cells (300 rows: 6 blocks),
        # inside that block: memory is bounded by block_rows however sparse the split is
        assert len(reads) == len(np.unique(prepared.train.rows // 50)) == 6
        assert all(start // 50 == (stop - 1) // 50 for start, stop in reads)
        spans = sorted(reads)
        assert all(stop <= start for (_, stop), (start, _) in zip(spans, spans[1:], strict=False))
        assert sum(stop - start for start, stop in reads) <= synthetic.n_obs
        orders.append(list(reads))
    # the blocks are visited in a new random order each epoch
    assert len({tuple(order) for order in orders}) > 1


def test_backed_shuffle_is_reproducible_and_changes_per_epoch(
    synthetic, backed_path, open_backed, collect
):
    prepared = prepare_data(open_backed(backed_path))
    loader = prepared.train.loader(batch_size=16, shuffle=True, seed=8, block_rows=60)
    epoch0 = collect(loader)["index"]
    loader.set_epoch(1)
    epoch1 = collect(loader)["index"]
    assert not np.array_equal(epoch0, epoch1)
    again = prepared.train.loader(batch_size=16, shuffle=True, seed=8, block_rows=60)
    np.testing.assert_array_equal(collect(again)["index"], epoch0)


def test_backed_drop_last(synthetic, backed_path, open_backed, collect):
    prepared = prepare_data(open_backed(backed_path))
    loader = prepared.train.loader(batch_size=64, shuffle=True, drop_last=True, block_rows=50)
    sizes = [len(batch["x"]) for batch in loader]
    assert sizes == [64, 64, 64]
    assert len(np.unique(collect(loader)["index"])) == 192


def test_backed_reads_of_a_sparse_split_span_at_most_block_rows(
    synthetic, backed_path, open_backed, monkeypatch
):
    # a validation split holds 15% of the cells: a block of its cells must not
    # read every source row between its first and last cell
    reads = []
    original = loaders.read_row_block

    def recording(matrix, start, stop):
        reads.append(stop - start)
        return original(matrix, start, stop)

    monkeypatch.setattr(loaders, "read_row_block", recording)
    prepared = prepare_data(open_backed(backed_path), val_size=0.1, test_size=0.1)
    batches = list(prepared.val.loader(batch_size=64, block_rows=40))
    assert sum(len(b["index"]) for b in batches) == len(prepared.val)
    assert max(reads) <= 40
