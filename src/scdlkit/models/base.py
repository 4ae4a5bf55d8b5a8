"""``ScdlModel``: the base class every scdlkit model derives from."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

#: Attribute (in the instance ``__dict__``) holding the recorded constructor arguments.
_INIT_ARGUMENTS = "_scdl_init_arguments"
#: Attribute (in the class ``__dict__`` only) holding the registry name.
REGISTRY_NAME = "_scdl_registry_name"


def to_jsonable(value: Any, *, where: str = "value") -> Any:
    """Convert a constructor argument to plain JSON types.

    Tuples and lists become lists, numpy scalars and arrays become Python
    numbers and lists, mapping keys become strings.

    Parameters
    ----------
    value
        The value to convert.
    where
        Name of the value, for the error message.

    Returns
    -------
    The converted value.

    Raises
    ------
    ValueError
        A value JSON cannot represent (a module, a function, ...).

    Examples
    --------
    >>> to_jsonable({"hidden_dims": (256, np.int64(128))})
    {'hidden_dims': [256, 128]}
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where=where)
    if isinstance(value, list | tuple):
        return [to_jsonable(item, where=f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, where=f"{where}[{k!r}]") for k, v in value.items()}
    msg = (
        f"{where} is a {type(value).__name__}, which cannot be stored in a model config "
        "(JSON numbers, strings, booleans, lists and dicts only). Pass plain values to the "
        "model constructor, or override the model's `config` property."
    )
    raise ValueError(msg)


def _record_init_arguments(init: Any) -> Any:
    """Wrap ``__init__`` so the outermost call records its bound arguments."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: ScdlModel, *args: Any, **kwargs: Any) -> None:
        if _INIT_ARGUMENTS not in self.__dict__:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                bound = None  # let ``init`` raise its own, better, TypeError
            if bound is not None:
                bound.apply_defaults()
                recorded: dict[str, Any] = {}
                for position, (name, parameter) in enumerate(signature.parameters.items()):
                    if position == 0:
                        continue  # self
                    value = bound.arguments.get(name)
                    if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                        recorded.update(value or {})
                    elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                        if value:
                            recorded[f"*{name}"] = list(value)
                    else:
                        recorded[name] = value
                self.__dict__[_INIT_ARGUMENTS] = recorded
        init(self, *args, **kwargs)

    wrapper._scdl_records_arguments = True  # type: ignore[attr-defined]
    return wrapper


class ScdlModel(nn.Module):
    """Base class of scdlkit models: an :class:`torch.nn.Module` with a task contract.

    Subclasses set :attr:`supported_tasks`, take ``input_dim`` (and any other
    option) as keyword arguments and implement :meth:`forward`, which maps the
    input ``x`` of shape ``(n, input_dim)`` to a dictionary of tensors:

    - autoencoder-type models return ``latent`` ``(n, latent_dim)`` and
      ``reconstruction`` ``(n, input_dim)``;
    - classifiers return ``logits`` ``(n, num_classes)`` (and ``latent``).

    The constructor arguments are recorded automatically, so :attr:`config`
    can rebuild the architecture through the registry
    (``create_model(config["name"], **config["kwargs"])``) without pickling code.

    Two optional hooks are called by the :class:`~scdlkit.Trainer` when a model
    defines them:

    ``extra_losses(outputs) -> dict[str, Tensor]``
        Already weighted scalar terms added to the task loss (for example a KL term).
    ``on_epoch_start(epoch) -> None``
        Called before every epoch (also after resuming from a checkpoint), for
        schedules such as a KL warm-up.

    Attributes
    ----------
    supported_tasks
        Names of the tasks the model can be trained for.
    supports_training
        ``False`` for inference-only models.
    description
        One line shown by :func:`~scdlkit.models.list_models` (defaults to the
        first line of the class docstring).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> class Linear(ScdlModel):
    ...     supported_tasks = ("reconstruction",)
    ...
    ...     def __init__(self, *, input_dim: int, scale: float = 1.0):
    ...         super().__init__()
    ...         self.input_dim = input_dim
    ...         self.layer = nn.Linear(input_dim, input_dim)
    ...
    ...     def forward(self, x):
    ...         return {"reconstruction": self.layer(x)}
    >>> Linear(input_dim=4).config
    {'name': None, 'kwargs': {'input_dim': 4, 'scale': 1.0}}
    """

    supported_tasks: ClassVar[tuple[str, ...]] = ()
    supports_training: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_scdl_records_arguments", False):
            cls.__init__ = _record_init_arguments(init)  # type: ignore[method-assign]

    @property
    def registry_name(self) -> str | None:
        """Name under which this exact class is registered, or ``None``."""
        return type(self).__dict__.get(REGISTRY_NAME)

    @property
    def init_arguments(self) -> dict[str, Any]:
        """The constructor arguments this instance was built with (defaults filled in)."""
        return dict(self.__dict__.get(_INIT_ARGUMENTS, {}))

    @property
    def config(self) -> dict[str, Any]:
        """Registry name and JSON-able constructor arguments.

        ``create_model(config["name"], **config["kwargs"])`` rebuilds the same
        architecture; load the weights with ``load_state_dict`` afterwards.
        ``name`` is ``None`` for classes that are not registered.

        Examples
        --------
        >>> from scdlkit.models import create_model
        >>> model = create_model("autoencoder", input_dim=20, hidden_dims=(16,), latent_dim=4)
        >>> config = model.config
        >>> config["name"], config["kwargs"]["hidden_dims"]
        ('autoencoder', [16])
        >>> rebuilt = create_model(config["name"], **config["kwargs"])
        """
        cls = type(self)
        arguments = self.__dict__.get(_INIT_ARGUMENTS, {})
        return {
            "name": self.registry_name,
            "kwargs": {
                name: to_jsonable(value, where=f"{cls.__name__} argument {name!r}")
                for name, value in arguments.items()
            },
        }

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear ``ValueError`` unless ``x`` is a 2-D tensor with ``input_dim`` columns.

        Examples
        --------
        >>> from scdlkit.models import create_model
        >>> model = create_model("autoencoder", input_dim=5)
        >>> model.check_input(torch.zeros(2, 5))
        >>> model.check_input(torch.zeros(2, 4))
        Traceback (most recent call last):
        ...
        ValueError: AutoEncoder expects x as a tensor of shape (n_cells, 5), got shape (2, 4). ...
        """
        input_dim = getattr(self, "input_dim", None)
        if (
            not isinstance(x, torch.Tensor)
            or x.ndim != 2
            or (input_dim is not None and x.shape[1] != input_dim)
        ):
            got = (
                f"shape {tuple(x.shape)}"
                if isinstance(x, torch.Tensor)
                else f"a {type(x).__name__}"
            )
            msg = (
                f"{type(self).__name__} expects x as a tensor of shape (n_cells, {input_dim}), "
                f"got {got}. Build the model with input_dim=prepared.input_dim for the data you pass."
            )
            raise ValueError(msg)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map ``x`` ``(n, input_dim)`` to a dictionary of output tensors."""
        msg = f"{type(self).__name__} must implement forward(x) -> dict[str, Tensor]."
        raise NotImplementedError(msg)


#: The scDLKit 0.1.6 name of :class:`ScdlModel` (same class, kept so old code runs unchanged).
BaseModel = ScdlModel
