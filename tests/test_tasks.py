"""Tasks: loss and output contracts, model checks, the registry, and training every bundled model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import scdlkit
from scdlkit.models import ScdlModel, create_model
from scdlkit.tasks import (
    ClassificationTask,
    ReconstructionTask,
    RepresentationTask,
    Task,
    get_task,
    list_tasks,
    reconstruction_loss,
    register_task,
    unwrap_model,
)
from scdlkit.tasks import registry as task_registry

#: Small but real configurations; every model trains a few epochs on pbmc68k_reduced.
TRAINING_CASES = [
    ("autoencoder", "representation", {}),
    ("autoencoder", "reconstruction", {}),
    ("vae", "representation", {"kl_warmup_epochs": 0}),
    ("vae", "reconstruction", {"kl_warmup_epochs": 0}),
    ("denoising_autoencoder", "representation", {"noise": "gaussian", "noise_level": 0.1}),
    ("denoising_autoencoder", "reconstruction", {"noise": "dropout", "noise_level": 0.2}),
    ("transformer_ae", "representation", {}),
    ("transformer_ae", "reconstruction", {"genes_per_token": 50}),
    ("mlp_classifier", "classification", {}),
]


@pytest.fixture(scope="module")
def prepared():
    return scdlkit.prepare_data(scdlkit.datasets.pbmc68k_reduced(), label_key="bulk_labels")


@pytest.fixture(scope="module")
def unlabelled():
    return scdlkit.prepare_data(scdlkit.datasets.pbmc68k_reduced())


def train(
    model: nn.Module, task: Task, loader, *, epochs: int = 5, lr: float = 3e-3
) -> list[float]:
    """A plain training loop; returns the mean training loss per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        if hasattr(model, "on_epoch_start"):
            model.on_epoch_start(epoch)
        loader.set_epoch(epoch)
        model.train()
        total, cells = 0.0, 0
        for batch in loader:
            loss, stats, _ = task.compute_loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * batch["x"].shape[0]
            cells += batch["x"].shape[0]
        history.append(total / cells)
    return history


# -- every bundled model x every task it supports -----------------------------------------------


@pytest.mark.parametrize(("name", "task_name", "options"), TRAINING_CASES)
def test_bundled_models_train_on_pbmc(prepared, name, task_name, options):
    torch.manual_seed(0)
    extra = (
        {"num_classes": prepared.label_encoder.n_categories}
        if task_name == "classification"
        else {}
    )
    model = create_model(name, input_dim=prepared.input_dim, **options, **extra)
    task = get_task(task_name)
    task.check_model(model)
    loader = prepared.train.loader(batch_size=128, shuffle=True)
    history = train(model, task, loader)
    assert all(torch.isfinite(torch.tensor(history)))
    assert history[-1] < 0.85 * history[0], history  # at least 15% lower after 5 epochs

    model.eval()
    val = prepared.val
    batch = next(iter(val.loader(batch_size=len(val))))
    with torch.inference_mode():
        predictions = task.predict(model, batch)
    assert list(predictions) == [key for key in task.output_keys if key in predictions]
    if task_name == "classification":
        assert set(predictions) == {"logits", "latent"}
        assert predictions["logits"].shape == (len(val), prepared.label_encoder.n_categories)
        accuracy = (predictions["logits"].argmax(1) == batch["y"]).float().mean().item()
        assert accuracy > 0.5  # 10 classes; chance is ~0.1-0.3
    else:
        assert set(predictions) == {"latent", "reconstruction"}
        assert predictions["reconstruction"].shape == batch["x"].shape
        assert predictions["latent"].shape == (len(val), model.latent_dim)
    # predict returns the model's own (eval-mode) outputs, unchanged
    with torch.inference_mode():
        outputs = model(batch["x"])
    for key, value in predictions.items():
        torch.testing.assert_close(value, outputs[key], rtol=0, atol=0)


def test_training_is_reproducible(prepared):
    histories = []
    for _ in range(2):
        torch.manual_seed(3)
        model = create_model("vae", input_dim=prepared.input_dim, hidden_dims=(64,), latent_dim=8)
        histories.append(
            train(
                model,
                get_task("representation"),
                prepared.train.loader(128, shuffle=True),
                epochs=2,
            )
        )
    assert histories[0] == histories[1]


