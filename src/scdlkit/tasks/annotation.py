"""The ``annotation`` task: semi-supervised cell labels on a count model (the scANVI loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Batch, Outputs, Stats, Task, unwrap_model


def labelled_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor | None, class_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over the labelled cells (``y >= 0`` of an observed class); 0 without any.

    Unlabelled cells (code ``-1``) and cells of classes outside ``class_mask``
    add nothing, whatever their logits; no device synchronisation.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [9.0, -9.0]])
    >>> with_unlabelled = labelled_cross_entropy(logits, torch.tensor([0, 1, -1]))
    >>> torch.allclose(with_unlabelled, labelled_cross_entropy(logits[:2], torch.tensor([0, 1])))
    True
    >>> labelled_cross_entropy(logits, torch.tensor([-1, -1, -1]))
    tensor(0.)
    """
    if y is None:
        return logits.new_zeros(()).float()
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1:
        msg = (
            f"Labels y must be a 1-D integer tensor of class codes (-1: unlabelled), got dtype "
            f"{y.dtype} and shape {tuple(y.shape)}. Encode labels with prepare_data(label_key=...)."
        )
        raise ValueError(msg)
    labelled = y >= 0
    codes = y.clamp(min=0).long()
    if class_mask is not None:
        labelled = labelled & class_mask[codes]
    per_cell = F.cross_entropy(logits.float(), codes, reduction="none")
    total = torch.where(labelled, per_cell, torch.zeros_like(per_cell)).sum()
    return total / labelled.sum().clamp(min=1).float()


class AnnotationTask(Task):
    """Semi-supervised annotation: the count model's ELBO on every cell plus a classifier on labelled ones.

    Loss: the model's ``reconstruction_loss`` (negative log-likelihood of the
    counts) plus ``classification_ratio ×`` :func:`labelled_cross_entropy`
    (reported as ``classification``), plus the model's ``extra_losses`` (the
    KL term). Unlabelled cells (label code ``-1``, from
    ``prepare_data(..., unlabeled_category=...)``) shape the latent space but
    not the classification loss; batches without ``y`` count as unlabelled
    (as query cells in reference mapping). Predicts ``logits`` and ``latent``.

    Examples
    --------
    >>> import torch
    >>> from scdlkit.models import create_model
    >>> model = create_model("count_scanvi", input_dim=12, num_classes=2, n_hidden=8)
    >>> batch = {"x": torch.poisson(torch.full((4, 12), 3.0)), "y": torch.tensor([0, 1, -1, -1])}
    >>> loss, stats, _ = AnnotationTask().compute_loss(model, batch)
    >>> sorted(stats)
    ['classification', 'kl', 'reconstruction']
    """

    name = "annotation"
    output_keys = ("logits", "latent")
    required_batch_keys = ("x",)
    required_output_keys = ("logits", "latent")
    description = (
        "Semi-supervised labels on a count model (ELBO + classifier); predicts logits + latent."
    )

    def model_loss(
        self, model: nn.Module, outputs: Outputs, batch: Batch
    ) -> tuple[torch.Tensor, Stats]:
        """ELBO reconstruction term of every cell + ``classification_ratio`` × labelled cross-entropy."""
        module = unwrap_model(model)
        reconstruction = module.reconstruction_loss(outputs, batch)
        classification = labelled_cross_entropy(
            outputs["logits"], batch.get("y"), getattr(module, "class_mask", None)
        )
        loss = reconstruction + float(module.classification_ratio) * classification
        return loss, {
            "reconstruction": reconstruction.detach(),
            "classification": classification.detach(),
        }
