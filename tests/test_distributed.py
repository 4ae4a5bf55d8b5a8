"""Multi-process training: sharding, strategy selection and a real 2-rank torchrun run with gloo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.neighbors import KNeighborsClassifier

import scdlkit
from scdlkit import Trainer, create_model, prepare_data
from scdlkit.data.loaders import shard
from scdlkit.train import distributed

sys.path.insert(0, str(Path(__file__).parent))
from ddp_fit_script import COUNT_OPTIONS, FIT_OPTIONS, dataset  # noqa: E402

SCRIPT = Path(__file__).parent / "ddp_fit_script.py"


# --------------------------------------------------------------------------- sharding


@given(n=st.integers(0, 300), world=st.integers(1, 8))
def test_uneven_shards_partition_the_order(n, world):
    order = np.random.default_rng(n).permutation(n)
    parts = [shard(order, rank, world, even=False) for rank in range(world)]
    np.testing.assert_array_equal(np.concatenate(parts), order)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@given(n=st.integers(1, 300), world=st.integers(1, 8))
def test_even_shards_have_equal_length_and_cover_every_cell(n, world):
    order = np.random.default_rng(n).permutation(n)
    parts = [shard(order, rank, world, even=True) for rank in range(world)]
    assert {len(part) for part in parts} == {-(-n // world)}
    assert set(np.concatenate(parts)) == set(order)


@pytest.mark.parametrize("backed", [False, True])
def test_loader_shards_cover_the_split_and_step_together(synthetic, tmp_path, backed):
    if backed:
        synthetic.write_h5ad(tmp_path / "x.h5ad")
        source = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    else:
        source = synthetic
    train = prepare_data(source, normalize=True, log1p=True).train
    loaders = [
        train.loader(batch_size=32, shuffle=True, seed=1, num_replicas=3, rank=r, block_rows=50)
        for r in range(3)
    ]
    per_rank = [[batch["index"].numpy() for batch in loader] for loader in loaders]
    assert len({len(batches) for batches in per_rank}) == 1  # same number of steps on every rank
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[2]]
    seen = np.concatenate([np.concatenate(batches) for batches in per_rank])
    assert set(seen) == set(train.rows)
    assert len(seen) - len(train.rows) < 3  # padding repeats at most world - 1 cells
    evaluation = [
        np.concatenate(
            [
                b["index"].numpy()
                for b in train.loader(32, num_replicas=3, rank=r, even_shards=False)
            ]
        )
        for r in range(3)
    ]
    np.testing.assert_array_equal(np.sort(np.concatenate(evaluation)), np.sort(train.rows))
    if backed:
        source.file.close()


def test_loader_rejects_bad_rank(pbmc):
    with pytest.raises(ValueError, match="rank must be in"):
        prepare_data(pbmc).train.loader(32, num_replicas=2, rank=2)


# --------------------------------------------------------------------------- strategy


def test_strategy_single_process_by_default():
    model = create_model("autoencoder", input_dim=5, hidden_dims=(4,), latent_dim=2)
    trainer = Trainer(model, "representation", device="cpu")
    assert trainer.distributed is None and trainer.is_main_process
    assert distributed.is_main_process()


def test_strategy_ddp_outside_torchrun_says_how_to_launch(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    model = create_model("autoencoder", input_dim=5, hidden_dims=(4,), latent_dim=2)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        Trainer(model, "representation", device="cpu", strategy="ddp")
    with pytest.raises(ValueError, match="strategy must be one of"):
        Trainer(model, "representation", device="cpu", strategy="dp")


def test_auto_strategy_ignores_a_one_process_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29999")
    assert not distributed.wants_distributed("auto")
    assert distributed.wants_distributed("ddp")


# --------------------------------------------------------------------------- 2 ranks


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(SCRIPT), str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _knn_accuracy(adata):
    train = (adata.obs["scdlkit_split"] == "train").to_numpy()
    knn = KNeighborsClassifier(15).fit(
        adata.obsm["X_scdlkit"][train], adata.obs["cell_type"][train]
    )
    return knn.score(adata.obsm["X_scdlkit"][~train], adata.obs["cell_type"][~train])


def test_two_gloo_ranks_match_one_process(two_rank_run, tmp_path):
    ranks = [json.loads((two_rank_run / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["world_size"], r["backend"]) for r in ranks] == [(2, "gloo")] * 2
    # rank 0 alone writes the AnnData outputs and one checkpoint
    assert ranks[0]["has_record"] and ranks[0]["has_latent"]
    assert not ranks[1]["has_record"] and not ranks[1]["has_latent"]
    assert len(list((two_rank_run / "checkpoints").iterdir())) == 1
    ddp = ad.read_h5ad(two_rank_run / "result.h5ad")
    history = ddp.uns["scdlkit"]["history"]
    assert len(history["epoch"]) == FIT_OPTIONS["epochs"]

    torch.set_num_threads(1)
    single = dataset()
    scdlkit.tl.fit(single, "vae", checkpoint_dir=tmp_path, **FIT_OPTIONS)
    scdlkit.tl.predict(single, outputs="latent")
    # the same cells in each split, and the same final loss within 5%
    np.testing.assert_array_equal(ddp.obs["scdlkit_split"], single.obs["scdlkit_split"])
    final_ddp = history["val_loss"][-1]
    final_single = single.uns["scdlkit"]["history"]["val_loss"][-1]
    assert abs(final_ddp - final_single) <= 0.05 * final_single, (final_ddp, final_single)
    assert _knn_accuracy(ddp) >= _knn_accuracy(single) - 0.05


def test_two_gloo_ranks_train_the_count_model_like_one_process(two_rank_run, tmp_path):
    ranks = [json.loads((two_rank_run / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["has_count_latent"] and not ranks[1]["has_count_latent"]
    assert len(list((two_rank_run / "count_checkpoints").iterdir())) == 1
    ddp = ad.read_h5ad(two_rank_run / "result.h5ad")
    torch.set_num_threads(1)
    single = dataset()
    scdlkit.tl.fit(single, "count_vae", checkpoint_dir=tmp_path, **COUNT_OPTIONS)
    np.testing.assert_array_equal(ddp.obs["counts_split"], single.obs["counts_split"])
    final_ddp = ddp.uns["counts"]["history"]["val_loss"][-1]
    final_single = single.uns["counts"]["history"]["val_loss"][-1]
    assert abs(final_ddp - final_single) <= 0.05 * final_single, (final_ddp, final_single)


def test_two_rank_checkpoint_predicts_in_one_process(two_rank_run):
    adata = ad.read_h5ad(two_rank_run / "result.h5ad")
    expected = adata.obsm["X_scdlkit"].copy()
    scdlkit.tl.predict(adata, outputs="latent", key_added="again")
    np.testing.assert_allclose(adata.obsm["X_again"], expected, rtol=1e-5, atol=1e-6)
