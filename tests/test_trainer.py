import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import scdlkit
from scdlkit import Trainer, create_model, prepare_data
from scdlkit.adapters import wrap_classification_module, wrap_reconstruction_module
from scdlkit.models import ScdlModel
from scdlkit.train import Callback


@pytest.fixture(scope="module")
def prepared():
    return prepare_data(scdlkit.datasets.pbmc68k_reduced(), label_key="bulk_labels")


def test_reference_page_example_runs_verbatim():
    adata = scdlkit.datasets.pbmc68k_reduced()

    prepared = prepare_data(adata, label_key="bulk_labels")
    model = create_model("vae", input_dim=prepared.input_dim, latent_dim=32)

    trainer = Trainer(
        model=model,
        task="representation",
        device="auto",
        epochs=20,
        batch_size=128,
    )

    trainer.fit(prepared.train, prepared.val)
    predictions = trainer.predict_dataset(prepared.test or prepared.val or prepared.train)

    assert predictions["latent"].shape == (len(prepared.test), 32)
    assert predictions["reconstruction"].shape == (len(prepared.test), prepared.input_dim)
    assert np.array_equal(predictions["index"], prepared.test.rows)
    assert np.array_equal(predictions["y"], prepared.test.y)
    frame = trainer.history_frame
    assert list(frame.columns[:3]) == ["epoch", "train_loss", "val_loss"]
    assert {
        "train_reconstruction",
        "train_kl",
        "val_reconstruction",
        "val_kl",
        "lr",
        "seconds",
    } <= set(frame)
    assert frame["epoch"].tolist() == list(range(1, len(frame) + 1))
    assert frame["train_loss"].iloc[-1] < frame["train_loss"].iloc[0]


def test_model_task_mismatch_raises_value_error(prepared):
    model = create_model("mlp_classifier", input_dim=prepared.input_dim, num_classes=10)
    with pytest.raises(ValueError, match="representation"):
        Trainer(model, "representation")


def test_raw_module_without_adapter_raises_value_error():
    with pytest.raises(ValueError, match="wrap"):
        Trainer(nn.Linear(4, 4), "reconstruction")


class _InferenceOnly(ScdlModel):
    supported_tasks = ("representation",)
    supports_training = False

    def __init__(self, *, input_dim: int):
        super().__init__()
        self.input_dim = input_dim
        self.proj = nn.Linear(input_dim, 3)

    def forward(self, x):
        latent = self.proj(x)
        return {"latent": latent, "reconstruction": torch.zeros_like(x)}


def test_inference_only_model_predicts_but_refuses_fit(prepared):
    model = _InferenceOnly(input_dim=prepared.input_dim)
    trainer = Trainer(model, "representation", device="cpu")
    with pytest.raises(NotImplementedError, match="inference-only"):
        trainer.fit(prepared.train)
    out = trainer.predict_dataset(prepared.val)
    with torch.inference_mode():
        expected = model.proj(torch.from_numpy(prepared.val.to_numpy())).numpy()
    assert out["latent"].shape == (len(prepared.val), 3)
    np.testing.assert_allclose(out["latent"], expected, rtol=1e-5, atol=1e-6)


class _LatentOnly(ScdlModel):
    """An inference-only encoder that returns a latent and nothing else."""

    supported_tasks = ("representation",)
    supports_training = False

    def __init__(self, *, input_dim: int):
        super().__init__()
        self.input_dim = input_dim
        self.proj = nn.Linear(input_dim, 2)

    def forward(self, x):
        return {"latent": self.proj(x)}