# -- losses and statistics -------------------------------------------------------------------------


def test_reconstruction_loss_is_per_cell_sum_averaged_over_cells():
    reconstruction = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    assert reconstruction_loss(reconstruction, x).item() == pytest.approx(((1 + 4) + 9) / 2)
    with pytest.raises(
        ValueError, match=r"reconstruction has shape \(2, 3\), but the input x has shape \(2, 2\)"
    ):
        reconstruction_loss(torch.zeros(2, 3), x)


@pytest.mark.parametrize("task_name", ["representation", "reconstruction"])
def test_autoencoder_loss_value_and_detached_stats(task_name):
    torch.manual_seed(0)
    model = create_model("autoencoder", input_dim=12, hidden_dims=(8,), latent_dim=3).eval()
    x = torch.randn(5, 12)
    loss, stats, outputs = get_task(task_name).compute_loss(
        model, {"x": x, "index": torch.arange(5)}
    )
    expected = ((outputs["reconstruction"] - x) ** 2).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)
    assert loss.requires_grad and loss.ndim == 0
    assert set(stats) == {"reconstruction"}
    assert not stats["reconstruction"].requires_grad
    assert isinstance(stats["reconstruction"], torch.Tensor)
    assert set(outputs) == {"latent", "reconstruction"}


def test_vae_loss_adds_weighted_kl():
    torch.manual_seed(0)
    model = create_model(
        "vae", input_dim=12, hidden_dims=(8,), latent_dim=3, kl_weight=0.5, kl_warmup_epochs=0
    )
    model.eval()
    x = torch.randn(5, 12)
    loss, stats, outputs = get_task("representation").compute_loss(model, {"x": x})
    assert set(stats) == {"reconstruction", "kl"}
    recon = ((outputs["reconstruction"] - x) ** 2).sum(dim=1).mean()
    mu, logvar = outputs["mu"], outputs["logvar"]
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)).mean()
    torch.testing.assert_close(stats["reconstruction"], recon.detach())
    torch.testing.assert_close(stats["kl"], 0.5 * kl.detach())
    torch.testing.assert_close(loss, recon + 0.5 * kl)
    assert not any(value.requires_grad for value in stats.values())


def test_classification_loss_is_cross_entropy():
    torch.manual_seed(0)
    model = create_model("mlp_classifier", input_dim=12, num_classes=4, hidden_dims=(8,)).eval()
    batch = {"x": torch.randn(6, 12), "y": torch.tensor([0, 1, 2, 3, 0, 1])}
    loss, stats, outputs = get_task("classification").compute_loss(model, batch)
    torch.testing.assert_close(loss, F.cross_entropy(outputs["logits"], batch["y"]))
    assert set(stats) == {"cross_entropy"}
    assert not stats["cross_entropy"].requires_grad


def test_classification_label_errors():
    model = create_model("mlp_classifier", input_dim=4, num_classes=3, hidden_dims=(8,))
    task = get_task("classification")
    with pytest.raises(
        ValueError, match="1-D integer tensor of class codes, got dtype torch.float32"
    ):
        task.compute_loss(model, {"x": torch.randn(3, 4), "y": torch.zeros(3)})


def test_classification_without_labels_says_to_pass_label_key(unlabelled):
    batch = next(iter(unlabelled.train.loader(batch_size=16)))
    assert "y" not in batch
    model = create_model("mlp_classifier", input_dim=unlabelled.input_dim, num_classes=3)
    with pytest.raises(
        ValueError,
        match=r"needs 'y' in every batch, but the batch has only 'x', 'index'\. .*label_key=",
    ):
        get_task("classification").compute_loss(model, batch)


# -- predict ---------------------------------------------------------------------------------------


