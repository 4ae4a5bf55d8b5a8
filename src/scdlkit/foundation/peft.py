"""Parameter-efficient fine-tuning: the LoRA/IA3 linear layer, bottleneck adapters, and applying a strategy.

Everything runs in our own ``forward`` methods, so every configured delta and
scale takes effect in training and in inference alike (no fused PyTorch path
that reads the raw weight and skips it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .strategies import (
    AdapterConfig,
    BaseConfig,
    FrozenProbeConfig,
    FullFinetuneConfig,
    HeadConfig,
    IA3Config,
    LoRAConfig,
    PrefixTuningConfig,
)


class PeftLinear(nn.Linear):
    """``nn.Linear`` with optional LoRA and IA3 slots.

    ``y = (W x + b + scaling · B A dropout(x)) ⊙ s`` where the LoRA term is
    present after :meth:`add_lora` and the IA3 scale ``s`` after :meth:`add_ia3`.

    Examples
    --------
    >>> layer = PeftLinear(4, 3)
    >>> layer.add_ia3(init_scale=2.0)
    >>> x = torch.randn(2, 4)
    >>> torch.allclose(layer(x), 2.0 * F.linear(x, layer.weight, layer.bias))
    True
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.register_parameter("lora_a", None)
        self.register_parameter("lora_b", None)
        self.register_parameter("ia3_scale", None)
        self.register_module("lora_dropout", None)
        self.lora_scaling = 0.0

    def add_lora(
        self, rank: int, alpha: float, dropout: float, *, generator: torch.Generator | None = None
    ) -> None:
        """Add a trainable low-rank update ``(alpha / rank) · B A`` (``B`` starts at zero)."""
        weight = self.weight
        a = torch.empty(rank, self.in_features, dtype=weight.dtype)
        bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform(a=sqrt(5)) bound
        a.uniform_(-bound, bound, generator=generator)
        self.lora_a = nn.Parameter(a.to(weight.device))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, device=weight.device))
        self.lora_scaling = float(alpha) / float(rank)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else None

    def add_ia3(self, init_scale: float = 1.0) -> None:
        """Add a trainable per-output-channel scale initialised to ``init_scale``."""
        self.ia3_scale = nn.Parameter(
            torch.full((self.out_features,), float(init_scale), device=self.weight.device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the linear output with the LoRA update and IA3 scale applied when present."""
        out = F.linear(x, self.weight, self.bias)
        if self.lora_a is not None:
            z = x if self.lora_dropout is None else self.lora_dropout(x)
            out = out + F.linear(F.linear(z, self.lora_a), self.lora_b) * self.lora_scaling
        if self.ia3_scale is not None:
            out = out * self.ia3_scale
        return out


class BottleneckAdapter(nn.Module):
    """``up(dropout(act(down(x))))``; ``up`` starts at zero, so a new adapter changes nothing.

    Examples
    --------
    >>> adapter = BottleneckAdapter(8, 2)
    >>> float(adapter(torch.randn(3, 8)).detach().abs().max())
    0.0
    """

    def __init__(
        self, dim: int, bottleneck_dim: int, *, dropout: float = 0.0, activation: str = "gelu"
    ) -> None:
        super().__init__()
        activations = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
        if activation not in activations:
            msg = f"Unknown adapter activation {activation!r}; use one of {sorted(activations)}."
            raise ValueError(msg)
        self.down = nn.Linear(dim, bottleneck_dim)
        self.activation = activations[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the adapter output (added to the sublayer output by the layer)."""
        return self.up(self.dropout(self.activation(self.down(x))))


def apply_strategy(
    backbone: nn.Module, config: BaseConfig, *, generator: torch.Generator | None = None
) -> None:
    """Freeze ``backbone`` and add/unfreeze what ``config``'s strategy trains.

    Afterwards exactly the strategy's parameters have ``requires_grad=True``
    (none for ``frozen_probe`` and ``head``; the head is not part of the backbone).

    Parameters
    ----------
    backbone
        A :class:`~scdlkit.foundation.ScGPTBackbone` (modified in place).
    config
        The strategy's config.
    generator
        Seeds the initialisation of new LoRA and prefix parameters.
    """
    backbone.requires_grad_(False)
    layers = backbone.transformer_encoder.layers
    if isinstance(config, FullFinetuneConfig):
        backbone.requires_grad_(True)
    elif isinstance(config, LoRAConfig):
        for layer in layers:
            for target in config.target_modules:
                _linear(layer, target).add_lora(
                    config.rank, config.alpha, config.dropout, generator=generator
                )
    elif isinstance(config, IA3Config):
        for layer in layers:
            for target in config.target_modules:
                if target == "ffn":
                    layer.ffn_scale = nn.Parameter(
                        torch.full(
                            (layer.linear1.out_features,),
                            float(config.init_scale),
                            device=layer.linear1.weight.device,
                        )
                    )
                else:
                    _linear(layer, target).add_ia3(config.init_scale)
    elif isinstance(config, AdapterConfig):
        for layer in layers:
            dim = layer.norm1.normalized_shape[0]
            device = layer.norm1.weight.device
            with torch.random.fork_rng(devices=[]):
                if generator is not None:
                    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
                layer.adapter_attn = BottleneckAdapter(
                    dim, config.bottleneck_dim, dropout=config.dropout, activation=config.activation
                ).to(device)
                layer.adapter_ffn = BottleneckAdapter(
                    dim, config.bottleneck_dim, dropout=config.dropout, activation=config.activation
                ).to(device)
    elif isinstance(config, PrefixTuningConfig):
        for layer in layers:
            layer.self_attn.add_prefix(
                config.prefix_length,
                init_std=config.init_std,
                dropout=config.dropout,
                generator=generator,
            )
    elif not isinstance(config, FrozenProbeConfig | HeadConfig):
        msg = f"Unknown strategy config {type(config).__name__}."
        raise TypeError(msg)


def _linear(layer: nn.Module, target: str) -> nn.Module:
    if target in ("q_proj", "k_proj", "v_proj", "out_proj"):
        return getattr(layer.self_attn, target)
    return getattr(layer, target)


def trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters with ``requires_grad=True``, by name."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}
