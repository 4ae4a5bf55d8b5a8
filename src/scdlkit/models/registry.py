"""The model registry: names -> model classes, inspectable with :func:`list_models`."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from numbers import Integral
from types import MappingProxyType
from typing import Any, TypeVar, overload

import pandas as pd
import torch
from torch import nn

from .._errors import format_names
from .base import REGISTRY_NAME, ScdlModel

ModelClass = TypeVar("ModelClass", bound=type[ScdlModel])

_REGISTRY: dict[str, type[ScdlModel]] = {}

#: The scDLKit 0.1.6 model names, each an alias of the registry name it now stands for.
#: A name registered with :func:`register_model` takes precedence over an alias.
MODEL_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "ae": "autoencoder",
        "classifier": "mlp_classifier",
        "dae": "denoising_autoencoder",
        "transformer_autoencoder": "transformer_ae",
    }
)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        msg = f"A model name must be a non-empty string, got {name!r}."
        raise ValueError(msg)
    return name


def _register(name: str, cls: type[ScdlModel], *, overwrite: bool) -> type[ScdlModel]:
    if not (isinstance(cls, type) and issubclass(cls, ScdlModel)):
        hint = (
            " Subclass scdlkit.models.ScdlModel, or wrap a plain torch module with "
            "scdlkit.adapters.wrap_reconstruction_module / wrap_classification_module."
            if isinstance(cls, type) and issubclass(cls, nn.Module)
            else ""
        )
        msg = f"register_model({name!r}) needs a subclass of ScdlModel, got {cls!r}.{hint}"
        raise ValueError(msg)
    if not cls.supported_tasks:
        msg = (
            f"{cls.__name__} declares no supported_tasks; set a class attribute such as "
            "supported_tasks = ('representation', 'reconstruction')."
        )
        raise ValueError(msg)
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls and not overwrite:
        msg = (
            f"A model named {name!r} is already registered ({existing.__module__}."
            f"{existing.__qualname__}). Choose another name or pass overwrite=True."
        )
        raise ValueError(msg)
    if (
        existing is not None
        and existing is not cls
        and existing.__dict__.get(REGISTRY_NAME) == name
    ):
        delattr(existing, REGISTRY_NAME)
    _REGISTRY[name] = cls
    setattr(cls, REGISTRY_NAME, name)
    return cls


@overload
def register_model(name: str, *, overwrite: bool = False) -> Callable[[ModelClass], ModelClass]: ...


@overload
def register_model(name: str, cls: ModelClass, *, overwrite: bool = False) -> ModelClass: ...


def register_model(name: str, cls: ModelClass | None = None, *, overwrite: bool = False) -> Any:
    """Register a model class under ``name`` so :func:`create_model` and checkpoints can build it.

    Use as a class decorator, ``@register_model("my_model")``, or call it
    directly, ``register_model("my_model", MyModel)``.

    Parameters
    ----------
    name
        Registry name (what ``model.config["name"]`` will hold).
    cls
        The class, when not used as a decorator. Must subclass
        :class:`~scdlkit.models.ScdlModel` and declare ``supported_tasks``.
    overwrite
        Replace a different class already registered under ``name``.

    Returns
    -------
    The class itself (or a decorator that returns it).

    Raises
    ------
    ValueError
        Empty name, a class that is not an ``ScdlModel`` or declares no
        ``supported_tasks``, or a name taken by another class without ``overwrite``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from scdlkit.models import ScdlModel, create_model, register_model
    >>> @register_model("linear_ae_doc")
    ... class LinearAE(ScdlModel):
    ...     "Linear autoencoder."
    ...
    ...     supported_tasks = ("representation", "reconstruction")
    ...
    ...     def __init__(self, *, input_dim: int, latent_dim: int = 2):
    ...         super().__init__()
    ...         self.input_dim = input_dim
    ...         self.encoder = nn.Linear(input_dim, latent_dim)
    ...         self.decoder = nn.Linear(latent_dim, input_dim)
    ...
    ...     def forward(self, x):
    ...         latent = self.encoder(x)
    ...         return {"latent": latent, "reconstruction": self.decoder(latent)}
    >>> create_model("linear_ae_doc", input_dim=10).config
    {'name': 'linear_ae_doc', 'kwargs': {'input_dim': 10, 'latent_dim': 2}}
    """
    name = _check_name(name)
    if cls is not None:
        return _register(name, cls, overwrite=overwrite)

    def decorator(model_cls: ModelClass) -> ModelClass:
        _register(name, model_cls, overwrite=overwrite)
        return model_cls

    return decorator


def _active_aliases() -> dict[str, str]:
    """Return the aliases in use: not shadowed by a registered name, pointing to a registered one."""
    return {
        alias: name
        for alias, name in MODEL_ALIASES.items()
        if alias not in _REGISTRY and name in _REGISTRY
    }


def get_model_class(name: str) -> type[ScdlModel]:
    """Return the class registered under ``name`` (or under the name an alias stands for).

    Parameters
    ----------
    name
        A registry name, see :func:`list_models`, or one of the scDLKit 0.1.6
        names in :data:`MODEL_ALIASES` (``"ae"``, ``"dae"``, ``"classifier"``,
        ``"transformer_autoencoder"``).

    Returns
    -------
    The model class.

    Raises
    ------
    ValueError
        Unknown name; the message lists the registered names and the aliases.

    Examples
    --------
    >>> get_model_class("vae").__name__
    'VAE'
    >>> get_model_class("ae") is get_model_class("autoencoder")
    True
    """
    if name is None:
        msg = (
            "This model config has no registry name (name=None): it describes a wrapped module "
            "or an unregistered class, which cannot be rebuilt from a name. Build the module "
            "again (and wrap it with scdlkit.adapters), then load the weights, or register the "
            "class with scdlkit.models.register_model."
        )
        raise ValueError(msg)
    aliases = _active_aliases()
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    if isinstance(name, str) and name in aliases:
        return _REGISTRY[aliases[name]]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    alias_text = f" (aliases: {format_names(sorted(aliases))})" if aliases else ""
    msg = (
        f"Unknown model {name!r}.{hint} Registered models: {format_names(sorted(_REGISTRY))}"
        f"{alias_text}. Register your own with scdlkit.models.register_model."
    )
    raise ValueError(msg)


def _keyword_parameters(cls: type[ScdlModel]) -> tuple[dict[str, inspect.Parameter], bool]:
    signature = inspect.signature(cls)
    accepted = {
        name: parameter
        for name, parameter in signature.parameters.items()
        if parameter.kind
        in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    var_keyword = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    return accepted, var_keyword


def create_model(name: str, *, input_dim: int, seed: int | None = 0, **kwargs: Any) -> ScdlModel:
    """Build a registered model.

    The weights are initialised from ``seed`` without touching torch's global
    random state, so the same call always gives the same weights.

    Parameters
    ----------
    name
        Registry name: ``"autoencoder"``, ``"vae"``, ``"denoising_autoencoder"``,
        ``"transformer_ae"``, ``"mlp_classifier"`` or one you registered
        (see :func:`list_models`); an alias of :data:`MODEL_ALIASES` builds the
        model it stands for, and ``model.config["name"]`` holds the registry name.
    input_dim
        Number of input features, usually ``prepared.input_dim``.
    seed
        Seed of the weight initialisation; ``None`` draws from torch's global
        random generator instead (then ``torch.manual_seed`` controls it). The
        seed is not part of ``model.config``: a rebuilt model gets its weights
        from ``load_state_dict``.
    **kwargs
        Model options (see each model's documentation), for example
        ``latent_dim=16`` or ``num_classes=`` for ``"mlp_classifier"``.

    Returns
    -------
    The model, in training mode.

    Raises
    ------
    ValueError
        Unknown model name, an option the model does not accept (the message
        lists the accepted ones), a required option that is missing, or an
        invalid value.

    Examples
    --------
    >>> model = create_model("vae", input_dim=765, latent_dim=16)
    >>> model.config["kwargs"]["latent_dim"]
    16
    >>> rebuilt = create_model(model.config["name"], **model.config["kwargs"])
    >>> torch.equal(rebuilt.mu.weight, model.mu.weight)  # same seed, same weights
    True
    """
    cls = get_model_class(name)
    accepted, var_keyword = _keyword_parameters(cls)
    if "input_dim" not in accepted and not var_keyword:
        msg = (
            f"Model {name!r} ({cls.__qualname__}) does not accept an input_dim keyword; "
            "scdlkit models must take input_dim=... in their constructor."
        )
        raise ValueError(msg)
    if not var_keyword:
        unknown = [key for key in kwargs if key not in accepted]
        if unknown:
            options = [key for key in accepted if key != "input_dim"]
            close = difflib.get_close_matches(unknown[0], options, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            msg = (
                f"Model {name!r} got unexpected option(s) {format_names(unknown)}.{hint} "
                f"Accepted options: {format_names(options)}."
            )
            raise ValueError(msg)
    given = {"input_dim", *kwargs}
    missing = [
        key
        for key, parameter in accepted.items()
        if parameter.default is inspect.Parameter.empty and key not in given
    ]
    if missing:
        hints = getattr(cls, "argument_hints", {})
        needed = "; ".join(
            f"{key}=... ({hints[key]})" if key in hints else f"{key}=..." for key in missing
        )
        msg = f"Model {name!r} needs {needed}. Pass it to create_model({name!r}, input_dim=..., {missing[0]}=...)."
        raise ValueError(msg)
    if seed is None:
        return cls(input_dim=input_dim, **kwargs)
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        msg = f"seed must be an integer or None, got {seed!r}."
        raise ValueError(msg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return cls(input_dim=input_dim, **kwargs)


def _describe(cls: type[ScdlModel]) -> str:
    if cls.description:
        return cls.description
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def list_models() -> pd.DataFrame:
    """List the registered models, one row each.

    Returns
    -------
    DataFrame with columns ``name``, ``supported_tasks`` (tuple of task names),
    ``aliases`` (tuple of the other names that build the model, see
    :data:`MODEL_ALIASES`) and ``description``, sorted by name.

    Examples
    --------
    >>> models = list_models()
    >>> {"autoencoder", "vae", "mlp_classifier"} <= set(models["name"])
    True
    >>> models.loc[models["name"] == "mlp_classifier", "supported_tasks"].item()
    ('classification',)
    >>> models.loc[models["name"] == "autoencoder", "aliases"].item()
    ('ae',)
    """
    aliases = _active_aliases()
    rows = [
        {
            "name": name,
            "supported_tasks": tuple(cls.supported_tasks),
            "aliases": tuple(sorted(alias for alias, target in aliases.items() if target == name)),
            "description": _describe(cls),
        }
        for name, cls in sorted(_REGISTRY.items())
    ]
    return pd.DataFrame(rows, columns=["name", "supported_tasks", "aliases", "description"])


def models_for_task(task: str) -> list[str]:
    """Names of the registered models that support ``task``.

    Examples
    --------
    >>> models_for_task("classification")
    ['mlp_classifier']
    """
    return sorted(name for name, cls in _REGISTRY.items() if task in cls.supported_tasks)
