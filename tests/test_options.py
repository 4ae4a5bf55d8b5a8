"""DataSpec and TrainerOptions: the typed specs every front hands to the pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from scdlkit.data.spec import DataSpec
from scdlkit.train.options import (
    DEFAULT_EPOCHS,
    DEFAULT_PATIENCE,
    TrainerOptions,
    build_optimizer,
    fused_supported,
)

keys = st.one_of(st.none(), st.text(min_size=1, max_size=8))


@given(
    layer=keys,
    mod=st.one_of(
        st.none(), st.text(min_size=1, max_size=5), st.lists(st.text(min_size=1), max_size=3)
    ),
    use_hvg=st.booleans(),
    n_top_genes=st.integers(1, 5000),
    val_size=st.floats(0, 0.4),
    counts=st.booleans(),
)
def test_data_spec_round_trips_through_json(layer, mod, use_hvg, n_top_genes, val_size, counts):
    spec = DataSpec(
        layer=layer, mod=mod, use_hvg=use_hvg, n_top_genes=n_top_genes, val_size=val_size,
        counts=counts, categorical_covariate_keys=("donor",) if counts else (),
    )  # fmt: skip
    stored = json.loads(json.dumps(spec.to_dict()))
    assert stored["spec_version"] == 1
    assert DataSpec.from_dict(stored) == spec


def test_data_spec_refuses_newer_versions_unknown_options_and_covariates_without_counts():
    with pytest.raises(ValueError, match="version 99"):
        DataSpec.from_dict({"spec_version": 99})
    with pytest.raises(ValueError, match="Unknown data options 'normalise'"):
        DataSpec.from_dict({"normalise": True})
    with pytest.raises(ValueError, match="count models"):
        DataSpec(batch_key="b", categorical_covariate_keys=["donor"])


def test_data_spec_splits_keyword_dictionaries():
    spec, rest = DataSpec.from_options({"layer": "counts", "epochs": 3, "label_key": "cell_type"})
    assert spec == DataSpec(layer="counts", label_key="cell_type")
    assert rest == {"epochs": 3}
    assert spec.replace(layer=None).layer is None


def test_trainer_options_defaults_validation_and_settings():
    options = TrainerOptions()
    assert (options.epochs, options.early_stopping_patience) == (DEFAULT_EPOCHS, DEFAULT_PATIENCE)
    assert (DEFAULT_EPOCHS, DEFAULT_PATIENCE) == (200, 20)
    with pytest.raises(ValueError, match="epochs must be an integer > 0, got 0"):
        TrainerOptions(epochs=0)
    with pytest.raises(ValueError, match="Unknown optimizer 'adagrad'"):
        TrainerOptions(optimizer="adagrad")
    with pytest.raises(TypeError, match="Unknown Trainer options 'epoch'"):
        TrainerOptions.from_kwargs({"epoch": 3})
    custom = TrainerOptions(optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    settings = custom.to_dict()
    assert settings["optimizer"] == "custom"
    assert TrainerOptions.from_settings(settings).optimizer == "adam"
    assert TrainerOptions.from_settings(settings, epochs=7).epochs == 7


def test_adam_is_fused_on_cpu_and_gives_the_same_step_as_the_loop():
    model = nn.Linear(4, 3)
    reference = nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    optimizer = build_optimizer(model, TrainerOptions(lr=0.01))
    assert fused_supported(list(model.parameters()))
    assert optimizer.defaults["fused"] is True
    plain = torch.optim.Adam(reference.parameters(), lr=0.01, foreach=False)
    x = torch.randn(8, 4)
    for net, opt in ((model, optimizer), (reference, plain)):
        for _ in range(3):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
    for fused_param, loop_param in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(fused_param, loop_param, rtol=1e-5, atol=1e-6)
    assert not build_optimizer(model, TrainerOptions(optimizer="sgd")).defaults.get("fused")