def test_latent_only_inference_model_works_in_predict_dataset(prepared):
    # a reconstruction is needed to train a representation, not to predict one
    model = _LatentOnly(input_dim=prepared.input_dim)
    trainer = Trainer(model, "representation", device="cpu")
    out = trainer.predict_dataset(prepared.test)
    assert "reconstruction" not in out
    with torch.inference_mode():
        expected = model.proj(torch.from_numpy(prepared.test.to_numpy())).numpy()
    np.testing.assert_allclose(out["latent"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["index"], prepared.test.rows)


def test_trainer_defaults_are_the_shared_ones():
    trainer = Trainer(create_model("autoencoder", input_dim=4), "representation", device="cpu")
    settings = trainer.settings()
    # one default on every surface (the Trainer used 50 epochs and patience 10 before)
    assert (settings["epochs"], settings["early_stopping_patience"]) == (200, 20)
    assert (settings["batch_size"], settings["lr"], settings["seed"]) == (256, 1e-3, 42)


def test_save_checkpoint_before_fit_raises_runtime_error(prepared, tmp_path):
    trainer = Trainer(create_model("autoencoder", input_dim=prepared.input_dim), "representation")
    with pytest.raises(RuntimeError, match="fit"):
        trainer.save_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize(
    ("name", "task", "kwargs"),
    [
        ("autoencoder", "representation", {}),
        ("autoencoder", "reconstruction", {}),
        ("vae", "representation", {}),
        ("vae", "reconstruction", {}),
        ("denoising_autoencoder", "representation", {}),
        ("denoising_autoencoder", "reconstruction", {}),
        ("transformer_ae", "representation", {}),
        ("transformer_ae", "reconstruction", {}),
        ("mlp_classifier", "classification", {"num_classes": 10}),
    ],
)
def test_every_bundled_model_and_task_trains(prepared, name, task, kwargs):
    model = create_model(name, input_dim=prepared.input_dim, **kwargs)
    trainer = Trainer(
        model, task, epochs=8, batch_size=128, device="cpu", early_stopping_patience=None
    )
    trainer.fit(prepared.train, prepared.val)
    frame = trainer.history_frame
    assert len(frame) == 8
    assert frame["train_loss"].iloc[-1] < 0.9 * frame["train_loss"].iloc[0]
    assert np.isfinite(frame["val_loss"]).all()
    outputs = trainer.predict_dataset(prepared.test)
    assert set(trainer.task.output_keys) & set(outputs)


def test_classifier_reaches_sane_accuracy(prepared):
    model = create_model("mlp_classifier", input_dim=prepared.input_dim, num_classes=10)
    trainer = Trainer(model, "classification", epochs=40, batch_size=64, device="cpu")
    trainer.fit(prepared.train, prepared.val)
    out = trainer.predict_dataset(prepared.test)
    accuracy = float((out["logits"].argmax(1) == out["y"]).mean())
    # 10 classes, majority class ~ 0.14; measured 0.77-0.86 across seeds
    assert accuracy >= 0.65


def test_save_load_gives_identical_predictions(prepared, tmp_path):
    model = create_model("vae", input_dim=prepared.input_dim, latent_dim=8)
    trainer = Trainer(model, "representation", epochs=3, batch_size=128, device="cpu").fit(
        prepared.train, prepared.val
    )
    path = trainer.save_checkpoint(tmp_path / "ckpt", prepared=prepared)
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.pt",
        "training_state.pt",
    ]
    config = json.loads((path / "config.json").read_text())
    assert config["model"]["name"] == "vae"
    assert config["task"] == "representation"
    assert config["feature_names"] == prepared.feature_names
    assert config["label_encoder"]["categories"] == list(prepared.label_encoder.categories)
    assert config["best_epoch"] == trainer.best_epoch

    loaded = Trainer.load_checkpoint(path, device="cpu")
    before = trainer.predict_dataset(prepared.test)
    after = loaded.predict_dataset(prepared.test)
    np.testing.assert_array_equal(before["latent"], after["latent"])
    np.testing.assert_array_equal(before["reconstruction"], after["reconstruction"])
    pd.testing.assert_frame_equal(
        loaded.history_frame.reset_index(drop=True), trainer.history_frame.reset_index(drop=True)
    )


