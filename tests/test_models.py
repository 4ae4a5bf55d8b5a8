"""Bundled models, the ScdlModel base class and the model registry."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from scdlkit.models import (
    MODEL_ALIASES,
    VAE,
    AutoEncoder,
    BaseModel,
    DenoisingAutoEncoder,
    MLPClassifier,
    ScdlModel,
    TransformerAE,
    create_model,
    get_model_class,
    list_models,
    models_for_task,
    register_model,
)

INPUT_DIM = 50

#: Small configurations of every bundled model (kept small so the tests are fast).
SMALL = {
    "autoencoder": {"latent_dim": 4, "hidden_dims": (16, 8)},
    "vae": {"latent_dim": 4, "hidden_dims": (16,), "kl_warmup_epochs": 3},
    "denoising_autoencoder": {
        "latent_dim": 4,
        "hidden_dims": (16,),
        "noise": "dropout",
        "noise_level": 0.3,
    },
    "transformer_ae": {
        "latent_dim": 4,
        "hidden_dims": (16,),
        "d_model": 16,
        "n_heads": 2,
        "genes_per_token": 16,
    },
    "mlp_classifier": {"latent_dim": 4, "hidden_dims": (16,), "num_classes": 3},
}
BUNDLED = sorted(SMALL)


def make(name: str, **overrides) -> ScdlModel:
    return create_model(name, input_dim=INPUT_DIM, **{**SMALL[name], **overrides})


# -- registry --------------------------------------------------------------------------------


def test_list_models_is_a_dataframe_of_the_bundled_models():
    models = list_models()
    assert isinstance(models, pd.DataFrame)
    assert list(models.columns) == ["name", "supported_tasks", "aliases", "description"]
    # count_vae reads raw counts and is tested in test_count_vae.py
    assert models["name"].tolist() == sorted([*BUNDLED, "count_vae", "count_scanvi"])
    tasks = dict(zip(models["name"], models["supported_tasks"], strict=True))
    assert tasks["mlp_classifier"] == ("classification",)
    for name in ("autoencoder", "vae", "denoising_autoencoder", "transformer_ae", "count_vae"):
        assert tasks[name] == ("representation", "reconstruction")
    assert models["description"].str.len().min() > 10
    aliases = {
        name: aliases
        for name, aliases in zip(models["name"], models["aliases"], strict=True)
        if name in BUNDLED or name == "count_vae"
    }
    assert aliases == {
        "autoencoder": ("ae",),
        "denoising_autoencoder": ("dae",),
        "mlp_classifier": ("classifier",),
        "transformer_ae": ("transformer_autoencoder",),
        "vae": (),
        "count_vae": (),
    }


def test_scdlkit_0_1_6_aliases_resolve_to_the_bundled_models():
    assert dict(MODEL_ALIASES) == {
        "ae": "autoencoder",
        "classifier": "mlp_classifier",
        "dae": "denoising_autoencoder",
        "transformer_autoencoder": "transformer_ae",
    }
    for alias, name in MODEL_ALIASES.items():
        assert get_model_class(alias) is get_model_class(name)
        model = create_model(alias, input_dim=INPUT_DIM, **SMALL[name])
        assert model.config["name"] == name
        assert model.registry_name == name
    with pytest.raises(TypeError):
        MODEL_ALIASES["vae2"] = "vae"  # read-only
    assert BaseModel is ScdlModel
    # only registry names are proposed as corrections; the aliases are listed
    with pytest.raises(ValueError, match=r"Did you mean 'vae'\?.*\(aliases: 'ae', 'classifier'"):
        get_model_class("vea")


def test_a_registered_name_takes_precedence_over_an_alias(clean_registry):
    @register_model("ae")
    class Mine(ScdlModel):
        """My own ae."""

        supported_tasks = ("reconstruction",)

        def __init__(self, *, input_dim: int):
            super().__init__()
            self.layer = nn.Linear(input_dim, input_dim)

        def forward(self, x):
            return {"reconstruction": self.layer(x)}

    assert get_model_class("ae") is Mine
    assert create_model("ae", input_dim=3).config["name"] == "ae"
    models = list_models().set_index("name")
    assert models.loc["autoencoder", "aliases"] == ()  # no longer an alias
    assert models.loc["ae", "aliases"] == ()
    assert get_model_class("dae") is DenoisingAutoEncoder  # the other aliases still work


def test_get_model_class_and_models_for_task():
    assert get_model_class("vae") is VAE
    assert get_model_class("transformer_ae") is TransformerAE
    assert get_model_class("denoising_autoencoder") is DenoisingAutoEncoder
    assert models_for_task("classification") == ["mlp_classifier"]
    assert "vae" in models_for_task("representation")


def test_unknown_model_name_lists_registered_names():
    with pytest.raises(ValueError, match=r"Unknown model 'vea'\. Did you mean 'vae'\?") as info:
        create_model("vea", input_dim=10)
    for name in BUNDLED:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="Registered models: 'autoencoder'"):
        get_model_class("does_not_exist")


def test_config_without_name_cannot_be_rebuilt():
    with pytest.raises(ValueError, match=r"no registry name \(name=None\)"):
        create_model(None, input_dim=10)


def test_unknown_option_names_it_and_lists_accepted_ones():
    with pytest.raises(ValueError, match=r"unexpected option\(s\) 'latent_size'") as info:
        create_model("autoencoder", input_dim=10, latent_size=3)
    message = str(info.value)
    assert "Did you mean 'latent_dim'?" in message
    for accepted in ("latent_dim", "hidden_dims", "dropout", "batch_norm"):
        assert repr(accepted) in message
    with pytest.raises(ValueError, match="'kl_weight', 'kl_warmup_epochs'"):
        create_model("vae", input_dim=10, beta=2.0)


def test_missing_num_classes_says_what_to_pass():
    with pytest.raises(ValueError, match=r"needs num_classes=\.\.\. .*label_encoder\.n_categories"):
        create_model("mlp_classifier", input_dim=10)


@pytest.mark.parametrize(
    ("name", "kwargs", "pattern"),
    [
        ("autoencoder", {"latent_dim": 0}, r"latent_dim must be an integer >= 1, got 0"),
        ("autoencoder", {"latent_dim": 2.5}, r"latent_dim must be an integer"),
        ("autoencoder", {"input_dim": 0}, r"input_dim must be an integer >= 1"),
        ("vae", {"dropout": 1.0}, r"dropout must be a number in \[0\.0, 1\.0\), got 1\.0"),
        ("vae", {"dropout": -0.1}, r"dropout must be a number in \[0\.0, 1\.0\)"),
        ("autoencoder", {"hidden_dims": ()}, r"hidden_dims must list at least one layer size"),
        ("autoencoder", {"hidden_dims": (16, 0)}, r"hidden_dims\[1\] must be an integer >= 1"),
        ("autoencoder", {"hidden_dims": "256"}, r"hidden_dims must be a non-empty sequence"),
        ("autoencoder", {"batch_norm": "yes"}, r"batch_norm must be True or False"),
        (
            "denoising_autoencoder",
            {"noise": "salt"},
            r"noise must be one of 'gaussian', 'dropout', got 'salt'",
        ),
        (
            "denoising_autoencoder",
            {"noise": "dropout", "noise_level": 1.0},
            r"noise_level must be a number in \[0",
        ),
        (
            "denoising_autoencoder",
            {"noise": "gaussian", "noise_level": -1},
            r"noise_level must be a number >= 0",
        ),
        ("vae", {"kl_weight": -0.5}, r"kl_weight must be a number >= 0"),
        ("vae", {"kl_warmup_epochs": -1}, r"kl_warmup_epochs must be an integer >= 0"),
        (
            "transformer_ae",
            {"d_model": 10, "n_heads": 4},
            r"d_model \(10\) must be divisible by n_heads \(4\)",
        ),
        ("transformer_ae", {"genes_per_token": 0}, r"genes_per_token must be an integer >= 1"),
        ("mlp_classifier", {"num_classes": 1}, r"num_classes must be an integer >= 2, got 1"),
    ],
)
def test_invalid_values_raise_value_error(name, kwargs, pattern):
    options = {**SMALL[name], **kwargs}
    input_dim = options.pop("input_dim", INPUT_DIM)
    with pytest.raises(ValueError, match=pattern):
        create_model(name, input_dim=input_dim, **options)


def test_numpy_integers_and_lists_are_accepted_and_normalised():
    model = create_model(
        "autoencoder", input_dim=np.int64(20), latent_dim=np.int32(3), hidden_dims=[8]
    )
    config = model.config
    assert config["kwargs"]["input_dim"] == 20
    assert type(config["kwargs"]["latent_dim"]) is int
    assert config["kwargs"]["hidden_dims"] == [8]
    assert model.hidden_dims == (8,)


def test_register_model_as_decorator_and_call(clean_registry):
    @register_model("tiny_linear")
    class TinyLinear(ScdlModel):
        """Linear reconstruction."""

        supported_tasks = ("reconstruction",)

        def __init__(self, *, input_dim: int, bias: bool = True):
            super().__init__()
            self.input_dim = input_dim
            self.layer = nn.Linear(input_dim, input_dim, bias=bias)

        def forward(self, x):
            return {"reconstruction": self.layer(x)}

    model = create_model("tiny_linear", input_dim=6, bias=False)
    assert model.layer.bias is None
    assert model.config == {"name": "tiny_linear", "kwargs": {"input_dim": 6, "bias": False}}
    row = list_models().set_index("name").loc["tiny_linear"]
    assert row["supported_tasks"] == ("reconstruction",)
    assert row["description"] == "Linear reconstruction."

    class Other(TinyLinear):
        pass

    assert register_model("other_linear", Other) is Other
    assert get_model_class("other_linear") is Other
    # registering the same class again under the same name is a no-op
    assert register_model("tiny_linear", TinyLinear) is TinyLinear


def test_register_model_errors(clean_registry):
    class NoTasks(ScdlModel):
        def __init__(self, *, input_dim: int):
            super().__init__()

    with pytest.raises(ValueError, match="declares no supported_tasks"):
        register_model("no_tasks", NoTasks)
    with pytest.raises(
        ValueError, match="needs a subclass of ScdlModel.*wrap_reconstruction_module"
    ):
        register_model("plain", nn.Linear)
    with pytest.raises(ValueError, match="needs a subclass of ScdlModel"):
        register_model("not_a_class", 3)
    with pytest.raises(ValueError, match="non-empty string"):
        register_model("", AutoEncoder)

    class Replacement(AutoEncoder):
        pass

    with pytest.raises(
        ValueError,
        match=r"'vae' is already registered \(scdlkit\.models\.vae\.VAE\).*overwrite=True",
    ):
        register_model("vae", Replacement)
    register_model("vae", Replacement, overwrite=True)
    assert get_model_class("vae") is Replacement
    assert create_model("vae", input_dim=5).config["name"] == "vae"


def test_model_class_without_input_dim_is_refused(clean_registry):
    @register_model("no_input_dim")
    class NoInputDim(ScdlModel):
        supported_tasks = ("reconstruction",)

        def __init__(self, *, size: int = 3):
            super().__init__()

    with pytest.raises(ValueError, match="does not accept an input_dim keyword"):
        create_model("no_input_dim", input_dim=4)


# -- config round trip and determinism ----------------------------------------------------------


@pytest.mark.parametrize("name", BUNDLED)
def test_config_round_trip_rebuilds_identical_model(name):
    torch.manual_seed(0)
    model = make(name)
    config = json.loads(json.dumps(model.config))  # JSON-able, and survives JSON
    assert config["name"] == name
    assert config["kwargs"]["input_dim"] == INPUT_DIM
    assert config["kwargs"]["hidden_dims"] == list(SMALL[name]["hidden_dims"])
    for key in ("latent_dim", "hidden_dims", "dropout", "batch_norm"):
        assert key in config["kwargs"]

    torch.manual_seed(123)  # different initialisation
    rebuilt = create_model(config["name"], **config["kwargs"])
    assert type(rebuilt) is type(model)
    assert rebuilt.config == model.config
    original_state, rebuilt_state = model.state_dict(), rebuilt.state_dict()
    assert list(original_state) == list(rebuilt_state)
    assert {k: v.shape for k, v in original_state.items()} == {
        k: v.shape for k, v in rebuilt_state.items()
    }

    rebuilt.load_state_dict(original_state)
    x = torch.randn(7, INPUT_DIM)
    with torch.inference_mode():
        expected, got = model.eval()(x), rebuilt.eval()(x)
    assert set(expected) == set(got)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", BUNDLED)
def test_models_are_deterministic_under_manual_seed(name):
    x = torch.randn(9, INPUT_DIM)
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        model = make(name, seed=None).train()
        outputs = model(x)
        results.append((model.state_dict(), outputs))
    (state_a, out_a), (state_b, out_b) = results
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key


@pytest.mark.parametrize("name", BUNDLED)
def test_output_shapes(name):
    model = make(name).eval()
    out = model(torch.randn(5, INPUT_DIM))
    assert out["latent"].shape == (5, 4)
    if name == "mlp_classifier":
        assert set(out) == {"logits", "latent"}
        assert out["logits"].shape == (5, 3)
    else:
        assert out["reconstruction"].shape == (5, INPUT_DIM)
        assert out["reconstruction"].dtype == torch.float32


def test_wrong_input_width_is_a_clear_error():
    model = make("autoencoder")
    with pytest.raises(
        ValueError, match=r"expects x as a tensor of shape \(n_cells, 50\), got shape \(3, 49\)"
    ):
        model(torch.zeros(3, 49))
    with pytest.raises(ValueError, match=r"got shape \(50,\)"):
        model(torch.zeros(50))


def test_config_records_constructor_arguments_of_custom_models():
    class WithKwargs(ScdlModel):
        supported_tasks = ("reconstruction",)

        def __init__(self, *, input_dim: int, widths=(4, 2), **extra):
            super().__init__()
            self.extra = extra

    model = WithKwargs(input_dim=3, scale=np.float32(0.5))
    assert model.config == {
        "name": None,
        "kwargs": {"input_dim": 3, "widths": [4, 2], "scale": 0.5},
    }
    assert model.init_arguments["widths"] == (4, 2)

    class Unregistered(AutoEncoder):
        pass

    child = Unregistered(input_dim=5, latent_dim=2)
    assert child.config["name"] is None  # subclasses do not inherit the registry name
    assert child.config["kwargs"]["latent_dim"] == 2

    bad = WithKwargs(input_dim=3, activation=nn.ReLU())
    with pytest.raises(ValueError, match="argument 'activation' is a ReLU, which cannot be stored"):
        _ = bad.config


# -- model specifics -------------------------------------------------------------------------------


def test_tuned_dropout_defaults():
    # benchmarks/quality.py: no dropout in the vae (latent sampling regularises it),
    # 0.3 in the mlp_classifier; the other models keep 0.1
    vae = create_model("vae", input_dim=10)
    assert vae.dropout == 0.0
    assert vae.config["kwargs"]["dropout"] == 0.0
    assert not any(isinstance(m, nn.Dropout) for m in vae.modules())
    mlp = create_model("mlp_classifier", input_dim=10, num_classes=3)
    assert mlp.dropout == 0.3
    assert [m.p for m in mlp.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3, 0.3]
    assert create_model("autoencoder", input_dim=10).dropout == 0.1


def test_vae_kl_warmup_schedule():
    model = create_model("vae", input_dim=10, kl_weight=0.2, kl_warmup_epochs=4)
    assert model.current_kl_weight == 0.0  # a new model is in the epoch-0 state
    weights = []
    for epoch in range(7):
        model.on_epoch_start(epoch)
        weights.append(model.current_kl_weight)
    np.testing.assert_allclose(weights, [0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    # resuming calls on_epoch_start again with the resumed epoch
    model.on_epoch_start(2)
    assert model.current_kl_weight == pytest.approx(0.1)

    no_warmup = create_model("vae", input_dim=10, kl_weight=0.3, kl_warmup_epochs=0)
    assert no_warmup.current_kl_weight == 0.3
    no_warmup.on_epoch_start(0)
    assert no_warmup.current_kl_weight == 0.3


def test_vae_extra_losses_is_weighted_kl():
    torch.manual_seed(0)
    model = create_model(
        "vae", input_dim=10, latent_dim=3, hidden_dims=(8,), kl_weight=0.5, kl_warmup_epochs=2
    )
    model.eval()
    out = model(torch.randn(6, 10))
    mu, logvar = out["mu"], out["logvar"]
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)).mean()
    # evaluation mode always uses the full weight, so validation losses are comparable
    torch.testing.assert_close(model.extra_losses(out)["kl"], 0.5 * kl)
    model.train()
    assert model.extra_losses(out)["kl"].item() == 0.0  # epoch 0 of the warm-up
    model.on_epoch_start(1)
    torch.testing.assert_close(model.extra_losses(out)["kl"], 0.25 * kl)
    model.on_epoch_start(5)
    torch.testing.assert_close(model.extra_losses(out)["kl"], 0.5 * kl)
    assert kl.item() > 0


def test_vae_latent_is_sampled_in_training_and_mean_in_eval():
    torch.manual_seed(0)
    model = create_model(
        "vae", input_dim=10, latent_dim=3, hidden_dims=(8,), batch_norm=False, dropout=0.0
    )
    x = torch.randn(6, 10)
    train_out = model.train()(x)
    assert not torch.equal(train_out["latent"], train_out["mu"])
    eval_out = model.eval()(x)
    assert torch.equal(eval_out["latent"], eval_out["mu"])
    torch.testing.assert_close(eval_out["mu"], train_out["mu"])
    # logvar is clamped
    with torch.no_grad():
        model.logvar.bias.fill_(100.0)
    assert model(x)["logvar"].max().item() == 10.0


@pytest.mark.parametrize("noise", ["gaussian", "dropout"])
def test_denoising_noise_only_in_training_mode(noise):
    torch.manual_seed(0)
    model = create_model(
        "denoising_autoencoder",
        input_dim=20,
        hidden_dims=(8,),
        latent_dim=3,
        dropout=0.0,
        batch_norm=False,
        noise=noise,
        noise_level=0.3,
    )
    x = torch.randn(16, 20)
    clean = model.decode(model.encode(x))
    model.eval()
    torch.testing.assert_close(model(x)["reconstruction"], clean, rtol=0, atol=0)
    model.train()
    first, second = model(x)["reconstruction"], model(x)["reconstruction"]
    assert not torch.allclose(first, clean)
    assert not torch.allclose(first, second)  # fresh noise every call


def test_denoising_corruption_values():
    torch.manual_seed(0)
    x = torch.ones(2000, 20)
    masked = create_model(
        "denoising_autoencoder", input_dim=20, noise="dropout", noise_level=0.25
    ).corrupt(x)
    assert set(masked.unique().tolist()) == {0.0, 1.0}
    assert (masked == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    gaussian = create_model(
        "denoising_autoencoder", input_dim=20, noise="gaussian", noise_level=0.5
    ).corrupt(x)
    assert (gaussian - x).std().item() == pytest.approx(0.5, abs=0.01)
    untouched = create_model("denoising_autoencoder", input_dim=20, noise_level=0.0).corrupt(x)
    assert untouched is x


@pytest.mark.parametrize(
    ("input_dim", "genes_per_token", "n_tokens", "padding"),
    [(100, 32, 4, 28), (96, 32, 3, 0), (10, 64, 1, 54), (1, 1, 1, 0)],
)
def test_transformer_tokens_are_zero_padded(input_dim, genes_per_token, n_tokens, padding):
    torch.manual_seed(0)
    model = create_model(
        "transformer_ae",
        input_dim=input_dim,
        genes_per_token=genes_per_token,
        d_model=8,
        n_heads=2,
        latent_dim=2,
        hidden_dims=(8,),
    )
    assert (model.n_tokens, model.padding) == (n_tokens, padding)
    assert model.position_embedding.shape == (1, n_tokens, 8)
    x = torch.randn(3, input_dim)
    tokens = model.tokenize(x)
    assert tokens.shape == (3, n_tokens, genes_per_token)
    flat = tokens.reshape(3, -1)
    assert torch.equal(flat[:, :input_dim], x)
    assert torch.count_nonzero(flat[:, input_dim:]) == 0
    out = model.eval()(x)
    assert out["reconstruction"].shape == (3, input_dim)
    assert out["latent"].shape == (3, 2)


def test_transformer_dim_feedforward_default_and_config():
    model = create_model("transformer_ae", input_dim=30, d_model=16, n_heads=4)
    assert model.dim_feedforward == 32
    assert model.transformer.layers[0].linear1.out_features == 32
    assert model.config["kwargs"]["dim_feedforward"] is None
    assert len(model.transformer.layers) == 2


def test_classifier_latent_is_last_hidden_layer():
    model = create_model(
        "mlp_classifier", input_dim=12, num_classes=4, hidden_dims=(8,), latent_dim=5
    ).eval()
    x = torch.randn(6, 12)
    out = model(x)
    torch.testing.assert_close(out["logits"], model.head(out["latent"]))
    assert (out["latent"] >= 0).all()  # ReLU activations
    assert isinstance(model, MLPClassifier)


def test_create_model_seed_controls_initialisation_only():
    state = torch.random.get_rng_state()
    a = create_model("autoencoder", input_dim=8, hidden_dims=(4,))
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    b = create_model("autoencoder", input_dim=8, hidden_dims=(4,))
    c = create_model("autoencoder", input_dim=8, hidden_dims=(4,), seed=1)
    assert torch.equal(a.encoder[0].weight, b.encoder[0].weight)
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)
    assert "seed" not in a.config["kwargs"]
    torch.manual_seed(5)
    d = create_model("autoencoder", input_dim=8, hidden_dims=(4,), seed=None)
    torch.manual_seed(5)
    e = create_model("autoencoder", input_dim=8, hidden_dims=(4,), seed=None)
    assert torch.equal(d.encoder[0].weight, e.encoder[0].weight)
    assert not torch.equal(d.encoder[0].weight, a.encoder[0].weight)
    with pytest.raises(ValueError, match="seed must be an integer or None, got 'a'"):
        create_model("autoencoder", input_dim=8, seed="a")
