"""Tiny random scGPT checkpoints in the official format, for tests, tutorials and docs.

The weights are random: embeddings from them carry no biology. Real results
need the real pretrained weights (see the foundation docs).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .vocab import SPECIAL_TOKENS

#: Attention-weight layouts of official checkpoints (see ``load_scgpt``).
LAYOUTS = ("flash", "flash_wrapped", "pytorch")


def _linear(
    state: dict[str, torch.Tensor],
    name: str,
    out_dim: int,
    in_dim: int,
    g: torch.Generator,
    bias: bool = True,
) -> None:
    state[f"{name}.weight"] = torch.randn(out_dim, in_dim, generator=g) / math.sqrt(in_dim)
    if bias:
        state[f"{name}.bias"] = torch.randn(out_dim, generator=g) * 0.02


def _norm(state: dict[str, torch.Tensor], name: str, dim: int, g: torch.Generator) -> None:
    state[f"{name}.weight"] = 1.0 + 0.1 * torch.randn(dim, generator=g)
    state[f"{name}.bias"] = 0.1 * torch.randn(dim, generator=g)


def official_state_dict(
    *,
    vocab_size: int,
    embsize: int = 16,
    nlayers: int = 2,
    d_hid: int | None = None,
    layout: str = "flash",
    extra_heads: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Build a random state_dict with the key names and shapes of an official scGPT checkpoint.

    Parameters
    ----------
    vocab_size
        Rows of ``encoder.embedding.weight``.
    embsize, nlayers, d_hid
        Architecture (``d_hid`` defaults to ``2 * embsize``).
    layout
        ``"flash"`` (``self_attn.Wqkv.*``, as in the released checkpoints),
        ``"flash_wrapped"`` (``self_attn._impl.Wqkv.*``) or ``"pytorch"``
        (``self_attn.in_proj_weight``).
    extra_heads
        Also write ``flag_encoder``, ``decoder`` and ``mvc_decoder`` keys, as the
        whole-human checkpoint has.
    seed
        Seed of the random weights; the same seed gives the same weights in every layout.

    Examples
    --------
    >>> state = official_state_dict(vocab_size=10, layout="pytorch")
    >>> tuple(state["transformer_encoder.layers.0.self_attn.in_proj_weight"].shape)
    (48, 16)
    """
    if layout not in LAYOUTS:
        msg = f"Unknown layout {layout!r}; use one of {LAYOUTS}."
        raise ValueError(msg)
    d = embsize
    d_hid = d_hid or 2 * d
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {
        "encoder.embedding.weight": torch.randn(vocab_size, d, generator=g)
    }
    _norm(state, "encoder.enc_norm", d, g)
    _linear(state, "value_encoder.linear1", d, 1, g)
    _linear(state, "value_encoder.linear2", d, d, g)
    _norm(state, "value_encoder.norm", d, g)
    attention_prefix = {"flash": "self_attn.Wqkv.", "flash_wrapped": "self_attn._impl.Wqkv."}
    out_prefix = "self_attn._impl.out_proj" if layout == "flash_wrapped" else "self_attn.out_proj"
    for index in range(nlayers):
        layer = f"transformer_encoder.layers.{index}."
        packed: dict[str, torch.Tensor] = {}
        _linear(packed, "qkv", 3 * d, d, g)
        if layout == "pytorch":
            state[layer + "self_attn.in_proj_weight"] = packed["qkv.weight"]
            state[layer + "self_attn.in_proj_bias"] = packed["qkv.bias"]
        else:
            state[layer + attention_prefix[layout] + "weight"] = packed["qkv.weight"]
            state[layer + attention_prefix[layout] + "bias"] = packed["qkv.bias"]
        _linear(state, layer + out_prefix, d, d, g)
        _linear(state, layer + "linear1", d_hid, d, g)
        _linear(state, layer + "linear2", d, d_hid, g)
        _norm(state, layer + "norm1", d, g)
        _norm(state, layer + "norm2", d, g)
    if extra_heads:
        state["flag_encoder.weight"] = torch.randn(2, d, generator=g)
        _linear(state, "decoder.fc.0", d, d, g)
        _linear(state, "decoder.fc.2", d, d, g)
        _linear(state, "decoder.fc.4", 1, d, g)
        _linear(state, "mvc_decoder.gene2query", d, d, g)
        _linear(state, "mvc_decoder.W", d, d, g, bias=False)
    return state


