"""Adapters: plain torch modules trained through the tasks, and their output contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import scdlkit
from scdlkit.adapters import (
    ClassificationModuleAdapter,
    ReconstructionModuleAdapter,
    TorchModuleAdapter,
    wrap_classification_module,
    wrap_reconstruction_module,
)
from scdlkit.models import ScdlModel, create_model
from scdlkit.tasks import Task, get_task


@pytest.fixture(scope="module")
def prepared():
    return scdlkit.prepare_data(scdlkit.datasets.pbmc68k_reduced(), label_key="bulk_labels")


def train(
    model: nn.Module, task: Task, loader, *, epochs: int = 5, lr: float = 3e-3
) -> list[float]:
    """A plain training loop; returns the mean training loss per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        model.on_epoch_start(epoch)
        loader.set_epoch(epoch)
        model.train()
        total, cells = 0.0, 0
        for batch in loader:
            loss, _, _ = task.compute_loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * batch["x"].shape[0]
            cells += batch["x"].shape[0]
        history.append(total / cells)
    return history


class TupleAE(nn.Module):
    """Returns ``(latent, reconstruction)``."""

    def __init__(self, n_features: int, latent: int = 8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 64), nn.ReLU(), nn.Linear(64, n_features))

    def forward(self, x):
        z = self.encoder(x)
        return z, self.decoder(z)


class DictAE(TupleAE):
    """Returns a dict with an extra entry."""

    def forward(self, x):
        z, reconstruction = super().forward(x)
        return {"latent": z, "reconstruction": reconstruction, "norm": z.norm(dim=1)}


class TensorAE(TupleAE):
    """Returns only the reconstruction."""

    def forward(self, x):
        return super().forward(x)[1]


class Classifier(nn.Module):
    def __init__(self, n_features: int, n_classes: int, as_dict: bool = False):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(n_features, 64), nn.ReLU())
        self.out = nn.Linear(64, n_classes)
        self.as_dict = as_dict

    def forward(self, x):
        hidden = self.hidden(x)
        logits = self.out(hidden)
        return {"logits": logits, "latent": hidden} if self.as_dict else logits


class Returns(nn.Module):
    """Returns whatever ``make(x)`` builds (for contract violations)."""

    def __init__(self, make):
        super().__init__()
        self.make = make
        self.layer = nn.Linear(1, 1)

    def forward(self, x):
        return self.make(x)


# -- training raw modules through the adapters -------------------------------------------------------


@pytest.mark.parametrize(
    ("module_cls", "task_name"),
    [(TupleAE, "representation"), (DictAE, "representation"), (TensorAE, "reconstruction")],
)
def test_raw_reconstruction_module_trains(prepared, module_cls, task_name):
    torch.manual_seed(0)
    model = wrap_reconstruction_module(
        module_cls(prepared.input_dim),
        input_dim=prepared.input_dim,
        latent_dim=None if module_cls is TensorAE else 8,
    )
    task = get_task(task_name)
    task.check_model(model)
    history = train(
        model, task, prepared.train.loader(batch_size=128, shuffle=True), lr=1e-2, epochs=8
    )
    assert history[-1] < 0.85 * history[0], history

    batch = next(iter(prepared.val.loader(batch_size=32)))
    model.eval()
    with torch.inference_mode():
        predictions = task.predict(model, batch)
    assert predictions["reconstruction"].shape == batch["x"].shape
    if module_cls is TensorAE:
        assert list(predictions) == ["reconstruction"]
    else:
        assert list(predictions) == ["latent", "reconstruction"]
        assert predictions["latent"].shape == (32, 8)


def test_raw_classification_module_trains(prepared):
    torch.manual_seed(0)
    n_classes = prepared.label_encoder.n_categories
    model = wrap_classification_module(
        Classifier(prepared.input_dim, n_classes, as_dict=True), num_classes=n_classes
    )
    task = get_task("classification")
    task.check_model(model)
    history = train(model, task, prepared.train.loader(batch_size=128, shuffle=True))
    assert history[-1] < 0.5 * history[0], history
    val = prepared.val
    batch = next(iter(val.loader(batch_size=len(val))))
    model.eval()
    with torch.inference_mode():
        predictions = task.predict(model, batch)
    assert list(predictions) == ["logits", "latent"]
    assert predictions["latent"].shape == (len(val), 64)
    assert (predictions["logits"].argmax(1) == batch["y"]).float().mean().item() > 0.5


def test_tensor_only_module_cannot_do_representation():
    model = wrap_reconstruction_module(TensorAE(6))
    get_task("representation").check_model(model)  # declared, but the first batch tells
    with pytest.raises(
        ValueError,
        match=r"'representation' task needs the model outputs 'latent', but ReconstructionModuleAdapter returned only 'reconstruction'\. Return \(latent, reconstruction\)",
    ):
        get_task("representation").compute_loss(model, {"x": torch.randn(3, 6)})