def test_checkpoint_is_not_overwritten_silently(prepared, tmp_path):
    trainer = Trainer(
        create_model("autoencoder", input_dim=prepared.input_dim), "representation", epochs=1
    )
    trainer.fit(prepared.train)
    trainer.save_checkpoint(tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trainer.save_checkpoint(tmp_path / "ckpt")
    trainer.save_checkpoint(tmp_path / "ckpt", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directories left


def test_load_checkpoint_errors(prepared, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer.load_checkpoint(tmp_path / "missing")
    trainer = Trainer(
        create_model("autoencoder", input_dim=prepared.input_dim), "representation", epochs=1
    )
    path = trainer.fit(prepared.train).save_checkpoint(tmp_path / "ckpt")
    (path / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        Trainer.load_checkpoint(path)
    path = trainer.save_checkpoint(tmp_path / "newer")
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = 99
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Upgrade scdlkit"):
        Trainer.load_checkpoint(path)


def test_resume_matches_uninterrupted_run(prepared, tmp_path):
    def make(epochs):
        model = create_model("vae", input_dim=prepared.input_dim, latent_dim=8, seed=3)
        return Trainer(
            model,
            "representation",
            epochs=epochs,
            batch_size=128,
            device="cpu",
            early_stopping_patience=None,
        )

    full = make(6).fit(prepared.train, prepared.val)
    first = make(3).fit(prepared.train, prepared.val)
    path = first.save_checkpoint(tmp_path / "half")
    resumed = Trainer.load_checkpoint(path, device="cpu", epochs=6)
    resumed.fit(prepared.train, prepared.val, resume_from=path)

    assert resumed.epochs_run == full.epochs_run == 6
    assert resumed.history_frame["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    columns = ["train_loss", "val_loss"]
    np.testing.assert_allclose(
        resumed.history_frame[columns], full.history_frame[columns], rtol=1e-6
    )
    np.testing.assert_allclose(
        resumed.predict_dataset(prepared.test)["latent"],
        full.predict_dataset(prepared.test)["latent"],
        rtol=1e-5,
    )


def test_resume_needs_more_epochs(prepared, tmp_path):
    trainer = Trainer(
        create_model("autoencoder", input_dim=prepared.input_dim), "representation", epochs=2
    )
    path = trainer.fit(prepared.train).save_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="larger epochs"):
        Trainer.load_checkpoint(path).fit(prepared.train, resume_from=path)


def test_same_seed_gives_identical_latents(prepared):
    def run():
        model = create_model("vae", input_dim=prepared.input_dim, latent_dim=8)
        trainer = Trainer(model, "representation", epochs=3, batch_size=64, device="cpu", seed=7)
        trainer.fit(prepared.train, prepared.val)
        return trainer.history_frame, trainer.predict_dataset(prepared.test)["latent"]

    (history_a, latent_a), (history_b, latent_b) = run(), run()
    np.testing.assert_array_equal(latent_a, latent_b)
    np.testing.assert_array_equal(history_a["train_loss"], history_b["train_loss"])


def test_fit_does_not_change_global_rng(prepared):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Trainer(
        create_model("autoencoder", input_dim=prepared.input_dim), "representation", epochs=1
    ).fit(prepared.train)
    np.testing.assert_array_equal(torch.rand(3), expected)


class _CellDataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def test_torch_dataset_of_dicts_and_lists_of_batches_work():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=generator)
    y = (x[:, 0] > 0).long()
    dataset = _CellDataset(x, y)
    model = create_model(
        "mlp_classifier", input_dim=12, num_classes=2, hidden_dims=(16,), dropout=0.0
    )
    trainer = Trainer(model, "classification", epochs=15, batch_size=32, device="cpu")
    trainer.fit(dataset, dataset)
    out = trainer.predict_dataset(dataset)
    assert out["logits"].shape == (200, 2)
    np.testing.assert_array_equal(out["y"], y.numpy())
    assert (out["logits"].argmax(1) == y.numpy()).mean() > 0.9

    batches = [{"x": x[i : i + 50], "y": y[i : i + 50]} for i in range(0, 200, 50)]
    trainer.fit(batches)
    assert trainer.predict_dataset(batches)["logits"].shape == (200, 2)


def test_bad_inputs_raise_type_errors():
    model = create_model("autoencoder", input_dim=4)
    trainer = Trainer(model, "representation", epochs=1, device="cpu")
    with pytest.raises(TypeError, match="one-shot iterator"):
        trainer.fit({"x": torch.zeros(2, 4)} for _ in range(2))
    with pytest.raises(TypeError, match="'x'"):
        trainer.fit([{"features": torch.zeros(2, 4)}])
    with pytest.raises(TypeError, match="Cannot read"):
        trainer.fit(42)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": 0}, "lr"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"scheduler": "warmup"}, "scheduler"),
        ({"device": "tpu"}, "device"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"early_stopping_patience": -2}, "early_stopping_patience"),
    ],
)
def test_invalid_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Trainer(create_model("autoencoder", input_dim=4), "representation", **kwargs)


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="classification"):
        Trainer(create_model("autoencoder", input_dim=4), "clustering")


def test_early_stopping_and_best_weights(prepared):
    model = create_model("autoencoder", input_dim=prepared.input_dim)
    trainer = Trainer(
        model,
        "representation",
        epochs=50,
        lr=1e-9,
        early_stopping_patience=2,
        min_delta=1e-3,
        device="cpu",
    )
    trainer.fit(prepared.train, prepared.val)
    assert trainer.epochs_run == 3  # first epoch sets the best, two without improvement stop
    assert trainer.best_epoch == 1


