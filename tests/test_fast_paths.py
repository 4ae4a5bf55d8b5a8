"""Fast paths of the Trainer: background prefetch, evaluation batch size, torch.compile opt-in."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from scdlkit import Trainer, create_model, prepare_data
from scdlkit.train.prefetch import prefetch


def _batches(n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise RuntimeError(f"broken batch {i}")
        yield {"x": torch.full((3, 2), float(i)), "index": torch.arange(3) + 3 * i}


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_prefetch_keeps_order_and_content(depth):
    got = [int(batch["x"][0, 0]) for batch in prefetch(_batches(9), depth)]
    assert got == list(range(9))


def test_prefetch_raises_the_producer_error_in_the_consumer():
    seen = []
    with pytest.raises(RuntimeError, match="broken batch 3"):
        for batch in prefetch(_batches(9, fail_at=3), depth=2):
            seen.append(int(batch["x"][0, 0]))
    assert seen == [0, 1, 2]


def test_prefetch_thread_stops_when_the_consumer_stops_early():
    before = threading.active_count()
    iterator = prefetch(_batches(1000), depth=2)
    assert int(next(iterator)["x"][0, 0]) == 0
    iterator.close()  # what a `break` out of the for-loop does
    assert threading.active_count() == before
    assert not any(t.name == "scdlkit-prefetch" for t in threading.enumerate())


@pytest.fixture
def prepared(synthetic):
    return prepare_data(synthetic, normalize=True, log1p=True, label_key="cell_type")


def _train(prepared, name="vae", model_kwargs=None, **kwargs):
    model = create_model(
        name, input_dim=prepared.input_dim, hidden_dims=(32,), latent_dim=4, **(model_kwargs or {})
    )
    trainer = Trainer(
        model, "representation", epochs=3, batch_size=64, device="cpu", progress=False, **kwargs
    )
    return trainer.fit(prepared.train, prepared.val)


def _assert_trains_and_predicts_alike(trainer, reference, prepared, *, loss_rtol, latent_rtol):
    """Same training losses; with the reference's weights loaded, the same test latents."""
    np.testing.assert_allclose(
        trainer.history_frame["train_loss"], reference.history_frame["train_loss"], rtol=loss_rtol
    )
    trainer.model.load_state_dict(reference.model.state_dict())  # same weights: same predictions
    np.testing.assert_allclose(
        trainer.predict_dataset(prepared.test)["latent"],
        reference.predict_dataset(prepared.test)["latent"],
        rtol=latent_rtol,
        atol=latent_rtol / 10,
    )


