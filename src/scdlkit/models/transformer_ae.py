"""Transformer autoencoder over tokens of consecutive genes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import ScdlModel
from .layers import check_bool, check_dropout, check_hidden_dims, check_int, mlp_head
from .registry import register_model


@register_model("transformer_ae")
class TransformerAE(ScdlModel):
    """Transformer encoder over gene tokens with an MLP decoder.

    The ``input_dim`` features are cut into ``ceil(input_dim / genes_per_token)``
    tokens of ``genes_per_token`` consecutive features (the last token is
    padded with zeros). Each token is embedded linearly to ``d_model``, a
    learned positional embedding is added, ``n_layers`` transformer encoder
    layers mix the tokens, and the mean over tokens is projected to the
    ``latent_dim`` latent. An MLP (``latent_dim -> reversed(hidden_dims) ->
    input_dim``) decodes it.

    Parameters
    ----------
    input_dim, latent_dim, dropout, batch_norm
        As for :class:`~scdlkit.models.AutoEncoder`; ``dropout`` also applies
        inside the transformer layers and ``batch_norm`` to the decoder.
    hidden_dims
        Decoder layer sizes, given as for the autoencoder and traversed in
        reverse: the default ``(256, 128)`` decodes ``latent -> 128 -> 256 ->
        input_dim``.
    d_model
        Token embedding size; must be divisible by ``n_heads``.
    n_heads
        Attention heads per layer.
    n_layers
        Transformer encoder layers.
    genes_per_token
        Consecutive features per token.
    dim_feedforward
        Hidden size of each layer's feed-forward block (default ``2 * d_model``).

    Examples
    --------
    >>> import torch
    >>> model = TransformerAE(input_dim=100, genes_per_token=32, latent_dim=8)
    >>> model.n_tokens, model.padding
    (4, 28)
    >>> model.eval()(torch.randn(2, 100))["latent"].shape
    torch.Size([2, 8])
    """

    supported_tasks = ("representation", "reconstruction")
    description = "Transformer encoder over gene-group tokens, MLP decoder."

    def __init__(
        self,
        *,
        input_dim: int,
        latent_dim: int = 32,
        hidden_dims: Sequence[int] = (256, 128),
        dropout: float = 0.1,
        batch_norm: bool = True,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        genes_per_token: int = 64,
        dim_feedforward: int | None = None,
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.hidden_dims = check_hidden_dims(hidden_dims)
        self.dropout = check_dropout(dropout)
        self.batch_norm = check_bool("batch_norm", batch_norm)
        self.d_model = check_int("d_model", d_model)
        self.n_heads = check_int("n_heads", n_heads)
        self.n_layers = check_int("n_layers", n_layers)
        self.genes_per_token = check_int("genes_per_token", genes_per_token)
        if self.d_model % self.n_heads:
            msg = (
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                f"for example d_model={self.n_heads * math.ceil(self.d_model / self.n_heads)}."
            )
            raise ValueError(msg)
        ff = 2 * self.d_model if dim_feedforward is None else dim_feedforward
        self.dim_feedforward = check_int("dim_feedforward", ff)

        self.n_tokens = math.ceil(self.input_dim / self.genes_per_token)
        self.padding = self.n_tokens * self.genes_per_token - self.input_dim
        self.token_embedding = nn.Linear(self.genes_per_token, self.d_model)
        self.position_embedding = nn.Parameter(torch.zeros(1, self.n_tokens, self.d_model))
        nn.init.normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            self.d_model,
            self.n_heads,
            dim_feedforward=self.dim_feedforward,
            dropout=self.dropout,
            batch_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, self.n_layers, enable_nested_tensor=False)
        self.to_latent = nn.Linear(self.d_model, self.latent_dim)
        self.decoder = mlp_head(
            self.latent_dim,
            self.hidden_dims[::-1],
            self.input_dim,
            dropout=self.dropout,
            batch_norm=self.batch_norm,
        )

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Cut ``x`` ``(n, input_dim)`` into zero-padded tokens ``(n, n_tokens, genes_per_token)``.

        Examples
        --------
        >>> import torch
        >>> model = TransformerAE(input_dim=5, genes_per_token=2)
        >>> model.tokenize(torch.arange(1.0, 6.0)[None])
        tensor([[[1., 2.],
                 [3., 4.],
                 [5., 0.]]])
        """
        if self.padding:
            x = F.pad(x, (0, self.padding))
        return x.reshape(x.shape[0], self.n_tokens, self.genes_per_token)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent representation ``(n, latent_dim)`` of ``x``."""
        tokens = self.token_embedding(self.tokenize(x)) + self.position_embedding
        return self.to_latent(self.transformer(tokens).mean(dim=1))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(n, input_dim)`` from latent codes."""
        return self.decoder(latent)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode and decode ``x``.

        Returns
        -------
        ``{"latent": (n, latent_dim), "reconstruction": (n, input_dim)}``.
        """
        self.check_input(x)
        latent = self.encode(x)
        return {"latent": latent, "reconstruction": self.decode(latent)}
