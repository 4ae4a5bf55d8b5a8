"""Classifier heads on the scGPT ``<cls>`` embedding, and the annotation model around them."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import ScdlModel
from .model import ScGPTBackbone


class ClassifierHead(nn.Module):
    """``Linear(Dropout(LayerNorm(cls)))``: the trained head of every strategy except the probe.

    Examples
    --------
    >>> head = ClassifierHead(8, 3, dropout=0.1)
    >>> head(torch.randn(4, 8)).shape
    torch.Size([4, 3])
    """

    def __init__(self, dim: int, num_classes: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        """Return class logits of the raw ``<cls>`` embedding."""
        return self.linear(self.dropout(self.norm(cls)))


class ProbeHead(nn.Module):
    """A linear classifier on the L2-normalised embedding (the ``frozen_probe`` strategy).

    Its weights come from a scikit-learn logistic regression (:meth:`from_sklearn`).

    Examples
    --------
    >>> head = ProbeHead(8, 3)
    >>> head(torch.randn(4, 8)).shape
    torch.Size([4, 3])
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        """Return class logits of the L2-normalised ``<cls>`` embedding."""
        return self.linear(F.normalize(cls, dim=1))

    @torch.no_grad()
    def set_from_sklearn(
        self,
        estimator: Any,
        num_classes: int,
        *,
        mean: np.ndarray | None = None,
        scale: np.ndarray | None = None,
    ) -> None:
        """Copy a fitted ``LogisticRegression`` (fit on ``(x - mean) / scale``) into the linear layer.

        The standardisation is folded into the weights; classes the regression
        never saw get a very negative bias.
        """
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        intercept = np.asarray(estimator.intercept_, dtype=np.float64)
        if scale is not None:
            coef = coef / scale[None, :]
        if mean is not None:
            intercept = intercept - coef @ mean
        classes = np.asarray(estimator.classes_, dtype=np.int64)
        weight = np.zeros((num_classes, coef.shape[1]), dtype=np.float32)
        bias = np.full(num_classes, -30.0, dtype=np.float32)
        if classes.shape[0] == 2 and coef.shape[0] == 1:
            # binary: softmax([0, z]) equals sigmoid(z) for the positive class
            weight[classes[1]] = coef[0]
            bias[classes[0]], bias[classes[1]] = 0.0, intercept[0]
        else:
            weight[classes] = coef
            bias[classes] = intercept
        self.linear.weight.copy_(torch.from_numpy(weight))
        self.linear.bias.copy_(torch.from_numpy(bias))


class AnnotationModel(ScdlModel):
    """scGPT encoder + classifier head, trained and used with the ``classification`` task.

    ``forward(x)`` takes packed tokens (see :func:`~scdlkit.foundation.model.pack_tokens`)
    and returns ``logits`` (from the raw ``<cls>`` embedding) and ``latent``
    (the L2-normalised ``<cls>`` embedding).

    Parameters
    ----------
    backbone
        The scGPT encoder (possibly carrying PEFT parameters).
    head
        :class:`ClassifierHead` or :class:`ProbeHead`.
    frozen_backbone
        Keep the encoder in evaluation mode (no dropout) even while training;
        used when only the head is trained.
    """

    supported_tasks: ClassVar[tuple[str, ...]] = ("classification",)
    supports_training: ClassVar[bool] = True
    description: ClassVar[str] = "scGPT encoder with a cell-type classifier head."

    def __init__(
        self, backbone: ScGPTBackbone, head: nn.Module, *, frozen_backbone: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen_backbone = frozen_backbone

    @property
    def config(self) -> dict[str, Any]:
        """No registry entry: rebuild through :meth:`AnnotationRunner.load`."""
        return {"name": None, "kwargs": {"frozen_backbone": self.frozen_backbone}}

    def train(self, mode: bool = True) -> AnnotationModel:
        """Set training mode; a frozen backbone stays in evaluation mode."""
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``logits`` and the unit-norm ``<cls>`` embedding ``latent`` of packed tokens."""
        cls = self.backbone.embed_packed(x)
        return {"logits": self.head(cls), "latent": F.normalize(cls, dim=1)}


class HeadOnlyModel(ScdlModel):
    """A head trained on cached ``<cls>`` embeddings (``x``), for the ``head`` strategy."""

    supported_tasks: ClassVar[tuple[str, ...]] = ("classification",)
    description: ClassVar[str] = "Classifier head on precomputed embeddings."

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    @property
    def config(self) -> dict[str, Any]:
        """No registry entry."""
        return {"name": None, "kwargs": {}}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``logits`` of precomputed embeddings ``x``."""
        return {"logits": self.head(x)}
