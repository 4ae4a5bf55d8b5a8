"""Numerical parity of our scGPT encoder with stock PyTorch modules loaded from the renamed weights."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from scdlkit.foundation import load_scgpt
from scdlkit.foundation.layers import EncoderLayer
from scdlkit.foundation.model import pack_tokens
from scdlkit.foundation.testing import LAYOUTS, make_tiny_checkpoint, official_state_dict

D, HEADS, D_HID, LAYERS = 16, 4, 24, 2
GENES = [f"G{i}" for i in range(40)]
TOL = 1e-5


def _random_batch(n: int = 5, length: int = 14, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, D, generator=g)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    padding = torch.arange(length)[None, :] >= lengths[:, None]
    return x, padding


def _paired_layers(seed: int = 0):
    torch.manual_seed(seed)
    ours = EncoderLayer(D, HEADS, D_HID, dropout=0.0)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.3)
    stock = nn.TransformerEncoderLayer(
        D, HEADS, D_HID, dropout=0.0, activation="relu", batch_first=True, norm_first=False
    )
    attention = ours.self_attn
    packed_weight = torch.cat(
        [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]
    )
    packed_bias = torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias])
    state = {
        "self_attn.in_proj_weight": packed_weight,
        "self_attn.in_proj_bias": packed_bias,
        "self_attn.out_proj.weight": attention.out_proj.weight,
        "self_attn.out_proj.bias": attention.out_proj.bias,
        **{
            f"{name}.{kind}": getattr(getattr(ours, name), kind)
            for name in ("linear1", "linear2", "norm1", "norm2")
            for kind in ("weight", "bias")
        },
    }
    stock.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return ours, stock


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_layer_matches_stock_transformer_encoder_layer(mode):
    ours, stock = _paired_layers()
    getattr(ours, mode)()
    getattr(stock, mode)()
    x, padding = _random_batch()
    with torch.no_grad():
        expected = stock(x, src_key_padding_mask=padding)
        got = ours(x, padding)
    keep = ~padding
    difference = (expected[keep] - got[keep]).abs().max().item()
    print(f"layer parity ({mode}): max |diff| = {difference:.2e}")
    assert difference < TOL


def _reference_model(state: dict[str, torch.Tensor], vocab_size: int, pad_id: int) -> nn.Module:
    """scGPT's encoder assembled from stock modules, loaded through the official in_proj rename."""

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, D, padding_idx=pad_id)
            self.enc_norm = nn.LayerNorm(D)
            self.value1, self.value2, self.value_norm = (
                nn.Linear(1, D),
                nn.Linear(D, D),
                nn.LayerNorm(D),
            )
            layer = nn.TransformerEncoderLayer(D, HEADS, D_HID, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)

        def forward(self, ids, values):
            genes = self.enc_norm(self.embedding(ids))
            v = values.unsqueeze(-1).clamp(max=512)
            v = self.value_norm(self.value2(torch.relu(self.value1(v))))
            return self.encoder(genes + v, src_key_padding_mask=ids == pad_id)[:, 0]

    renamed = {}
    for key, value in state.items():
        key = re.sub(r"self_attn\._impl\.", "self_attn.", key)
        key = re.sub(r"self_attn\.Wqkv\.", "self_attn.in_proj_", key)
        renamed[key] = value
    mapping = {
        "embedding.weight": "encoder.embedding.weight",
        "enc_norm.weight": "encoder.enc_norm.weight",
        "enc_norm.bias": "encoder.enc_norm.bias",
        **{
            f"value{n}.{k}": f"value_encoder.linear{n}.{k}"
            for n in (1, 2)
            for k in ("weight", "bias")
        },
        "value_norm.weight": "value_encoder.norm.weight",
        "value_norm.bias": "value_encoder.norm.bias",
    }
    model = Reference()
    target = {}
    for key in model.state_dict():
        if key.startswith("encoder.layers."):
            target[key] = renamed[key.replace("encoder.layers.", "transformer_encoder.layers.")]
        else:
            target[key] = renamed[mapping[key]]
    model.load_state_dict(target)
    return model.eval()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_encoder_matches_stock_reference(tmp_path, layout):
    path = make_tiny_checkpoint(
        tmp_path,
        genes=GENES,
        embsize=D,
        nheads=HEADS,
        d_hid=D_HID,
        nlayers=LAYERS,
        layout=layout,
        seed=5,
    )
    model = load_scgpt(path, device="cpu")
    vocab = model.vocab
    state = official_state_dict(
        vocab_size=len(vocab), embsize=D, nlayers=LAYERS, d_hid=D_HID, layout=layout, seed=5
    )
    reference = _reference_model(state, len(vocab), vocab.pad_id)
    g = torch.Generator().manual_seed(1)
    n, length = 6, 18
    ids = torch.full((n, length), vocab.pad_id)
    values = torch.full((n, length), -2.0)
    ids[:, 0] = vocab.cls_id
    for row in range(n):
        k = int(torch.randint(2, length + 1, (1,), generator=g))
        ids[row, 1:k] = torch.randperm(len(GENES), generator=g)[: k - 1]
        values[row, 1:k] = torch.randint(1, 51, (k - 1,), generator=g).float()
    with torch.no_grad():
        expected = reference(ids, values)
        got = model(pack_tokens(ids, values))["cell_embedding"]
    difference = (expected - got).abs().max().item()
    print(f"full-encoder parity ({layout}): max |diff| = {difference:.2e}")
    assert difference < TOL
