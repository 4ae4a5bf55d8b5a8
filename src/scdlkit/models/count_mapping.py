"""Reference mapping of count models (scArches): added batches trained alone, the rest frozen."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .count_layers import one_hot_width


class ReferenceMapping(nn.Module):
    """Methods of :class:`~scdlkit.models.CountVAE` for mapping a query with new batches.

    A model built with ``n_batch_extra`` new batches takes the reference
    weights; :meth:`init_extra_batches` starts the new batches as the average
    reference batch and :meth:`freeze_reference` leaves only their parameters
    to train (Lotfollahi et al. 2022, *Nat Biotechnol* 40:121, "architecture surgery").
    """

    n_batch: int
    n_batch_extra: int
    n_cats_per_cov: tuple[int, ...]
    encode_covariates: bool
    frozen_norms: bool = False

    def init_extra_batches(self) -> None:
        """Start every added batch as the average reference batch (after loading the reference weights).

        Examples
        --------
        >>> from scdlkit.models import CountVAE
        >>> model = CountVAE(input_dim=8, n_batch=2, n_batch_extra=1, n_hidden=4)
        >>> model.init_extra_batches()
        >>> first = model.decoder.blocks[0][0].weight
        >>> bool(torch.allclose(model.decoder.extra_weights[0][:, 0], first[:, 10:12].mean(1)))
        True
        """
        n_after = sum(map(one_hot_width, self.n_cats_per_cov))
        layers = [self.decoder] + ([self.encoder] if self.encode_covariates else [])
        for layer in layers:
            layer.extra_init(one_hot_width(self.n_batch), n_after)
        if hasattr(self, "px_r_extra"):
            with torch.no_grad():
                self.px_r_extra.copy_(
                    self.px_r.mean(dim=1, keepdim=True).expand_as(self.px_r_extra)
                )

    def freeze_reference(self, unfreeze: Sequence[str] = ()) -> list[str]:
        """Freeze everything but the added batches' parameters (and the ``unfreeze`` prefixes).

        Frozen parameters get ``requires_grad=False``, so the optimizer never
        sees them (weight decay cannot move them), and normalisation layers stay
        in evaluation mode during training, so their running statistics do not
        change either: the model's outputs for reference cells stay identical.

        Parameters
        ----------
        unfreeze
            Name prefixes of further parameters to train (e.g. ``"decoder"``);
            the reference outputs then change.

        Returns
        -------
        Names of the trainable parameters.

        Raises
        ------
        ValueError
            The model has no added batches, or a prefix matches no parameter.

        Examples
        --------
        >>> from scdlkit.models import CountVAE
        >>> model = CountVAE(input_dim=8, n_batch=2, n_batch_extra=1, encode_covariates=True)
        >>> model.freeze_reference()
        ['encoder.extra_weights.0', 'decoder.extra_weights.0']
        """
        if not self.n_batch_extra:
            msg = "freeze_reference needs added batches (n_batch_extra >= 1): nothing would train."
            raise ValueError(msg)
        names = [name for name, _ in self.named_parameters()]
        unknown = [p for p in unfreeze if not any(n.startswith(p) for n in names)]
        if unknown:
            msg = f"unfreeze prefixes {list(unknown)} match no parameter; parameters: {names}."
            raise ValueError(msg)
        trainable = []
        for name, parameter in self.named_parameters():
            train = ".extra_weights." in name or name.endswith("_extra")
            train = train or any(name.startswith(prefix) for prefix in unfreeze)
            parameter.requires_grad_(train)
            if train:
                trainable.append(name)
        self.frozen_norms = True
        self.train(self.training)
        return trainable

    def train(self, mode: bool = True) -> ReferenceMapping:
        """Set training mode; after :meth:`freeze_reference` normalisation layers stay in evaluation mode."""
        super().train(mode)
        if self.frozen_norms:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self
