"""The ``reconstruction`` task: reproduce the input, squared error summed over features."""

from __future__ import annotations

import torch
from torch import nn

from .base import Batch, Outputs, Stats, Task, unwrap_model


def reconstruction_loss(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed over features, averaged over cells (computed in float32).

    Summing over features keeps the term on the scale of a KL divergence
    summed over latent dimensions.

    Parameters
    ----------
    reconstruction
        Model reconstruction ``(n, n_features)``.
    x
        Input ``(n, n_features)``.

    Returns
    -------
    Scalar tensor.

    Raises
    ------
    ValueError
        The shapes differ.

    Examples
    --------
    >>> import torch
    >>> reconstruction_loss(torch.ones(2, 3), torch.zeros(2, 3))
    tensor(3.)
    """
    if reconstruction.shape != x.shape:
        msg = (
            f"The reconstruction has shape {tuple(reconstruction.shape)}, but the input x has shape "
            f"{tuple(x.shape)}; they must match. Build the model with input_dim={x.shape[-1]}."
        )
        raise ValueError(msg)
    error = reconstruction.float() - x.float()
    return error.pow(2).sum(dim=1).mean()


class ReconstructionTask(Task):
    """Learn to reproduce the input.

    Loss: mean over cells of the per-cell sum of squared errors, reported as
    ``reconstruction``, plus the model's ``extra_losses`` (e.g. a VAE's ``kl``).
    A model that defines ``reconstruction_loss(outputs, batch)`` (count models:
    a negative log-likelihood of the counts) replaces the squared error.
    Predicts ``reconstruction`` (and ``latent`` when the model returns one).

    Examples
    --------
    >>> import torch
    >>> from scdlkit.models import create_model
    >>> model = create_model("autoencoder", input_dim=6, hidden_dims=(4,), latent_dim=2)
    >>> loss, stats, _ = ReconstructionTask().compute_loss(model, {"x": torch.randn(3, 6)})
    >>> torch.equal(loss.detach(), stats["reconstruction"])
    True
    """

    name = "reconstruction"
    output_keys = ("reconstruction", "latent")
    required_batch_keys = ("x",)
    required_output_keys = ("reconstruction",)
    description = "Reproduce the input (squared error); predicts reconstruction (+ latent)."

    def model_loss(
        self, model: nn.Module, outputs: Outputs, batch: Batch
    ) -> tuple[torch.Tensor, Stats]:
        """Use the model's own ``reconstruction_loss`` when it has one, else the squared error."""
        own = getattr(unwrap_model(model), "reconstruction_loss", None)
        if own is None:
            return self.loss(outputs, batch)
        loss = own(outputs, batch)
        return loss, {"reconstruction": loss.detach()}

    def loss(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, Stats]:
        """Squared error summed over features, averaged over cells."""
        loss = reconstruction_loss(outputs["reconstruction"], batch["x"])
        return loss, {"reconstruction": loss.detach()}
