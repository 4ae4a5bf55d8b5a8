"""Building blocks of the scGPT encoder, with slots for parameter-efficient fine-tuning.

Everything runs in our own ``forward`` methods (no fused PyTorch attention
module), so LoRA deltas, IA3 scales, adapters and prefixes always take effect,
in training and in inference alike. Empty slots hold ``None`` and add nothing
to the ``state_dict``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .peft import PeftLinear

#: Inputs of the continuous value encoder are clamped to this value (as in scGPT).
MAX_VALUE = 512.0


class GeneEncoder(nn.Module):
    """Gene token embedding followed by LayerNorm (no positional encoding)."""

    def __init__(self, num_tokens: int, dim: int, padding_idx: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, dim, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(dim)

    def forward(self, gene_ids: torch.Tensor) -> torch.Tensor:
        """Embed gene ids ``(n, L)`` to ``(n, L, d)``."""
        return self.enc_norm(self.embedding(gene_ids))


class ContinuousValueEncoder(nn.Module):
    """Expression value (a bin index, as float) → ``d``: Linear, ReLU, Linear, LayerNorm, Dropout."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(1, dim)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Embed values ``(n, L)`` to ``(n, L, d)``."""
        x = torch.clamp(values.unsqueeze(-1), max=MAX_VALUE)
        x = self.linear2(self.activation(self.linear1(x)))
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections and optional key/value prefixes.

    Heads are contiguous ``head_dim`` slices of each projection (the layout of
    packed ``Wqkv`` / ``in_proj_weight`` rows); scale ``1/sqrt(head_dim)``;
    ``padding_mask`` is ``True`` at positions to ignore.
    """

    def __init__(self, dim: int, nheads: int, dropout: float) -> None:
        super().__init__()
        self.nheads = nheads
        self.head_dim = dim // nheads
        self.dropout = dropout
        self.q_proj = PeftLinear(dim, dim)
        self.k_proj = PeftLinear(dim, dim)
        self.v_proj = PeftLinear(dim, dim)
        self.out_proj = PeftLinear(dim, dim)
        self.register_parameter("prefix_key", None)
        self.register_parameter("prefix_value", None)
        self.register_module("prefix_dropout", None)

    def add_prefix(
        self,
        length: int,
        *,
        init_std: float,
        dropout: float,
        generator: torch.Generator | None = None,
    ) -> None:
        """Add ``length`` trainable key and value vectors that every query attends to."""
        dim = self.q_proj.in_features
        device = self.q_proj.weight.device
        key = torch.randn(length, dim, generator=generator) * init_std
        value = torch.randn(length, dim, generator=generator) * init_std
        self.prefix_key = nn.Parameter(key.to(device))
        self.prefix_value = nn.Parameter(value.to(device))
        self.prefix_dropout = nn.Dropout(dropout) if dropout > 0 else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.nheads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over ``x`` ``(n, L, d)``; ``padding_mask`` ``(n, L)`` is ``True`` at padding."""
        batch, length, dim = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.prefix_key is not None:
            pk, pv = self.prefix_key, self.prefix_value
            if self.prefix_dropout is not None:
                pk, pv = self.prefix_dropout(pk), self.prefix_dropout(pv)
            k = torch.cat([pk.to(k.dtype).expand(batch, -1, -1), k], dim=1)
            v = torch.cat([pv.to(v.dtype).expand(batch, -1, -1), v], dim=1)
            if padding_mask is not None:
                keep = padding_mask.new_zeros(batch, pk.shape[0])
                padding_mask = torch.cat([keep, padding_mask], dim=1)
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            self._heads(q),
            self._heads(k),
            self._heads(v),
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer with ReLU (the layer scGPT uses).

    ``x = norm1(x + dropout1(attn(x)))``, then
    ``x = norm2(x + dropout2(linear2(dropout(relu(linear1(x))))))``. Optional
    slots: ``adapter_attn`` / ``adapter_ffn`` (added to the sublayer output) and
    ``ffn_scale`` (IA3 scale of the feed-forward activation).
    """

    def __init__(self, dim: int, nheads: int, d_hid: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, nheads, dropout)
        self.linear1 = PeftLinear(dim, d_hid)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = PeftLinear(d_hid, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.register_module("adapter_attn", None)
        self.register_module("adapter_ffn", None)
        self.register_parameter("ffn_scale", None)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the layer to ``x`` ``(n, L, d)``."""
        attended = self.self_attn(x, padding_mask)
        if self.adapter_attn is not None:
            attended = attended + self.adapter_attn(attended)
        x = self.norm1(x + self.dropout1(attended))
        hidden = F.relu(self.linear1(x))
        if self.ffn_scale is not None:
            hidden = hidden * self.ffn_scale
        out = self.linear2(self.dropout(hidden))
        if self.adapter_ffn is not None:
            out = out + self.adapter_ffn(out)
        return self.norm2(x + self.dropout2(out))


class TransformerEncoder(nn.Module):
    """A stack of :class:`EncoderLayer` with no final norm."""

    def __init__(self, nlayers: int, dim: int, nheads: int, d_hid: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(dim, nheads, d_hid, dropout) for _ in range(nlayers)
        )

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply every layer in turn."""
        for layer in self.layers:
            x = layer(x, padding_mask)
        return x