def test_adapters_declare_their_tasks():
    reconstruction = wrap_reconstruction_module(TupleAE(6))
    classifier = wrap_classification_module(Classifier(6, 3))
    assert isinstance(reconstruction, ReconstructionModuleAdapter)
    assert isinstance(classifier, ClassificationModuleAdapter)
    assert isinstance(reconstruction, TorchModuleAdapter | ScdlModel)
    assert reconstruction.supported_tasks == ("representation", "reconstruction")
    assert classifier.supported_tasks == ("classification",)
    assert reconstruction.supports_training and classifier.supports_training
    with pytest.raises(
        ValueError, match=r"ReconstructionModuleAdapter does not support the 'classification' task"
    ):
        get_task("classification").check_model(reconstruction)
    with pytest.raises(
        ValueError, match=r"ClassificationModuleAdapter does not support the 'representation' task"
    ):
        get_task("representation").check_model(classifier)


# -- config and reloading ---------------------------------------------------------------------------------


def test_adapter_config_and_reload_by_rewrapping():
    torch.manual_seed(0)
    model = wrap_reconstruction_module(TupleAE(6, latent=2), input_dim=6, latent_dim=2)
    config = json.loads(json.dumps(model.config))
    assert config == {
        "name": None,
        "kwargs": {"input_dim": 6, "latent_dim": 2},
        "module_class": f"{TupleAE.__module__}.TupleAE",
    }
    assert wrap_classification_module(nn.Linear(4, 3), num_classes=3).config == {
        "name": None,
        "kwargs": {"input_dim": None, "num_classes": 3},
        "module_class": "torch.nn.modules.linear.Linear",
    }
    with pytest.raises(
        ValueError,
        match=r"name=None.*wrap it with scdlkit.adapters|name=None.*Build the module again",
    ):
        create_model(config["name"], **config["kwargs"])

    state = model.state_dict()
    assert all(key.startswith("module.") for key in state)
    rewrapped = wrap_reconstruction_module(TupleAE(6, latent=2), input_dim=6, latent_dim=2)
    rewrapped.load_state_dict(state)
    x = torch.randn(4, 6)
    torch.testing.assert_close(
        rewrapped.eval()(x)["latent"], model.eval()(x)["latent"], rtol=0, atol=0
    )


def test_wrap_refuses_non_modules_and_scdl_models():
    with pytest.raises(TypeError, match="Expected a torch.nn.Module to wrap, got function"):
        wrap_reconstruction_module(lambda x: x)
    with pytest.raises(ValueError, match="VAE is already a scdlkit model"):
        wrap_reconstruction_module(create_model("vae", input_dim=4))
    with pytest.raises(ValueError, match="latent_dim must be an integer >= 1, got 0"):
        wrap_reconstruction_module(TupleAE(4), latent_dim=0)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1"):
        wrap_classification_module(nn.Linear(4, 1), num_classes=1)


def test_hooks_are_forwarded_to_the_module():
    class WithHooks(TupleAE):
        def __init__(self):
            super().__init__(4, latent=2)
            self.epochs = []

        def on_epoch_start(self, epoch):
            self.epochs.append(epoch)

        def extra_losses(self, outputs):
            return {"l1": outputs["latent"].abs().sum(dim=1).mean()}

    module = WithHooks()
    model = wrap_reconstruction_module(module)
    model.on_epoch_start(0)
    model.on_epoch_start(3)
    assert module.epochs == [0, 3]
    x = torch.randn(5, 4)
    loss, stats, outputs = get_task("representation").compute_loss(model, {"x": x})
    assert set(stats) == {"reconstruction", "l1"}
    torch.testing.assert_close(loss.detach(), stats["reconstruction"] + stats["l1"])
    # modules without hooks: no extra terms, no error
    plain = wrap_reconstruction_module(TupleAE(4))
    plain.on_epoch_start(1)
    assert plain.extra_losses({}) == {}


# -- contract violations fail at the first batch with a precise message -----------------------------------

N, D = 4, 6

