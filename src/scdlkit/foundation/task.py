"""The inference-only ``embedding`` task used with frozen foundation models."""

from __future__ import annotations

import torch

from ..tasks import Task
from ..tasks.base import Batch, Outputs, Stats


class EmbeddingTask(Task):
    """Predict a cell embedding (``latent``) with a frozen model; there is no training loss.

    Used by :func:`scdlkit.tl.embed_scgpt`:
    ``Trainer(model, EmbeddingTask()).predict_dataset(loader)["latent"]``. It is
    not in the task registry (``list_tasks``); pass an instance.

    Examples
    --------
    >>> EmbeddingTask().output_keys
    ('latent', 'cell_embedding')
    """

    name = "embedding"
    output_keys = ("latent", "cell_embedding")
    required_batch_keys = ("x",)
    required_output_keys = ("latent",)
    description = "Cell embeddings of a frozen (foundation) model; inference only."

    def loss(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, Stats]:
        """Not defined: embedding models are inference-only."""
        msg = (
            "The 'embedding' task has no training loss; frozen embedding models are inference-only. "
            "Fine-tune scGPT with scdlkit.foundation.adapt_annotation(...)."
        )
        raise NotImplementedError(msg)
