"""``Task``: the loss and output contract between a model and the Trainer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .._errors import format_names

Batch = Mapping[str, torch.Tensor]
Outputs = dict[str, torch.Tensor]
Stats = dict[str, torch.Tensor]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the user's model inside ``DistributedDataParallel``, ``DataParallel`` or ``torch.compile`` wrappers.

    Model attributes (``supported_tasks``, ``extra_losses``, ...) are read from
    the unwrapped model, while the forward pass goes through the wrapper.

    Examples
    --------
    >>> from torch import nn
    >>> layer = nn.Linear(2, 2)
    >>> unwrap_model(nn.DataParallel(layer)) is layer
    True
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def forward(model: nn.Module, batch: Batch) -> Any:
    """Call ``model`` on ``batch["x"]`` plus the batch keys the model asks for in ``forward_keys``.

    Models that need more than the input (count models: ``library``, ``batch``,
    ``cat_covs``, ``cont_covs``) list those keys in a ``forward_keys`` class
    attribute; they are passed as keyword arguments when the batch has them.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> class Scaled(nn.Module):
    ...     forward_keys = ("x", "library")
    ...
    ...     def forward(self, x, library=None):
    ...         return {"reconstruction": x * library}
    >>> forward(Scaled(), {"x": torch.ones(2, 1), "library": torch.full((2, 1), 3.0)})
    {'reconstruction': tensor([[3.],
            [3.]])}
    """
    keys = getattr(unwrap_model(model), "forward_keys", ("x",))
    extra = {key: batch[key] for key in keys if key != "x" and key in batch}
    return model(batch["x"], **extra)


class Task:
    """What a model is trained for: which batch keys it needs, its loss and what it predicts.

    A task is stateless and shared; subclasses set the class attributes and
    implement :meth:`loss`. The :class:`~scdlkit.Trainer` calls
    :meth:`check_model` once, :meth:`compute_loss` on every training and
    validation batch, and :meth:`predict` at inference.

    Attributes
    ----------
    name
        Task name, matched against a model's ``supported_tasks``.
    output_keys
        Keys :meth:`predict` returns (those the model provides).
    required_batch_keys
        Batch keys the loss needs (``"y"`` for classification).
    required_output_keys
        Model outputs the task needs to train.
    predict_output_keys
        Model outputs the task needs at inference (``None``: the same). A
        representation is trained by reconstruction but predicted by its latent
        alone, so inference-only models need only return ``latent``.
    description
        One line for :func:`~scdlkit.tasks.list_tasks`.

    Examples
    --------
    >>> import torch
    >>> from scdlkit.models import create_model
    >>> from scdlkit.tasks import get_task
    >>> task = get_task("representation")
    >>> model = create_model("autoencoder", input_dim=10, hidden_dims=(8,), latent_dim=2)
    >>> task.check_model(model)
    >>> loss, stats, outputs = task.compute_loss(model, {"x": torch.randn(4, 10)})
    >>> sorted(stats), loss.requires_grad
    (['reconstruction'], True)
    """

    name: ClassVar[str] = ""
    output_keys: ClassVar[tuple[str, ...]] = ()
    required_batch_keys: ClassVar[tuple[str, ...]] = ("x",)
    required_output_keys: ClassVar[tuple[str, ...]] = ()
    predict_output_keys: ClassVar[tuple[str, ...] | None] = None
    description: ClassVar[str] = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- checks ---------------------------------------------------------------------------

    def check_model(self, model: nn.Module) -> None:
        """Raise a ``ValueError`` unless ``model`` supports this task.

        Parameters
        ----------
        model
            The model (wrappers such as ``DistributedDataParallel`` are looked through).

        Raises
        ------
        ValueError
            ``self.name`` is not in the model's ``supported_tasks``; the message
            names the model class, its tasks and the fix.

        Examples
        --------
        >>> from scdlkit.models import create_model
        >>> from scdlkit.tasks import get_task
        >>> model = create_model("mlp_classifier", input_dim=10, num_classes=3)
        >>> get_task("classification").check_model(model)
        >>> get_task("classification").check_model(create_model("autoencoder", input_dim=10))
        Traceback (most recent call last):
        ...
        ValueError: AutoEncoder does not support the 'classification' task ...
        """
        model = unwrap_model(model)
        supported = tuple(getattr(model, "supported_tasks", ()) or ())
        if self.name in supported:
            return
        from ..models.registry import models_for_task

        cls = type(model).__name__
        candidates = format_names(models_for_task(self.name))
        if not hasattr(model, "supported_tasks"):
            wrapper = (
                "scdlkit.adapters.wrap_classification_module(module, num_classes=...)"
                if self.name == "classification"
                else "scdlkit.adapters.wrap_reconstruction_module(module)"
            )
            msg = (
                f"{cls} is a plain torch module without supported_tasks, so it cannot be used for "
                f"the {self.name!r} task. Wrap it with {wrapper}, or use a bundled model that "
                f"supports {self.name!r}: {candidates}."
            )
        else:
            msg = (
                f"{cls} does not support the {self.name!r} task (its supported_tasks: "
                f"{format_names(supported)}). Use task= one of those, or a model that supports "
                f"{self.name!r}: {candidates}."
            )
        raise ValueError(msg)

    def check_batch(self, batch: Batch) -> None:
        """Raise a ``ValueError`` when ``batch`` lacks a key this task needs.

        Examples
        --------
        >>> import torch
        >>> from scdlkit.tasks import get_task
        >>> get_task("classification").check_batch({"x": torch.zeros(2, 3), "y": torch.zeros(2)})
        >>> get_task("classification").check_batch({"x": torch.zeros(2, 3)})
        Traceback (most recent call last):
        ...
        ValueError: The 'classification' task needs 'y' in every batch, but the batch has only 'x'. ...
        """
        missing = [key for key in self.required_batch_keys if key not in batch]
        if not missing:
            return
        msg = (
            f"The {self.name!r} task needs {format_names(missing)} in every batch, but the batch "
            f"has only {format_names(batch)}."
        )
        if "y" in missing:
            msg += (
                " Labels come from prepare_data: pass label_key= (the .obs column with the "
                "cell labels), e.g. prepare_data(adata, label_key='cell_type')."
            )
        raise ValueError(msg)

    def check_outputs(
        self, outputs: Any, model: nn.Module, *, required: tuple[str, ...] | None = None
    ) -> Outputs:
        """Raise a ``ValueError`` unless the model returned a dict with this task's required outputs.

        Examples
        --------
        >>> import torch
        >>> from scdlkit.tasks import get_task
        >>> get_task("classification").check_outputs({"logits": torch.zeros(2, 3)}, None)
        {'logits': tensor([[0., 0., 0.],
                [0., 0., 0.]])}
        """
        cls = type(unwrap_model(model)).__name__ if model is not None else "The model"
        required = self.required_output_keys if required is None else required
        if not isinstance(outputs, Mapping):
            msg = (
                f"{cls}.forward returned a {type(outputs).__name__}, but scdlkit models must return a "
                f"dict of tensors (the {self.name!r} task needs {format_names(required)}). "
                "Wrap plain modules with scdlkit.adapters."
            )
            raise ValueError(msg)
        missing = [key for key in required if key not in outputs]
        if missing:
            msg = (
                f"The {self.name!r} task needs the model outputs {format_names(missing)}, but "
                f"{cls} returned only {format_names(outputs)}."
            )
            if self.name == "representation" and "reconstruction" in outputs:
                msg += (
                    " Return (latent, reconstruction) or a dict with 'latent' from the module, "
                    "or use task='reconstruction'."
                )
            raise ValueError(msg)
        return dict(outputs)

    # -- training and inference -----------------------------------------------------------

    def loss(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, Stats]:
        """Compute the task loss and its detached components, from model outputs and the batch."""
        msg = f"{type(self).__name__} must implement loss(outputs, batch)."
        raise NotImplementedError(msg)

    def model_loss(
        self, model: nn.Module, outputs: Outputs, batch: Batch
    ) -> tuple[torch.Tensor, Stats]:
        """Compute the task loss for ``model``; tasks whose loss a model may replace override this."""
        return self.loss(outputs, batch)

    def compute_loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Stats, Outputs]:
        """Run the model on ``batch["x"]`` and compute the training loss.

        ``model.extra_losses(outputs)`` (when the model defines it) is added to
        the task loss and reported in the statistics under its own keys.

        Parameters
        ----------
        model
            The model (may be wrapped in ``DistributedDataParallel``).
        batch
            A batch dictionary (``x`` and, for classification, ``y``).

        Returns
        -------
        loss
            Scalar tensor to back-propagate.
        stats
            Detached scalar tensors, one per loss component (no device sync).
        outputs
            The model's output dictionary.

        Raises
        ------
        ValueError
            A missing batch key (e.g. ``y`` without ``label_key``) or model output.

        Examples
        --------
        >>> import torch
        >>> from scdlkit.models import create_model
        >>> from scdlkit.tasks import get_task
        >>> model = create_model("vae", input_dim=10, kl_warmup_epochs=0)
        >>> loss, stats, _ = get_task("reconstruction").compute_loss(
        ...     model, {"x": torch.randn(4, 10)}
        ... )
        >>> sorted(stats)
        ['kl', 'reconstruction']
        """
        self.check_batch(batch)
        outputs = self.check_outputs(forward(model, batch), model)
        loss, stats = self.model_loss(model, outputs, batch)
        extra_losses = getattr(unwrap_model(model), "extra_losses", None)
        if extra_losses is not None:
            for key, value in extra_losses(outputs).items():
                loss = loss + value
                stats[key] = value.detach()
        return loss, stats, outputs

    def predict(self, model: nn.Module, batch: Batch) -> Outputs:
        """Run the model on ``batch["x"]`` and keep this task's :attr:`output_keys`.

        The caller sets evaluation mode and ``torch.inference_mode()``.

        Examples
        --------
        >>> import torch
        >>> from scdlkit.models import create_model
        >>> from scdlkit.tasks import get_task
        >>> model = create_model("vae", input_dim=10, latent_dim=3).eval()
        >>> sorted(get_task("representation").predict(model, {"x": torch.randn(4, 10)}))
        ['latent', 'reconstruction']
        """
        if "x" not in batch:
            msg = f"Batches must contain 'x', got keys {format_names(batch)}."
            raise ValueError(msg)
        required = self.required_output_keys
        if self.predict_output_keys is not None:
            required = self.predict_output_keys
        outputs = self.check_outputs(forward(model, batch), model, required=required)
        return {key: outputs[key] for key in self.output_keys if key in outputs}