RECONSTRUCTION_VIOLATIONS = [
    (
        lambda x: {"latent": x[:, :2]},
        r"Returns\.forward returned a dict without 'reconstruction' \(keys: 'latent'\)",
    ),
    (
        lambda x: x[:, :3],
        r"returned 'reconstruction' of shape \(4, 3\); expected the shape of the input x, \(4, 6\)",
    ),
    (
        lambda x: x[:2],
        r"returned 'reconstruction' of shape \(2, 6\); expected the shape of the input x, \(4, 6\)",
    ),
    (lambda x: (x[:, :2], x[:, :5]), r"'reconstruction' of shape \(4, 5\)"),
    (
        lambda x: (x[:3, :2], x),
        r"returned 'latent' of shape \(3, 2\); expected \(4, latent_dim\) \(one row per cell\)",
    ),
    (lambda x: (x[:, 0], x), r"returned 'latent' of shape \(4,\); expected \(4, latent_dim\)"),
    (lambda x: (x[:, :2].numpy(), x), r"returned 'latent' as a ndarray; expected a torch.Tensor"),
    (
        lambda x: {"reconstruction": x.tolist()},
        r"returned 'reconstruction' as a list; expected a torch.Tensor of shape \(4, 6\)",
    ),
    (
        lambda x: (x, x, x),
        r"returned a tuple of length 3; expected a reconstruction tensor, a tuple \(latent, reconstruction\)",
    ),
    (lambda x: None, r"returned a NoneType; expected a reconstruction tensor"),
    (lambda x: "reconstruction", r"returned a str; expected"),
]


@pytest.mark.parametrize(("make", "pattern"), RECONSTRUCTION_VIOLATIONS)
@pytest.mark.parametrize("task_name", ["reconstruction", "representation"])
def test_reconstruction_contract_violations(make, pattern, task_name):
    model = wrap_reconstruction_module(Returns(make))
    with pytest.raises(ValueError, match=pattern):
        get_task(task_name).compute_loss(model, {"x": torch.randn(N, D)})


def test_reconstruction_latent_dim_and_input_dim_are_checked():
    model = wrap_reconstruction_module(TupleAE(D, latent=3), latent_dim=2)
    with pytest.raises(
        ValueError, match=r"TupleAE\.forward returned 'latent' of shape \(4, 3\); expected \(4, 2\)"
    ):
        model(torch.randn(N, D))
    model = wrap_reconstruction_module(TupleAE(D), input_dim=D)
    with pytest.raises(
        ValueError,
        match=r"ReconstructionModuleAdapter\(TupleAE\) expects x of shape \(n_cells, 6\), got shape \(4, 5\)",
    ):
        model(torch.randn(N, 5))


CLASSIFICATION_VIOLATIONS = [
    (
        lambda x: {"latent": x},
        r"Returns\.forward returned a dict without 'logits' \(keys: 'latent'\); expected a logits tensor",
    ),
    (
        lambda x: x[:, 0],
        r"returned 'logits' of shape \(4,\); expected \(4, 3\) \(one row per cell, one column per class\)",
    ),
    (lambda x: x[:, :2], r"returned 'logits' of shape \(4, 2\); expected \(4, 3\)"),
    (lambda x: x[:2, :3], r"returned 'logits' of shape \(2, 3\); expected \(4, 3\)"),
    (
        lambda x: {"logits": x[:, :3].numpy()},
        r"returned 'logits' as a ndarray; expected a torch.Tensor of shape \(4, 3\)",
    ),
    (
        lambda x: {"logits": x[:, :3], "latent": x[:2]},
        r"returned 'latent' of shape \(2, 6\); expected \(4, latent_dim\)",
    ),
    (
        lambda x: (x[:, :3],),
        r"returned a tuple; expected a logits tensor of shape \(n_cells, num_classes\) or a dict with 'logits'",
    ),
]


@pytest.mark.parametrize(("make", "pattern"), CLASSIFICATION_VIOLATIONS)
def test_classification_contract_violations(make, pattern):
    model = wrap_classification_module(Returns(make), num_classes=3)
    batch = {"x": torch.randn(N, D), "y": torch.tensor([0, 1, 2, 0])}
    with pytest.raises(ValueError, match=pattern):
        get_task("classification").compute_loss(model, batch)


def test_classification_without_num_classes_accepts_any_width():
    model = wrap_classification_module(nn.Linear(D, 5))
    outputs = model(torch.randn(N, D))
    assert outputs["logits"].shape == (N, 5)
    with pytest.raises(ValueError, match=r"expected \(4, num_classes\)"):
        wrap_classification_module(Returns(lambda x: x[:, 0]))(torch.randn(N, D))


def test_violation_is_raised_by_the_first_batch_of_a_loader(prepared):
    model = wrap_reconstruction_module(Returns(lambda x: x[:, :-1]))
    loader = prepared.train.loader(batch_size=128, shuffle=True)
    seen = []
    with pytest.raises(ValueError, match=r"expected the shape of the input x, \(128, 765\)"):
        for batch in loader:
            seen.append(batch["index"])
            get_task("reconstruction").compute_loss(model, batch)
    assert len(seen) == 1
    assert np.unique(seen[0].numpy()).shape == (128,)