def test_keyboard_interrupt_keeps_history_and_best_weights(prepared):
    class Interrupt(Callback):
        def on_epoch_end(self, trainer, logs):
            if logs["epoch"] == 3:
                raise KeyboardInterrupt

    model = create_model("autoencoder", input_dim=prepared.input_dim)
    trainer = Trainer(model, "representation", epochs=10, callbacks=[Interrupt()], device="cpu")
    trainer.fit(prepared.train, prepared.val)
    assert trainer.interrupted
    assert len(trainer.history_frame) == 3
    best = trainer.best_epoch
    assert (
        trainer.history_frame["val_loss"].iloc[best - 1] == trainer.history_frame["val_loss"].min()
    )


def test_callback_can_stop_training(prepared):
    class StopAt2(Callback):
        def on_epoch_end(self, trainer, logs):
            trainer.stop_training = logs["epoch"] >= 2

    trainer = Trainer(
        create_model("autoencoder", input_dim=prepared.input_dim),
        "representation",
        epochs=10,
        callbacks=[StopAt2()],
    )
    trainer.fit(prepared.train)
    assert trainer.epochs_run == 2


@pytest.mark.parametrize("scheduler", ["cosine", "plateau", "step"])
def test_schedulers_change_learning_rate(prepared, scheduler):
    model = create_model("autoencoder", input_dim=prepared.input_dim)
    trainer = Trainer(
        model,
        "representation",
        epochs=8,
        scheduler=scheduler,
        lr=1e-2,
        weight_decay=1e-4,
        grad_clip=1.0,
        optimizer="adamw",
        early_stopping_patience=None,
        device="cpu",
    )
    trainer.fit(prepared.train, prepared.val)
    lrs = trainer.history_frame["lr"]
    if scheduler != "plateau":
        assert lrs.iloc[-1] < lrs.iloc[0]
    assert np.isfinite(trainer.history_frame["train_loss"]).all()


@pytest.mark.parametrize("precision", [True, "bf16"])
def test_mixed_precision_on_cpu_runs(prepared, precision):
    model = create_model("vae", input_dim=prepared.input_dim, latent_dim=8)
    trainer = Trainer(model, "representation", epochs=2, mixed_precision=precision, device="cpu")
    trainer.fit(prepared.train, prepared.val)
    out = trainer.predict_dataset(prepared.test)
    assert out["latent"].dtype == np.float32
    assert np.isfinite(out["latent"]).all()


def test_adapters_train_raw_modules(prepared):
    class AE(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.enc = nn.Linear(d, 8)
            self.dec = nn.Linear(8, d)

        def forward(self, x):
            z = self.enc(x)
            return z, self.dec(z)

    wrapped = wrap_reconstruction_module(AE(prepared.input_dim))
    trainer = Trainer(wrapped, "representation", epochs=5, device="cpu").fit(
        prepared.train, prepared.val
    )
    assert (
        trainer.history_frame["train_loss"].iloc[-1] < trainer.history_frame["train_loss"].iloc[0]
    )
    assert trainer.predict_dataset(prepared.test)["latent"].shape == (len(prepared.test), 8)

    classifier = wrap_classification_module(
        nn.Sequential(nn.Linear(prepared.input_dim, 10)), num_classes=10
    )
    trainer = Trainer(classifier, "classification", epochs=5, device="cpu").fit(
        prepared.train, prepared.val
    )
    assert trainer.predict_dataset(prepared.test)["logits"].shape == (len(prepared.test), 10)


def test_wrapped_module_checkpoint_needs_module_to_load(prepared, tmp_path):
    module = nn.Sequential(nn.Linear(prepared.input_dim, 10))
    trainer = Trainer(
        wrap_classification_module(module, num_classes=10), "classification", epochs=2
    )
    path = trainer.fit(prepared.train).save_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="model="):
        Trainer.load_checkpoint(path)
    fresh = wrap_classification_module(
        nn.Sequential(nn.Linear(prepared.input_dim, 10)), num_classes=10
    )
    loaded = Trainer.load_checkpoint(path, model=fresh)
    np.testing.assert_array_equal(
        loaded.predict_dataset(prepared.test)["logits"],
        trainer.predict_dataset(prepared.test)["logits"],
    )


def test_real_counts_dataset_trains(pbmc_kang):
    prepared = prepare_data(
        pbmc_kang, normalize=True, log1p=True, label_key="cell_type", batch_key="sample_id"
    )
    model = create_model("vae", input_dim=prepared.input_dim)
    trainer = Trainer(model, "representation", epochs=5, batch_size=128, device="cpu").fit(
        prepared.train, prepared.val
    )
    frame = trainer.history_frame
    assert frame["val_loss"].iloc[-1] < frame["val_loss"].iloc[0]
    assert trainer.predict_dataset(prepared.test)["latent"].shape == (len(prepared.test), 32)
