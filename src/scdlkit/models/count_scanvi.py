"""Count VAE with a cell-type classifier on its latent space: the scANVI class (Xu et al. 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .count_layers import CovariateLayers
from .count_vae import CountVAE
from .layers import check_dropout, check_float, check_int
from .registry import register_model


@register_model("count_scanvi")
class CountSCANVI(CountVAE):
    """Semi-supervised count VAE: :class:`CountVAE` plus a classifier of the latent mean.

    The scANVI class of model (Xu et al. 2021, *Mol Syst Biol* 17:e9620), as
    scvi-tools' ``SCANVI`` trains it: the scVI network (see
    :class:`CountVAE`, every option applies) and a classifier
    ``q(y | z)`` on the posterior mean of ``z`` (hidden layers
    ``Linear -> norm -> ReLU -> Dropout``, then logits). All cells shape the
    latent through the ELBO; labelled cells add ``classification_ratio ×
    cross-entropy`` (task ``"annotation"``, which leaves unlabelled cells,
    label code ``-1``, out of that term). Unlike scANVI, ``z`` has the plain
    ``N(0, I)`` prior rather than the label-conditioned mixture ``p(z | y, z2)``:
    the classifier, the semi-supervised loss and the reference mapping are the
    same, the generative model is scVI's.

    Two buffers shape the logits (and are saved with the weights):
    ``temperature`` (set by calibration after training, see
    :func:`scdlkit.evaluation.fit_temperature`; logits are divided by it) and
    the class mask from ``observed_classes`` (classes without a labelled
    training cell get the lowest float logit, so they are never predicted).

    Parameters
    ----------
    num_classes
        Number of cell types (the labelled categories of ``label_key``).
    classification_ratio
        Weight of the classification loss (scvi-tools' default 50).
    n_classifier_hidden, n_classifier_layers, classifier_dropout
        The classifier's hidden width, depth and dropout (scANVI's 128, 1, 0.1).
    observed_classes
        Codes of the classes that have labelled training cells (``None``: all).
    **kwargs
        :class:`CountVAE` options (``n_batch``, ``n_latent``, ``encode_covariates``, ...).

    Examples
    --------
    >>> import torch
    >>> model = CountSCANVI(input_dim=30, num_classes=3, n_batch=2, observed_classes=[0, 2]).eval()
    >>> x = torch.poisson(torch.full((4, 30), 2.0))
    >>> out = model(x, batch=torch.tensor([0, 1, 0, 1]))
    >>> out["logits"].shape, bool((out["logits"].argmax(1) != 1).all())
    (torch.Size([4, 3]), True)
    """

    supported_tasks = ("annotation",)
    description = "Count VAE + classifier on the latent (scANVI class; semi-supervised labels)."
    argument_hints: ClassVar[dict[str, str]] = {
        "num_classes": "the number of labelled cell types, e.g. prepared.label_encoder.n_categories"
    }

    def __init__(
        self,
        *,
        input_dim: int,
        num_classes: int,
        classification_ratio: float = 50.0,
        n_classifier_hidden: int = 128,
        n_classifier_layers: int = 1,
        classifier_dropout: float = 0.1,
        observed_classes: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_dim=input_dim, **kwargs)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        self.classification_ratio = check_float(
            "classification_ratio", classification_ratio, low=0.0
        )
        self.n_classifier_hidden = check_int("n_classifier_hidden", n_classifier_hidden)
        self.n_classifier_layers = check_int("n_classifier_layers", n_classifier_layers, minimum=0)
        self.classifier_dropout = check_dropout(classifier_dropout)
        mask = torch.ones(self.num_classes, dtype=torch.bool)
        if observed_classes is not None:
            codes = [int(code) for code in observed_classes]
            if not codes or not all(0 <= code < self.num_classes for code in codes):
                msg = (
                    f"observed_classes must be a non-empty list of class codes in "
                    f"0..{self.num_classes - 1}, got {list(observed_classes)!r}."
                )
                raise ValueError(msg)
            mask[:] = False
            mask[codes] = True
        self.register_buffer("class_mask", mask)
        self.register_buffer("temperature", torch.ones(()))
        width = self.n_latent
        if self.n_classifier_layers:
            self.classifier_layers = CovariateLayers(
                self.n_latent, self.n_classifier_hidden, self.n_classifier_layers, 0,
                inject_all=False, norm=self.norm, dropout=self.classifier_dropout,
            )  # fmt: skip
            width = self.n_classifier_hidden
        self.classifier_head = nn.Linear(width, self.num_classes)

    def classify(self, z: torch.Tensor, *, calibrated: bool = True) -> torch.Tensor:
        """Logits ``(n, num_classes)`` of latent points ``z``, divided by :attr:`temperature`.

        Classes outside ``observed_classes`` get the lowest finite logit.
        ``calibrated=False`` leaves out the temperature (used to fit it).
        """
        hidden = self.classifier_layers(z, []) if self.n_classifier_layers else z
        logits = self.classifier_head(hidden).float()
        if calibrated:
            logits = logits / self.temperature
        return logits.masked_fill(~self.class_mask, torch.finfo(logits.dtype).min)

    def forward(
        self,
        x: torch.Tensor,
        library: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`CountVAE.forward` plus ``logits`` of the posterior mean (calibrated)."""
        out = super().forward(x, library, batch, cat_covs, cont_covs)
        out["logits"] = self.classify(out["qz_mean"])
        return out
