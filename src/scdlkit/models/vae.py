"""Variational autoencoder with a Gaussian latent and a KL warm-up."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import ScdlModel
from .layers import (
    build_mlp,
    check_bool,
    check_dropout,
    check_float,
    check_hidden_dims,
    check_int,
    mlp_head,
)
from .registry import register_model

#: ``logvar`` is clamped to this range before ``exp`` so variances stay finite.
LOGVAR_RANGE = (-10.0, 10.0)


@register_model("vae")
class VAE(ScdlModel):
    """Variational autoencoder with a Gaussian latent and a squared-error decoder.

    The encoder maps ``x`` to the mean ``mu`` and log-variance ``logvar`` of
    ``q(z | x)``; ``logvar`` is clamped to ``[-10, 10]`` for numerical
    stability. In training mode ``latent`` is a reparameterised sample
    ``mu + exp(logvar / 2) * eps``; in evaluation mode it is ``mu``, so
    embeddings are deterministic.

    :meth:`extra_losses` adds ``current_kl_weight * KL(q(z|x) || N(0, I))``
    (summed over latent dimensions, averaged over cells) to the task loss.
    :meth:`on_epoch_start` sets ``current_kl_weight``: it ramps linearly from
    0 at epoch 0 to ``kl_weight`` at epoch ``kl_warmup_epochs`` (full weight
    from the start with ``kl_warmup_epochs=0``). A new model starts in the
    epoch-0 state; the :class:`~scdlkit.Trainer` calls the hook every epoch.
    The warm-up only applies in training mode: in evaluation mode the KL term
    always carries the full ``kl_weight``, so validation losses of different
    epochs are comparable and early stopping is not biased towards the start.

    Parameters
    ----------
    input_dim, latent_dim, hidden_dims, batch_norm
        As for :class:`~scdlkit.models.AutoEncoder`.
    dropout
        Dropout probability after every hidden activation of the encoder and
        decoder. The default 0.0 (previously 0.1) relies on the sampling noise
        of the latent as the regulariser; it gave a latent space with a better
        kNN label accuracy on every dataset of ``benchmarks/quality.py`` and
        stops training sooner.
    kl_weight
        Final weight of the KL term (``>= 0``).
    kl_warmup_epochs
        Epochs over which the KL weight rises from 0 to ``kl_weight``.

    Examples
    --------
    >>> import torch
    >>> model = VAE(input_dim=30, latent_dim=4, hidden_dims=(16,), kl_warmup_epochs=4)
    >>> model.on_epoch_start(2)
    >>> model.current_kl_weight
    0.05
    >>> out = model.eval()(torch.randn(5, 30))
    >>> torch.equal(out["latent"], out["mu"])
    True
    """

    supported_tasks = ("representation", "reconstruction")
    description = "Variational autoencoder (Gaussian latent, KL warm-up)."

    def __init__(
        self,
        *,
        input_dim: int,
        latent_dim: int = 32,
        hidden_dims: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        batch_norm: bool = True,
        kl_weight: float = 0.1,
        kl_warmup_epochs: int = 10,
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.hidden_dims = check_hidden_dims(hidden_dims)
        self.dropout = check_dropout(dropout)
        self.batch_norm = check_bool("batch_norm", batch_norm)
        self.kl_weight = check_float("kl_weight", kl_weight, low=0.0)
        self.kl_warmup_epochs = check_int("kl_warmup_epochs", kl_warmup_epochs, minimum=0)
        options = {"dropout": self.dropout, "batch_norm": self.batch_norm}
        self.encoder = build_mlp(self.input_dim, self.hidden_dims, **options)
        self.mu = nn.Linear(self.hidden_dims[-1], self.latent_dim)
        self.logvar = nn.Linear(self.hidden_dims[-1], self.latent_dim)
        self.decoder = mlp_head(self.latent_dim, self.hidden_dims[::-1], self.input_dim, **options)
        self.current_kl_weight = 0.0
        self.on_epoch_start(0)

    def kl_weight_at(self, epoch: int) -> float:
        """KL weight used during ``epoch`` (0-based).

        Examples
        --------
        >>> model = VAE(input_dim=10, kl_weight=1.0, kl_warmup_epochs=4)
        >>> [model.kl_weight_at(e) for e in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
        """
        if self.kl_warmup_epochs == 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, max(0, int(epoch)) / self.kl_warmup_epochs)

    def on_epoch_start(self, epoch: int) -> None:
        """Set :attr:`current_kl_weight` for ``epoch`` (the KL warm-up schedule)."""
        self.current_kl_weight = self.kl_weight_at(epoch)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of ``q(z | x)``, each ``(n, latent_dim)``; ``logvar`` clamped."""
        hidden = self.encoder(x)
        return self.mu(hidden), self.logvar(hidden).clamp(*LOGVAR_RANGE)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(n, input_dim)`` from latent codes."""
        return self.decoder(latent)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode, sample (training mode) or take the mean (evaluation mode), decode.

        Returns
        -------
        ``{"latent", "reconstruction", "mu", "logvar"}``.
        """
        self.check_input(x)
        mu, logvar = self.encode(x)
        if self.training:
            latent = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        else:
            latent = mu
        return {"latent": latent, "reconstruction": self.decode(latent), "mu": mu, "logvar": logvar}

    @staticmethod
    def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over latent dimensions, averaged over cells.

        Examples
        --------
        >>> import torch
        >>> VAE.kl_divergence(torch.zeros(3, 2), torch.zeros(3, 2))
        tensor(0.)
        """
        per_cell = -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        return per_cell.mean()

    def extra_losses(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"kl": weight * KL}`` (warm-up weight in training, full weight in evaluation)."""
        kl = self.kl_divergence(outputs["mu"].float(), outputs["logvar"].float())
        return {"kl": kl * (self.current_kl_weight if self.training else self.kl_weight)}