def test_predict_returns_only_output_keys_in_order():
    model = create_model("vae", input_dim=10, latent_dim=2, hidden_dims=(4,)).eval()
    batch = {"x": torch.randn(3, 10), "index": torch.arange(3)}
    with torch.inference_mode():
        representation = get_task("representation").predict(model, batch)
        reconstruction = get_task("reconstruction").predict(model, batch)
    assert list(representation) == ["latent", "reconstruction"]
    assert list(reconstruction) == ["reconstruction", "latent"]  # no mu / logvar
    with pytest.raises(ValueError, match="Batches must contain 'x'"):
        get_task("representation").predict(model, {"index": torch.arange(3)})


class ReconstructionOnly(ScdlModel):
    supported_tasks = ("representation", "reconstruction")

    def __init__(self, *, input_dim: int):
        super().__init__()
        self.input_dim = input_dim
        self.layer = nn.Linear(input_dim, input_dim)

    def forward(self, x):
        return {"reconstruction": self.layer(x)}


def test_representation_needs_a_latent():
    model = ReconstructionOnly(input_dim=5)
    batch = {"x": torch.randn(4, 5)}
    assert list(get_task("reconstruction").predict(model, batch)) == ["reconstruction"]
    with pytest.raises(
        ValueError,
        match=r"needs the model outputs 'latent', but ReconstructionOnly returned only 'reconstruction'.*task='reconstruction'",
    ):
        get_task("representation").compute_loss(model, batch)


def test_model_must_return_a_dict():
    class ReturnsTensor(ScdlModel):
        supported_tasks = ("reconstruction",)

        def __init__(self, *, input_dim: int):
            super().__init__()

        def forward(self, x):
            return x

    with pytest.raises(
        ValueError,
        match=r"ReturnsTensor\.forward returned a Tensor, but scdlkit models must return a dict",
    ):
        get_task("reconstruction").compute_loss(
            ReturnsTensor(input_dim=3), {"x": torch.zeros(2, 3)}
        )


def test_reconstruction_shape_mismatch_is_reported():
    class WrongShape(ScdlModel):
        supported_tasks = ("reconstruction",)

        def __init__(self, *, input_dim: int):
            super().__init__()

        def forward(self, x):
            return {"reconstruction": x[:, :2]}

    with pytest.raises(
        ValueError, match=r"reconstruction has shape \(2, 2\), but the input x has shape \(2, 3\)"
    ):
        get_task("reconstruction").compute_loss(WrongShape(input_dim=3), {"x": torch.zeros(2, 3)})


# -- check_model ----------------------------------------------------------------------------------


def test_check_model_accepts_supported_pairs():
    checked = []
    for name, task_name, _ in TRAINING_CASES:
        extra = {"num_classes": 3} if name == "mlp_classifier" else {}
        model = create_model(name, input_dim=8, **extra).eval()
        task = get_task(task_name)
        assert task.check_model(model) is None
        assert task_name in model.supported_tasks
        with torch.inference_mode():
            outputs = task.predict(model, {"x": torch.rand(4, 8)})
        assert list(outputs) == list(task.output_keys), (name, task_name)
        checked.append((name, task_name))
    assert checked == [(name, task_name) for name, task_name, _ in TRAINING_CASES]


def test_check_model_rejects_unsupported_task():
    classifier = create_model("mlp_classifier", input_dim=8, num_classes=3)
    with pytest.raises(
        ValueError,
        match=r"MLPClassifier does not support the 'representation' task \(its supported_tasks: 'classification'\)\. .*'autoencoder'",
    ) as info:
        get_task("representation").check_model(classifier)
    assert "'vae'" in str(info.value)
    with pytest.raises(
        ValueError, match=r"VAE does not support the 'classification' task .*'mlp_classifier'"
    ):
        get_task("classification").check_model(create_model("vae", input_dim=8))


def test_check_model_on_plain_module_suggests_adapter():
    with pytest.raises(
        ValueError,
        match=r"Linear is a plain torch module without supported_tasks.*wrap_reconstruction_module\(module\)",
    ):
        get_task("representation").check_model(nn.Linear(3, 3))
    with pytest.raises(
        ValueError, match=r"wrap_classification_module\(module, num_classes=\.\.\.\)"
    ):
        get_task("classification").check_model(nn.Linear(3, 3))


