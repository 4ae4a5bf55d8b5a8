"""The ``representation`` task: learn a latent space by reconstructing the input."""

from __future__ import annotations

from .reconstruction import ReconstructionTask


class RepresentationTask(ReconstructionTask):
    """Learn a low-dimensional representation (latent space) of the cells.

    Trained like :class:`~scdlkit.tasks.ReconstructionTask` (squared error
    summed over features plus the model's ``extra_losses``), but the model must
    return a ``latent``, and ``latent`` is the main prediction (it lands in
    ``.obsm["X_scdlkit"]``). At inference only ``latent`` is needed, so
    inference-only encoders can predict without a reconstruction.

    Examples
    --------
    >>> import torch
    >>> from scdlkit.models import create_model
    >>> model = create_model("autoencoder", input_dim=6, hidden_dims=(4,), latent_dim=2).eval()
    >>> RepresentationTask().predict(model, {"x": torch.randn(3, 6)})["latent"].shape
    torch.Size([3, 2])
    """

    name = "representation"
    output_keys = ("latent", "reconstruction")
    required_output_keys = ("latent", "reconstruction")
    predict_output_keys = ("latent",)
    description = "Latent space learned by reconstruction; predicts latent (+ reconstruction)."
