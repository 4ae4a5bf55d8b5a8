"""The ``classification`` task: predict a cell label, cross-entropy loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Outputs, Stats, Task


class ClassificationTask(Task):
    """Predict the label ``y`` of every cell.

    Loss: cross-entropy between ``logits`` ``(n, num_classes)`` and the
    integer labels ``y`` (reported as ``cross_entropy``), plus the model's
    ``extra_losses``. Batches need ``y``: pass ``label_key=`` to
    :func:`~scdlkit.prepare_data`. Predicts ``logits`` (and ``latent`` when the
    model returns one).

    Examples
    --------
    >>> import torch
    >>> from scdlkit.models import create_model
    >>> model = create_model("mlp_classifier", input_dim=6, num_classes=3, hidden_dims=(4,))
    >>> batch = {"x": torch.randn(5, 6), "y": torch.tensor([0, 1, 2, 1, 0])}
    >>> loss, stats, _ = ClassificationTask().compute_loss(model, batch)
    >>> sorted(stats)
    ['cross_entropy']
    """

    name = "classification"
    output_keys = ("logits", "latent")
    required_batch_keys = ("x", "y")
    required_output_keys = ("logits",)
    description = "Cell labels (cross-entropy); predicts logits (+ latent)."

    def loss(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, Stats]:
        """Cross-entropy of ``logits`` against ``y``."""
        logits, y = outputs["logits"], batch["y"]
        if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
            msg = (
                f"The classification task needs logits of shape (n_cells, num_classes) = "
                f"({y.shape[0]}, num_classes), got {tuple(logits.shape)}."
            )
            raise ValueError(msg)
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1:
            msg = (
                f"Labels y must be a 1-D integer tensor of class codes, got dtype {y.dtype} and "
                f"shape {tuple(y.shape)}. Encode labels with prepare_data(label_key=...)."
            )
            raise ValueError(msg)
        loss = F.cross_entropy(logits.float(), y.long())
        return loss, {"cross_entropy": loss.detach()}
