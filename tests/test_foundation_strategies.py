"""Adaptation strategies: what each one trains (counted), and that every configured scale is applied."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

from scdlkit import Trainer
from scdlkit.foundation import (
    AdapterConfig,
    FullFinetuneConfig,
    HeadConfig,
    IA3Config,
    LoRAConfig,
    PrefixTuningConfig,
    ScGPTTokenizer,
    TokenLoader,
    TokenSource,
    list_strategies,
    load_scgpt,
)
from scdlkit.foundation.heads import AnnotationModel, ClassifierHead
from scdlkit.foundation.peft import PeftLinear, apply_strategy
from scdlkit.foundation.strategies import FrozenProbeConfig, config_from_dict, resolve_configs
from scdlkit.foundation.testing import make_tiny_checkpoint

D, D_HID, LAYERS, CLASSES = 16, 32, 2, 3
GENES = [f"G{i}" for i in range(30)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("s"), genes=GENES, d_hid=D_HID, dropout=0.1)
    return load_scgpt(path, device="cpu")


@pytest.fixture(scope="module")
def loader(base):
    rng = np.random.default_rng(0)
    n = 48
    y = np.arange(n) % CLASSES
    x = rng.poisson(0.5, size=(n, 30)).astype(np.float32)
    x[:, :10] += 3 * (y[:, None] == 0)  # some signal
    adata = AnnData(sp.csr_matrix(x), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
    adata.var_names = GENES
    source = TokenSource.from_adata(adata, base.vocab)
    tokenizer = ScGPTTokenizer.from_model(base, max_len=16)
    return TokenLoader(source, tokenizer, labels=y, batch_size=16, shuffle=True, seed=0)


def _expected_count(config) -> int:
    head = 2 * D + D * CLASSES + CLASSES
    if isinstance(config, HeadConfig):
        return head
    if isinstance(config, LoRAConfig):
        sizes = {
            "q_proj": (D, D),
            "k_proj": (D, D),
            "v_proj": (D, D),
            "out_proj": (D, D),
            "linear1": (D, D_HID),
            "linear2": (D_HID, D),
        }
        return head + LAYERS * sum(
            config.rank * (i + o) for i, o in (sizes[t] for t in config.target_modules)
        )
    if isinstance(config, IA3Config):
        sizes = {
            "q_proj": D,
            "k_proj": D,
            "v_proj": D,
            "out_proj": D,
            "linear1": D_HID,
            "linear2": D,
            "ffn": D_HID,
        }
        return head + LAYERS * sum(sizes[t] for t in config.target_modules)
    if isinstance(config, AdapterConfig):
        b = config.bottleneck_dim
        return head + LAYERS * 2 * (D * b + b + b * D + D)
    if isinstance(config, PrefixTuningConfig):
        return head + LAYERS * 2 * config.prefix_length * D
    raise AssertionError(config)


CONFIGS = [
    HeadConfig(epochs=3),
    LoRAConfig(epochs=3, rank=2, target_modules=("q_proj", "k_proj", "v_proj", "linear1")),
    IA3Config(epochs=3),
    AdapterConfig(epochs=3, bottleneck_dim=4),
    PrefixTuningConfig(epochs=3, prefix_length=3),
    FullFinetuneConfig(epochs=3, lr=1e-3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.strategy)
def test_strategy_trains_exactly_its_parameters(base, loader, config):
    backbone = copy.deepcopy(base.backbone)
    apply_strategy(backbone, config, generator=torch.Generator().manual_seed(0))
    frozen = config.strategy == "head"
    model = AnnotationModel(
        backbone, ClassifierHead(D, CLASSES, dropout=0.1), frozen_backbone=frozen
    )
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if isinstance(config, FullFinetuneConfig):
        assert (
            count
            == sum(p.numel() for p in base.backbone.parameters()) + 2 * D + D * CLASSES + CLASSES
        )
    else:
        assert count == _expected_count(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, "classification", epochs=config.epochs, lr=1e-2, device="cpu", seed=0).fit(
        loader
    )
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == trainable
    if not isinstance(config, FullFinetuneConfig):
        # the pretrained weights stay exactly as loaded
        for key, value in base.backbone.state_dict().items():
            assert torch.equal(model.backbone.state_dict()[key], value), key


def _layer_output(layer, x):
    layer.eval()
    with torch.no_grad():
        return layer(x)


def test_new_peft_modules_start_at_the_pretrained_function(base):
    x = torch.randn(3, 7, D)
    reference = _layer_output(copy.deepcopy(base.backbone.transformer_encoder.layers[0]), x)
    for config in (
        LoRAConfig(target_modules=("q_proj", "v_proj", "out_proj", "linear1", "linear2")),
        IA3Config(),
        AdapterConfig(),
    ):
        backbone = copy.deepcopy(base.backbone)
        apply_strategy(backbone, config)
        torch.testing.assert_close(
            _layer_output(backbone.transformer_encoder.layers[0], x), reference
        )


def test_lora_scale_is_alpha_over_rank_and_dropout_applies():
    torch.manual_seed(0)
    layer = PeftLinear(6, 5)
    x = torch.randn(4, 6)
    base_out = torch.nn.functional.linear(x, layer.weight, layer.bias)
    layer.add_lora(rank=2, alpha=3.0, dropout=0.0)
    with torch.no_grad():
        layer.lora_b.normal_()
    delta = (x @ layer.lora_a.T @ layer.lora_b.T) * 1.5
    torch.testing.assert_close(layer(x), base_out + delta)
    layer.lora_scaling = 3.0
    torch.testing.assert_close(layer(x), base_out + 2 * delta)
    layer.add_lora(rank=2, alpha=2.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_b.normal_()
    layer.train()
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize(
    "target", ["q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2", "ffn"]
)
def test_ia3_scale_is_applied_to_each_target(base, target):
    """IA3 with init_scale s on one target equals the base layer with that target's weights scaled by s."""
    x = torch.randn(2, 6, D)
    scaled = copy.deepcopy(base.backbone)
    apply_strategy(scaled, IA3Config(init_scale=0.6, target_modules=(target,)))
    manual = copy.deepcopy(base.backbone.transformer_encoder.layers[0])
    with torch.no_grad():
        if target == "ffn":
            manual.linear2.weight.mul_(0.6)
        else:
            module = getattr(manual.self_attn, target, None) or getattr(manual, target)
            module.weight.mul_(0.6)
            module.bias.mul_(0.6)
    expected = _layer_output(manual, x)
    got = _layer_output(scaled.transformer_encoder.layers[0], x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, _layer_output(base.backbone.transformer_encoder.layers[0], x))