def test_wrapped_models_are_looked_through():
    torch.manual_seed(0)
    model = create_model("vae", input_dim=6, hidden_dims=(4,), latent_dim=2, kl_warmup_epochs=0)
    parallel = nn.DataParallel(model)
    assert unwrap_model(parallel) is model
    task = get_task("representation")
    task.check_model(parallel)
    _, stats, _ = task.compute_loss(parallel, {"x": torch.randn(4, 6)})
    assert set(stats) == {"reconstruction", "kl"}  # extra_losses found on the inner model


# -- registry -------------------------------------------------------------------------------------


def test_get_task_by_name_and_instance():
    assert isinstance(get_task("representation"), RepresentationTask)
    assert isinstance(get_task("reconstruction"), ReconstructionTask)
    assert isinstance(get_task("classification"), ClassificationTask)
    instance = ClassificationTask()
    assert get_task(instance) is instance
    assert isinstance(get_task(ClassificationTask), ClassificationTask)
    assert get_task("classification").required_batch_keys == ("x", "y")
    assert get_task("representation").output_keys == ("latent", "reconstruction")


def test_get_task_errors():
    with pytest.raises(
        ValueError,
        match=r"Unknown task 'clasification'\. Did you mean 'classification'\? Registered tasks: 'annotation', 'classification', 'reconstruction', 'representation'",
    ):
        get_task("clasification")
    with pytest.raises(
        TypeError, match="task must be a task name or a scdlkit.tasks.Task instance, got 3"
    ):
        get_task(3)


def test_list_tasks():
    tasks = list_tasks()
    assert isinstance(tasks, pd.DataFrame)
    assert list(tasks.columns) == ["name", "output_keys", "required_batch_keys", "description"]
    assert tasks["name"].tolist() == [
        "annotation",
        "classification",
        "reconstruction",
        "representation",
    ]
    assert tasks.set_index("name").loc["classification", "required_batch_keys"] == ("x", "y")


@pytest.fixture
def clean_tasks():
    saved = dict(task_registry._TASKS)
    yield
    task_registry._TASKS.clear()
    task_registry._TASKS.update(saved)


def test_register_task(clean_tasks):
    class Smooth(ClassificationTask):
        name = "smooth_classification"
        description = "Cross-entropy with label smoothing."

        def loss(self, outputs, batch):
            loss = F.cross_entropy(outputs["logits"], batch["y"], label_smoothing=0.1)
            return loss, {"cross_entropy": loss.detach()}

    assert register_task(Smooth) is Smooth
    assert isinstance(get_task("smooth_classification"), Smooth)
    assert "smooth_classification" in list_tasks()["name"].tolist()
    instance = Smooth()
    register_task(instance)  # same type again: replaces silently
    assert get_task("smooth_classification") is instance

    class Clash(ReconstructionTask):
        name = "classification"

    with pytest.raises(
        ValueError,
        match=r"task named 'classification' is already registered \(ClassificationTask\).*overwrite=True",
    ):
        register_task(Clash)
    register_task(Clash, overwrite=True)
    assert isinstance(get_task("classification"), Clash)

    class Nameless(Task):
        pass

    with pytest.raises(ValueError, match="Nameless has no name"):
        register_task(Nameless)
    with pytest.raises(ValueError, match="needs a scdlkit.tasks.Task instance or subclass"):
        register_task("classification")

    # a model can opt into a custom task through supported_tasks
    class SmoothMLP(ScdlModel):
        supported_tasks = ("smooth_classification",)

        def __init__(self, *, input_dim: int):
            super().__init__()
            self.layer = nn.Linear(input_dim, 3)

        def forward(self, x):
            return {"logits": self.layer(x)}

    smooth = get_task("smooth_classification")
    model = SmoothMLP(input_dim=4)
    assert smooth.check_model(model) is None
    batch = {"x": torch.randn(5, 4), "y": torch.tensor([0, 1, 2, 0, 1])}
    loss, stats, outputs = smooth.compute_loss(model, batch)
    expected = F.cross_entropy(outputs["logits"], batch["y"], label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["cross_entropy"], expected.detach())