def make_tiny_checkpoint(
    path: str | os.PathLike,
    *,
    genes: Iterable[str],
    embsize: int = 16,
    nlayers: int = 2,
    nheads: int = 2,
    d_hid: int | None = None,
    layout: str = "flash",
    n_bins: int = 51,
    max_seq_len: int = 1200,
    dropout: float = 0.2,
    specials_in_vocab: bool = False,
    extra_heads: bool = True,
    wrapper: str | None = None,
    args: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a small random scGPT checkpoint folder in the official format.

    Creates ``args.json`` (the keys of the whole-human checkpoint's args, with
    small sizes), ``vocab.json`` (``genes`` with ids ``0..n - 1``, plus the
    special tokens when ``specials_in_vocab``) and ``best_model.pt`` (a flat
    state_dict with official key names). Nothing is downloaded; the weights are
    random and meaningless.

    Parameters
    ----------
    path
        Folder to create (existing files in it are overwritten).
    genes
        Gene symbols of the vocabulary.
    embsize, nlayers, nheads, d_hid
        Architecture (``d_hid`` defaults to ``2 * embsize``).
    layout
        Attention-weight layout: ``"flash"``, ``"flash_wrapped"`` or ``"pytorch"``.
    n_bins, max_seq_len, dropout
        Written to ``args.json``.
    specials_in_vocab
        Put ``<pad>``, ``<cls>``, ``<eoc>`` into ``vocab.json`` (otherwise the
        loader appends them, as for the official vocabulary).
    extra_heads
        Include ``flag_encoder``, ``decoder`` and ``mvc_decoder`` keys.
    wrapper
        Save ``{wrapper: state_dict}`` instead of the flat dict (e.g. ``"model_state_dict"``).
    args
        Extra or replacement ``args.json`` entries.
    seed
        Seed of the weights.

    Returns
    -------
    The folder.

    Examples
    --------
    >>> import tempfile
    >>> folder = make_tiny_checkpoint(tempfile.mkdtemp(), genes=["CD3E", "LYZ"])
    >>> sorted(p.name for p in folder.iterdir())
    ['args.json', 'best_model.pt', 'vocab.json']
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    genes = list(dict.fromkeys(str(g) for g in genes))
    tokens = genes + (list(SPECIAL_TOKENS) if specials_in_vocab else [])
    vocab = {token: index for index, token in enumerate(tokens)}
    vocab_size = len(genes) + len(SPECIAL_TOKENS)
    settings: dict[str, Any] = {
        "data_source": "tiny random checkpoint written by scdlkit.foundation.testing",
        "embsize": embsize,
        "nheads": nheads,
        "d_hid": d_hid or 2 * embsize,
        "nlayers": nlayers,
        "n_layers_cls": 3,
        "dropout": dropout,
        "pad_token": "<pad>",
        "pad_value": -2,
        "mask_value": -1,
        "input_style": "binned",
        "input_emb_style": "continuous",
        "n_bins": n_bins,
        "max_seq_len": max_seq_len,
        "fast_transformer": layout != "pytorch",
        "training_tasks": "both",
        "USE_GENERATIVE_TRAINING": True,
        "MVC": True,
        "no_cls": True,
        "USE_CLS": False,
        "fp16": True,
    }
    settings.update(args or {})
    state: Any = official_state_dict(
        vocab_size=vocab_size,
        embsize=embsize,
        nlayers=nlayers,
        d_hid=d_hid,
        layout=layout,
        extra_heads=extra_heads,
        seed=seed,
    )
    if wrapper is not None:
        state = {wrapper: state}
    (folder / "args.json").write_text(json.dumps(settings, indent=2))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    torch.save(state, folder / "best_model.pt")
    return folder
