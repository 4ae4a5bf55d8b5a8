"""A deterministic multilayer-perceptron autoencoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import ScdlModel
from .layers import check_bool, check_dropout, check_hidden_dims, check_int, mlp_head
from .registry import register_model


@register_model("autoencoder")
class AutoEncoder(ScdlModel):
    """MLP autoencoder: ``input_dim -> hidden_dims -> latent_dim -> reversed(hidden_dims) -> input_dim``.

    The encoder and decoder are stacks of ``Linear -> BatchNorm1d -> ReLU ->
    Dropout`` blocks; the latent layer and the output layer are linear (so the
    model can reconstruct scaled data with negative values).

    Parameters
    ----------
    input_dim
        Number of input features.
    latent_dim
        Size of the latent representation.
    hidden_dims
        Encoder layer sizes; the decoder mirrors them.
    dropout
        Dropout probability in ``[0, 1)`` after every hidden activation.
    batch_norm
        Add batch normalisation to every hidden layer (needs batches of at
        least 2 cells in training mode).

    Examples
    --------
    >>> import torch
    >>> model = AutoEncoder(input_dim=50, latent_dim=8, hidden_dims=(32,))
    >>> out = model.eval()(torch.randn(4, 50))
    >>> out["latent"].shape, out["reconstruction"].shape
    (torch.Size([4, 8]), torch.Size([4, 50]))
    """

    supported_tasks = ("representation", "reconstruction")
    description = "MLP autoencoder with a linear latent layer."

    def __init__(
        self,
        *,
        input_dim: int,
        latent_dim: int = 32,
        hidden_dims: Sequence[int] = (256, 128),
        dropout: float = 0.1,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.hidden_dims = check_hidden_dims(hidden_dims)
        self.dropout = check_dropout(dropout)
        self.batch_norm = check_bool("batch_norm", batch_norm)
        options = {"dropout": self.dropout, "batch_norm": self.batch_norm}
        self.encoder = mlp_head(self.input_dim, self.hidden_dims, self.latent_dim, **options)
        self.decoder = mlp_head(self.latent_dim, self.hidden_dims[::-1], self.input_dim, **options)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent representation ``(n, latent_dim)`` of ``x``."""
        return self.encoder(x)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(n, input_dim)`` from a latent representation."""
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