def test_prefix_init_std_dropout_and_effect(base):
    x = torch.randn(2, 6, D)
    backbone = copy.deepcopy(base.backbone)
    apply_strategy(
        backbone,
        PrefixTuningConfig(prefix_length=50, init_std=0.5, dropout=0.5),
        generator=torch.Generator().manual_seed(0),
    )
    attention = backbone.transformer_encoder.layers[0].self_attn
    assert attention.prefix_key.shape == (50, D)
    assert float(attention.prefix_key.detach().std()) == pytest.approx(0.5, rel=0.15)
    layer = backbone.transformer_encoder.layers[0]
    assert not torch.allclose(
        _layer_output(layer, x), _layer_output(base.backbone.transformer_encoder.layers[0], x)
    )
    layer.train()
    for module in layer.modules():
        if isinstance(module, torch.nn.Dropout) and module is not attention.prefix_dropout:
            module.p = 0.0
    layer.self_attn.dropout = 0.0
    assert not torch.equal(layer(x), layer(x))  # only the prefix dropout is random


def test_adapter_settings_are_used(base):
    backbone = copy.deepcopy(base.backbone)
    apply_strategy(backbone, AdapterConfig(bottleneck_dim=5, dropout=0.3, activation="relu"))
    adapter = backbone.transformer_encoder.layers[1].adapter_ffn
    assert adapter.down.out_features == 5 and adapter.dropout.p == 0.3
    assert isinstance(adapter.activation, torch.nn.ReLU)


def test_head_dropout_and_frozen_backbone_mode(base):
    model = AnnotationModel(
        base.backbone, ClassifierHead(D, CLASSES, dropout=0.37), frozen_backbone=True
    )
    model.train()
    assert model.head.dropout.p == 0.37 and model.head.training and not model.backbone.training


def test_config_validation_and_round_trip():
    assert list_strategies()["strategy"].tolist()[0] == "frozen_probe"
    configs = resolve_configs(
        ("lora", "ia3"), {"lora": LoRAConfig(rank=3), "ia3": {"init_scale": 0.5}}
    )
    assert configs["lora"].rank == 3 and configs["ia3"].init_scale == 0.5
    for config in (*configs.values(), FrozenProbeConfig(C=2.0)):
        assert config_from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown strategy 'loraa'"):
        resolve_configs(("loraa",))
    with pytest.raises(ValueError, match="twice"):
        resolve_configs(("head", "head"))
    with pytest.raises(ValueError, match="not in strategies"):
        resolve_configs(("head",), {"lora": {}})
    with pytest.raises(ValueError, match="must be a LoRAConfig"):
        resolve_configs(("lora",), {"lora": IA3Config()})
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="'wqkv'"):
        LoRAConfig(target_modules=("wqkv",))
    with pytest.raises(ValueError, match="ffn"):
        LoRAConfig(target_modules=("ffn",))
    with pytest.raises(ValueError, match="no field"):
        resolve_configs(("head",), {"head": {"epoch": 3}})
    with pytest.raises(ValueError, match="epochs"):
        HeadConfig(epochs=0)
    with pytest.raises(ValueError, match="activation"):
        AdapterConfig(activation="swish")
