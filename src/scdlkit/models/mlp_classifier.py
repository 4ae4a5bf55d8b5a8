"""Multilayer-perceptron cell-type classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from .base import ScdlModel
from .layers import build_mlp, check_bool, check_dropout, check_hidden_dims, check_int
from .registry import register_model


@register_model("mlp_classifier")
class MLPClassifier(ScdlModel):
    """MLP classifier: ``input_dim -> hidden_dims -> latent_dim -> num_classes`` logits.

    Every hidden layer, including the ``latent_dim`` one, is ``Linear ->
    BatchNorm1d -> ReLU -> Dropout``; the logits layer is linear. ``latent``
    is the output of the last hidden layer, usable as an embedding (dropout
    is inactive in evaluation mode, so it is deterministic there).

    Parameters
    ----------
    input_dim, hidden_dims, batch_norm
        As for :class:`~scdlkit.models.AutoEncoder`.
    dropout
        Dropout probability after every hidden activation. The default 0.3
        (previously 0.1) curbs over-fitting on a few thousand labelled cells
        (see ``benchmarks/quality.py``).
    num_classes
        Number of classes (required), e.g. ``prepared.label_encoder.n_categories``.
    latent_dim
        Size of the last hidden layer.

    Examples
    --------
    >>> import torch
    >>> model = MLPClassifier(input_dim=40, num_classes=3, hidden_dims=(16,), latent_dim=8)
    >>> out = model.eval()(torch.randn(5, 40))
    >>> out["logits"].shape, out["latent"].shape
    (torch.Size([5, 3]), torch.Size([5, 8]))
    """

    supported_tasks = ("classification",)
    description = "MLP classifier with a latent last hidden layer."
    argument_hints: ClassVar[dict[str, str]] = {
        "num_classes": "the number of labels, e.g. prepared.label_encoder.n_categories"
    }

    def __init__(
        self,
        *,
        input_dim: int,
        num_classes: int,
        latent_dim: int = 32,
        hidden_dims: Sequence[int] = (256, 128),
        dropout: float = 0.3,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.hidden_dims = check_hidden_dims(hidden_dims)
        self.dropout = check_dropout(dropout)
        self.batch_norm = check_bool("batch_norm", batch_norm)
        self.encoder = build_mlp(
            self.input_dim,
            (*self.hidden_dims, self.latent_dim),
            dropout=self.dropout,
            batch_norm=self.batch_norm,
        )
        self.head = nn.Linear(self.latent_dim, self.num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class logits and the last hidden layer.

        Returns
        -------
        ``{"logits": (n, num_classes), "latent": (n, latent_dim)}``.
        """
        self.check_input(x)
        latent = self.encoder(x)
        return {"logits": self.head(latent), "latent": latent}
