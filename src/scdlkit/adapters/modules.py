"""Wrap plain PyTorch modules so the Trainer and the tasks can use them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .._errors import format_names
from ..models.base import ScdlModel, to_jsonable
from ..models.layers import check_int


def _qualified_name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class TorchModuleAdapter(ScdlModel):
    """Base class of the adapters: an :class:`~scdlkit.models.ScdlModel` around any ``nn.Module``.

    The wrapped module is ``self.module`` (its parameters are the adapter's,
    under the ``module.`` prefix of the state dict). Subclasses turn the
    module's output into the scdlkit output dictionary and check it on every
    forward pass, so a module that breaks the contract fails at the first batch
    with a message that says what was expected.

    If the wrapped module defines ``extra_losses(outputs)`` or
    ``on_epoch_start(epoch)``, the adapter forwards those calls to it.

    An adapter cannot be rebuilt from a registry name: its :attr:`config` has
    ``name=None`` and records the module class. To reload weights, build the
    module again, wrap it the same way and call ``load_state_dict``.

    Parameters
    ----------
    module
        The module to wrap; its ``forward`` takes ``x`` ``(n, n_features)``.
    input_dim
        Expected number of input features (checked on every batch), or ``None``.

    Examples
    --------
    >>> from torch import nn
    >>> from scdlkit.adapters import wrap_reconstruction_module
    >>> model = wrap_reconstruction_module(nn.Linear(5, 5), input_dim=5)
    >>> model.config["module_class"]
    'torch.nn.modules.linear.Linear'
    """

    supported_tasks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, module: nn.Module, *, input_dim: int | None = None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            msg = f"Expected a torch.nn.Module to wrap, got {type(module).__name__}."
            raise TypeError(msg)
        if isinstance(module, ScdlModel):
            msg = (
                f"{type(module).__name__} is already a scdlkit model (an ScdlModel); pass it to the "
                "Trainer directly instead of wrapping it."
            )
            raise ValueError(msg)
        self.module = module
        self.input_dim = None if input_dim is None else check_int("input_dim", input_dim)

    @property
    def module_name(self) -> str:
        """Class name of the wrapped module, for messages."""
        return type(self.module).__name__

    def _adapter_kwargs(self) -> dict[str, Any]:
        return {"input_dim": self.input_dim}

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": None, "kwargs": {...}, "module_class": "<module.QualName>"}``.

        Adapters cannot be rebuilt from a name: to reload, wrap a new instance
        of the module again and load the weights.
        """
        return {
            "name": None,
            "kwargs": to_jsonable(self._adapter_kwargs(), where=f"{type(self).__name__} kwargs"),
            "module_class": _qualified_name(self.module),
        }

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` unless ``x`` is a 2-D tensor (with ``input_dim`` columns when known)."""
        if (
            not isinstance(x, torch.Tensor)
            or x.ndim != 2
            or (self.input_dim is not None and x.shape[1] != self.input_dim)
        ):
            got = (
                f"shape {tuple(x.shape)}"
                if isinstance(x, torch.Tensor)
                else f"a {type(x).__name__}"
            )
            expected = "n_features" if self.input_dim is None else self.input_dim
            msg = f"{type(self).__name__}({self.module_name}) expects x of shape (n_cells, {expected}), got {got}."
            raise ValueError(msg)

    def _check_tensor(self, key: str, value: object, expected: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            msg = (
                f"{self.module_name}.forward returned {key!r} as a {type(value).__name__}; expected a "
                f"torch.Tensor of shape {expected}."
            )
            raise ValueError(msg)
        return value

    def _check_latent(self, latent: object, n: int, latent_dim: int | None) -> torch.Tensor:
        expected = f"({n}, {'latent_dim' if latent_dim is None else latent_dim})"
        latent = self._check_tensor("latent", latent, expected)
        if (
            latent.ndim != 2
            or latent.shape[0] != n
            or (latent_dim is not None and latent.shape[1] != latent_dim)
        ):
            msg = (
                f"{self.module_name}.forward returned 'latent' of shape {tuple(latent.shape)}; expected "
                f"{expected} (one row per cell)."
            )
            raise ValueError(msg)
        return latent

    def extra_losses(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return the wrapped module's ``extra_losses(outputs)``, or ``{}`` when it has none."""
        hook = getattr(self.module, "extra_losses", None)
        return dict(hook(outputs)) if callable(hook) else {}

    def on_epoch_start(self, epoch: int) -> None:
        """Call the wrapped module's ``on_epoch_start(epoch)`` when it has one."""
        hook = getattr(self.module, "on_epoch_start", None)
        if callable(hook):
            hook(epoch)


class ReconstructionModuleAdapter(TorchModuleAdapter):
    """Adapter for modules that reconstruct their input (tasks ``representation``, ``reconstruction``).

    The module's ``forward(x)`` may return

    - a tensor: the reconstruction (no latent, so only the ``reconstruction``
      task works; ``representation`` raises at the first batch);
    - a tuple ``(latent, reconstruction)``;
    - a dict with ``"reconstruction"`` and optionally ``"latent"`` (other
      tensor entries, e.g. ``"mu"``, are passed on).

    Every forward checks that ``reconstruction`` has the shape of ``x`` and
    that ``latent`` is 2-D with one row per cell (and ``latent_dim`` columns
    when given).

    Parameters
    ----------
    module
        The module to wrap.
    input_dim
        Expected number of input features, or ``None``.
    latent_dim
        Expected latent size, or ``None``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> class AE(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.enc, self.dec = nn.Linear(6, 2), nn.Linear(2, 6)
    ...
    ...     def forward(self, x):
    ...         z = self.enc(x)
    ...         return z, self.dec(z)
    >>> out = ReconstructionModuleAdapter(AE(), latent_dim=2)(torch.randn(3, 6))
    >>> out["latent"].shape, out["reconstruction"].shape
    (torch.Size([3, 2]), torch.Size([3, 6]))
    """

    supported_tasks = ("representation", "reconstruction")

    def __init__(
        self, module: nn.Module, *, input_dim: int | None = None, latent_dim: int | None = None
    ) -> None:
        super().__init__(module, input_dim=input_dim)
        self.latent_dim = None if latent_dim is None else check_int("latent_dim", latent_dim)

    def _adapter_kwargs(self) -> dict[str, Any]:
        return {"input_dim": self.input_dim, "latent_dim": self.latent_dim}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the module and return ``{"reconstruction", ["latent"], ...}`` after checking shapes."""
        self.check_input(x)
        raw = self.module(x)
        expected_forms = (
            "a reconstruction tensor, a tuple (latent, reconstruction), or a dict with "
            "'reconstruction' (and optionally 'latent')"
        )
        if isinstance(raw, torch.Tensor):
            outputs: dict[str, Any] = {"reconstruction": raw}
        elif isinstance(raw, tuple | list):
            if len(raw) != 2:
                msg = (
                    f"{self.module_name}.forward returned a {type(raw).__name__} of length {len(raw)}; "
                    f"expected {expected_forms}."
                )
                raise ValueError(msg)
            outputs = {"latent": raw[0], "reconstruction": raw[1]}
        elif isinstance(raw, Mapping):
            outputs = dict(raw)
            if "reconstruction" not in outputs:
                msg = (
                    f"{self.module_name}.forward returned a dict without 'reconstruction' (keys: "
                    f"{format_names(outputs)}); expected {expected_forms}."
                )
                raise ValueError(msg)
        else:
            msg = f"{self.module_name}.forward returned a {type(raw).__name__}; expected {expected_forms}."
            raise ValueError(msg)
        shape = tuple(x.shape)
        reconstruction = self._check_tensor("reconstruction", outputs["reconstruction"], str(shape))
        if tuple(reconstruction.shape) != shape:
            msg = (
                f"{self.module_name}.forward returned 'reconstruction' of shape "
                f"{tuple(reconstruction.shape)}; expected the shape of the input x, {shape}."
            )
            raise ValueError(msg)
        if "latent" in outputs:
            outputs["latent"] = self._check_latent(outputs["latent"], x.shape[0], self.latent_dim)
        return outputs


class ClassificationModuleAdapter(TorchModuleAdapter):
    """Adapter for modules that output class logits (task ``classification``).

    The module's ``forward(x)`` may return a logits tensor ``(n, num_classes)``
    or a dict with ``"logits"`` (and optionally ``"latent"``, an embedding of
    one row per cell). Every forward checks those shapes.

    Parameters
    ----------
    module
        The module to wrap.
    input_dim
        Expected number of input features, or ``None``.
    num_classes
        Expected number of classes (columns of the logits), or ``None``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = ClassificationModuleAdapter(nn.Linear(6, 3), num_classes=3)
    >>> model(torch.randn(4, 6))["logits"].shape
    torch.Size([4, 3])
    """

    supported_tasks = ("classification",)

    def __init__(
        self, module: nn.Module, *, input_dim: int | None = None, num_classes: int | None = None
    ) -> None:
        super().__init__(module, input_dim=input_dim)
        self.num_classes = (
            None if num_classes is None else check_int("num_classes", num_classes, minimum=2)
        )

    def _adapter_kwargs(self) -> dict[str, Any]:
        return {"input_dim": self.input_dim, "num_classes": self.num_classes}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the module and return ``{"logits", ["latent"], ...}`` after checking shapes."""
        self.check_input(x)
        raw = self.module(x)
        expected_forms = "a logits tensor of shape (n_cells, num_classes) or a dict with 'logits'"
        if isinstance(raw, torch.Tensor):
            outputs: dict[str, Any] = {"logits": raw}
        elif isinstance(raw, Mapping):
            outputs = dict(raw)
            if "logits" not in outputs:
                msg = (
                    f"{self.module_name}.forward returned a dict without 'logits' (keys: "
                    f"{format_names(outputs)}); expected {expected_forms}."
                )
                raise ValueError(msg)
        else:
            msg = f"{self.module_name}.forward returned a {type(raw).__name__}; expected {expected_forms}."
            raise ValueError(msg)
        n = x.shape[0]
        expected = f"({n}, {'num_classes' if self.num_classes is None else self.num_classes})"
        logits = self._check_tensor("logits", outputs["logits"], expected)
        if (
            logits.ndim != 2
            or logits.shape[0] != n
            or (self.num_classes is not None and logits.shape[1] != self.num_classes)
        ):
            msg = (
                f"{self.module_name}.forward returned 'logits' of shape {tuple(logits.shape)}; "
                f"expected {expected} (one row per cell, one column per class)."
            )
            raise ValueError(msg)
        if "latent" in outputs:
            outputs["latent"] = self._check_latent(outputs["latent"], n, None)
        return outputs


def wrap_reconstruction_module(
    module: nn.Module, *, input_dim: int | None = None, latent_dim: int | None = None
) -> ReconstructionModuleAdapter:
    """Wrap a plain PyTorch module for the ``representation`` and ``reconstruction`` tasks.

    Parameters
    ----------
    module
        Module whose ``forward(x)`` returns a reconstruction tensor, a tuple
        ``(latent, reconstruction)``, or a dict with ``"reconstruction"`` and
        optionally ``"latent"``. The ``representation`` task needs a latent.
    input_dim
        Expected number of input features (checked on every batch), or ``None``.
    latent_dim
        Expected latent size (checked on every batch), or ``None``.

    Returns
    -------
    A :class:`ReconstructionModuleAdapter` to pass to the Trainer.

    Raises
    ------
    TypeError
        ``module`` is not an ``nn.Module``.
    ValueError
        ``module`` is already an ``ScdlModel``, or bad ``input_dim``/``latent_dim``.
        At the first batch: an output that is missing or has the wrong type or shape.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from scdlkit.tasks import get_task
    >>> module = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 8))
    >>> model = wrap_reconstruction_module(module, input_dim=8)
    >>> loss, stats, _ = get_task("reconstruction").compute_loss(model, {"x": torch.randn(4, 8)})
    >>> sorted(stats)
    ['reconstruction']
    """
    return ReconstructionModuleAdapter(module, input_dim=input_dim, latent_dim=latent_dim)


def wrap_classification_module(
    module: nn.Module, *, input_dim: int | None = None, num_classes: int | None = None
) -> ClassificationModuleAdapter:
    """Wrap a plain PyTorch module for the ``classification`` task.

    Parameters
    ----------
    module
        Module whose ``forward(x)`` returns logits ``(n, num_classes)`` or a dict
        with ``"logits"`` (and optionally ``"latent"``).
    input_dim
        Expected number of input features (checked on every batch), or ``None``.
    num_classes
        Expected number of classes (checked on every batch), or ``None``.

    Returns
    -------
    A :class:`ClassificationModuleAdapter` to pass to the Trainer.

    Raises
    ------
    TypeError
        ``module`` is not an ``nn.Module``.
    ValueError
        ``module`` is already an ``ScdlModel``, or bad ``input_dim``/``num_classes``.
        At the first batch: missing ``logits`` or logits of the wrong type or shape.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = wrap_classification_module(nn.Linear(8, 4), num_classes=4)
    >>> model(torch.randn(2, 8))["logits"].shape
    torch.Size([2, 4])
    """
    return ClassificationModuleAdapter(module, input_dim=input_dim, num_classes=num_classes)