def test_prefetch_and_eval_batch_size_do_not_change_results(prepared):
    plain = _train(prepared, prefetch=0, eval_batch_size=64)
    fast = _train(prepared, prefetch=3, eval_batch_size=1000)
    np.testing.assert_allclose(
        fast.history_frame["train_loss"], plain.history_frame["train_loss"], rtol=1e-6
    )
    np.testing.assert_allclose(
        fast.history_frame["val_loss"], plain.history_frame["val_loss"], rtol=1e-5
    )
    np.testing.assert_allclose(
        fast.predict_dataset(prepared.test)["latent"],
        plain.predict_dataset(prepared.test)["latent"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_prefetch_auto_is_off_on_cpu_and_invalid_values_are_refused(prepared):
    model = create_model("autoencoder", input_dim=5, hidden_dims=(4,), latent_dim=2)
    trainer = Trainer(model, "representation", device="cpu")
    assert trainer.prefetch == 0 and trainer.eval_batch_size == 4 * trainer.batch_size
    with pytest.raises(ValueError, match="prefetch must be an integer >= 0"):
        Trainer(model, "representation", device="cpu", prefetch=-1)
    with pytest.raises(ValueError, match="eval_batch_size must be an integer > 0"):
        Trainer(model, "representation", device="cpu", eval_batch_size=0)


@pytest.mark.slow
def test_compile_model_trains_and_predicts_like_eager(prepared):
    # a deterministic model: compiled code draws random numbers differently from eager
    deterministic = {"dropout": 0.0}
    eager = _train(prepared, "autoencoder", deterministic)
    compiled = _train(prepared, "autoencoder", deterministic, compile_model=True)
    _assert_trains_and_predicts_alike(compiled, eager, prepared, loss_rtol=1e-2, latent_rtol=1e-4)


# --------------------------------------------------------------------------- data on device

DEVICE_PREPROCESSING = {
    "counts": {},
    "log": {"normalize": True, "log1p": True},
    "hvg_scaled": {
        "normalize": True,
        "log1p": True,
        "use_hvg": True,
        "n_top_genes": 50,
        "scale": True,
    },
}


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("options", list(DEVICE_PREPROCESSING), ids=list(DEVICE_PREPROCESSING))
def test_device_batches_equal_the_host_loader(synthetic, collect, options, dense):
    from scdlkit.data.device_data import DeviceBatches

    if dense:
        synthetic.X = synthetic.X.toarray()
    split = prepare_data(
        synthetic, label_key="cell_type", batch_key="batch", **DEVICE_PREPROCESSING[options]
    ).train
    host = split.loader(batch_size=40, shuffle=True, seed=3, num_replicas=2, rank=1)
    device = DeviceBatches(
        split, torch.device("cpu"), 40, shuffle=True, seed=3, num_replicas=2, rank=1
    )
    host.set_epoch(2)
    device.set_epoch(2)
    assert len(device) == len(host)
    expected, got = collect(host), collect(device)
    assert set(got) == set(expected) == {"x", "y", "batch", "index"}
    for key in ("y", "batch", "index"):
        np.testing.assert_array_equal(got[key], expected[key])
    np.testing.assert_allclose(got["x"], expected["x"], rtol=1e-5, atol=1e-5)


def test_device_batches_sum_duplicate_entries_before_log1p(collect):
    import scipy.sparse as sp

    from scdlkit.data.device_data import DeviceBatches

    # row 0 stores column 1 twice (1 + 2): the value is log1p(3), as in the host loader
    matrix = sp.csr_matrix(
        (np.array([1.0, 2.0, 4.0]), np.array([1, 1, 0]), np.array([0, 2, 3])), shape=(2, 3)
    )
    import anndata as ad

    split = prepare_data(ad.AnnData(matrix), log1p=True, val_size=0, test_size=0).train
    got = collect(DeviceBatches(split, torch.device("cpu"), 8))["x"]
    np.testing.assert_allclose(got, collect(split.loader(8))["x"], rtol=1e-6)
    np.testing.assert_allclose(
        got[np.argsort(split.rows)], np.log1p([[0, 3, 0], [4, 0, 0]]), rtol=1e-6
    )


def test_training_with_data_on_device_matches_host_batches(prepared):
    host = _train(prepared, data_on_device=False)
    device = _train(prepared, data_on_device=True)
    _assert_trains_and_predicts_alike(device, host, prepared, loss_rtol=1e-4, latent_rtol=1e-3)


def test_data_on_device_refuses_backed_data_and_bad_values(synthetic, tmp_path):
    import anndata as ad

    synthetic.write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    split = prepare_data(backed).train
    model = create_model("autoencoder", input_dim=split.n_features, hidden_dims=(4,), latent_dim=2)
    trainer = Trainer(model, "representation", device="cpu", data_on_device=True, epochs=1)
    with pytest.raises(ValueError, match="backed matrix cannot be copied to the device"):
        trainer.fit(split)
    with pytest.raises(ValueError, match="data_on_device must be"):
        Trainer(model, "representation", device="cpu", data_on_device="yes")
    backed.file.close()


# --------------------------------------------------------------------------- output collection


@given(
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=8),
    announced=st.one_of(st.none(), st.integers(0, 200)),
)
def test_output_collector_equals_concatenation(sizes, announced):
    from scdlkit.train.collect import OutputCollector

    rng = np.random.default_rng(len(sizes))
    parts = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
    collector = OutputCollector(announced)
    for part in parts:
        collector.add("latent", part)
        collector.add("index", np.arange(part.shape[0]))
    result = collector.result()
    np.testing.assert_array_equal(result["latent"], np.concatenate(parts))
    np.testing.assert_array_equal(result["index"], np.concatenate([np.arange(n) for n in sizes]))
    assert list(result) == ["latent", "index"]


def test_predict_dataset_keeps_only_the_outputs_asked_for(prepared):
    trainer = _train(prepared)
    everything = trainer.predict_dataset(prepared.test)
    latent = trainer.predict_dataset(prepared.test, include_inputs=False, outputs={"latent"})
    assert set(latent) == {"latent"}
    np.testing.assert_array_equal(latent["latent"], everything["latent"])
    np.testing.assert_array_equal(everything["index"], prepared.test.rows)
