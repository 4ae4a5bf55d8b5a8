"""Denoising autoencoder: an autoencoder trained to undo input corruption."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .autoencoder import AutoEncoder
from .layers import check_float
from .registry import register_model

NOISE_KINDS = ("gaussian", "dropout")


@register_model("denoising_autoencoder")
class DenoisingAutoEncoder(AutoEncoder):
    """Autoencoder that corrupts its input during training and learns to reconstruct the clean input.

    The architecture is that of :class:`~scdlkit.models.AutoEncoder`. In
    training mode (``model.train()``) the input is corrupted before encoding:

    - ``noise="gaussian"``: ``x + noise_level * N(0, 1)``;
    - ``noise="dropout"``: every value is set to zero with probability
      ``noise_level`` (masking noise, like dropout events; not rescaled).

    The reconstruction target stays the clean ``x``. In evaluation mode
    (``model.eval()``) no noise is applied, so predictions are deterministic.

    Parameters
    ----------
    input_dim, latent_dim, hidden_dims, dropout, batch_norm
        As for :class:`~scdlkit.models.AutoEncoder`.
    noise
        ``"gaussian"`` or ``"dropout"``.
    noise_level
        Standard deviation of the Gaussian noise (``>= 0``), or the masking
        probability for ``"dropout"`` (in ``[0, 1)``).

    Examples
    --------
    >>> import torch
    >>> model = DenoisingAutoEncoder(input_dim=20, noise="dropout", noise_level=0.2)
    >>> model.eval()(torch.randn(3, 20))["reconstruction"].shape
    torch.Size([3, 20])
    """

    description = "Autoencoder trained on Gaussian- or dropout-corrupted input."

    def __init__(
        self,
        *,
        input_dim: int,
        latent_dim: int = 32,
        hidden_dims: Sequence[int] = (256, 128),
        dropout: float = 0.1,
        batch_norm: bool = True,
        noise: str = "gaussian",
        noise_level: float = 0.1,
    ) -> None:
        super().__init__(
            input_dim=input_dim,
            latent_dim=latent_dim,
            hidden_dims=hidden_dims,
            dropout=dropout,
            batch_norm=batch_norm,
        )
        if noise not in NOISE_KINDS:
            msg = f"noise must be one of {', '.join(map(repr, NOISE_KINDS))}, got {noise!r}."
            raise ValueError(msg)
        self.noise = noise
        high = 1.0 if noise == "dropout" else None
        self.noise_level = check_float("noise_level", noise_level, low=0.0, high=high)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Return a corrupted copy of ``x`` (always, regardless of the training mode).

        Examples
        --------
        >>> import torch
        >>> model = DenoisingAutoEncoder(input_dim=4, noise="dropout", noise_level=0.5)
        >>> corrupted = model.corrupt(torch.ones(10_000, 4))
        >>> round((corrupted == 0).float().mean().item(), 1)
        0.5
        """
        if self.noise_level == 0:
            return x
        if self.noise == "gaussian":
            return x + self.noise_level * torch.randn_like(x)
        keep = torch.rand_like(x) >= self.noise_level
        return x * keep

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode (a corrupted copy of, in training mode) ``x`` and decode it.

        Returns
        -------
        ``{"latent": (n, latent_dim), "reconstruction": (n, input_dim)}``.
        """
        self.check_input(x)
        latent = self.encode(self.corrupt(x) if self.training else x)
        return {"latent": latent, "reconstruction": self.decode(latent)}
