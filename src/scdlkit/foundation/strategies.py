"""Adaptation strategies for scGPT annotation: one config dataclass each (applied by ``peft.py``).

=================  ==========================================================================
``frozen_probe``   logistic regression on the frozen, L2-normalised ``<cls>`` embeddings
``head``           a trained classifier head on the frozen ``<cls>`` embeddings
``full_finetune``  every encoder weight plus the head
``lora``           low-rank updates of chosen projections (default: attention ``q``, ``v``)
``adapter``        bottleneck adapters after the attention and feed-forward sublayers
``prefix_tuning``  trainable key/value prefixes in every attention layer
``ia3``            learned scales of keys, values and the feed-forward activation
=================  ==========================================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .._errors import format_names
from ..train.options import DEFAULT_LR

#: Default epochs of a trained strategy. Deliberately far below the package-wide
#: ``DEFAULT_EPOCHS`` (200): a pretrained encoder adapts within a few passes, every
#: epoch runs the transformer over every training cell (hours per run at 200 epochs
#: with a real checkpoint), and small labelled reference sets overfit quickly.
ADAPTATION_EPOCHS = 15
#: Default early-stopping patience of a trained strategy (``DEFAULT_PATIENCE`` is 20,
#: more than ``ADAPTATION_EPOCHS``): a third of the epochs, so a stalled run stops.
ADAPTATION_PATIENCE = 5
#: Default gradient-norm clip of a trained strategy (the Trainer's default is none):
#: fine-tuning a transformer with a freshly initialised head is unstable without it.
ADAPTATION_GRAD_CLIP = 1.0
#: ``full_finetune`` moves every pretrained weight: fewer epochs and a 10x smaller learning rate.
FULL_FINETUNE_EPOCHS = 10
FULL_FINETUNE_LR = 1e-4

#: Projection names LoRA and IA3 can target (``ffn`` is IA3's feed-forward activation).
LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2")
IA3_TARGETS = (*LINEAR_TARGETS, "ffn")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class BaseConfig:
    """Common behaviour of strategy configs: validation and a JSON form."""

    strategy: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first invalid field."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``config_type`` plus every field (tuples become lists)."""
        payload: dict[str, Any] = {"config_type": type(self).__name__}
        for item in fields(self):
            value = getattr(self, item.name)
            payload[item.name] = list(value) if isinstance(value, tuple) else value
        return payload

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> BaseConfig:
        """Rebuild a config from :meth:`to_dict` output (or a plain dict of fields)."""
        payload = {k: v for k, v in payload.items() if k != "config_type"}
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            msg = f"{cls.__name__} has no field(s) {format_names(unknown)}; its fields: {format_names(sorted(known))}."
            raise ValueError(msg)
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in payload.items()}
        return cls(**values)


@dataclass(frozen=True)
class FrozenProbeConfig(BaseConfig):
    """Logistic regression on frozen, L2-normalised ``<cls>`` embeddings (scikit-learn).

    Parameters
    ----------
    C
        Inverse regularisation strength.
    max_iter
        Iterations of the L-BFGS solver.
    standardize
        Standardise each embedding dimension (training-split mean and standard
        deviation) before the regression; the scaling is folded into the probe's
        weights. Foundation-model embeddings are often very similar to each other
        (high cosine similarity), which an unscaled, regularised probe underfits.

    Examples
    --------
    >>> FrozenProbeConfig(C=0.5).to_dict()
    {'config_type': 'FrozenProbeConfig', 'C': 0.5, 'max_iter': 1000, 'standardize': True}
    """

    strategy: ClassVar[str] = "frozen_probe"
    C: float = 1.0
    max_iter: int = 1000
    standardize: bool = True

    def validate(self) -> None:  # noqa: D102
        _check(
            _is_number(self.C) and self.C > 0, f"FrozenProbeConfig.C must be > 0, got {self.C!r}."
        )
        _check(
            _is_int(self.max_iter) and self.max_iter > 0,
            f"FrozenProbeConfig.max_iter must be a positive integer, got {self.max_iter!r}.",
        )
        _check(
            isinstance(self.standardize, bool),
            f"FrozenProbeConfig.standardize must be True or False, got {self.standardize!r}.",
        )


@dataclass(frozen=True)
class TrainedConfig(BaseConfig):
    """Training settings shared by every strategy trained with the :class:`~scdlkit.Trainer`.

    The defaults differ from the Trainer's on purpose (see
    ``ADAPTATION_EPOCHS``, ``ADAPTATION_PATIENCE`` and ``ADAPTATION_GRAD_CLIP``):
    adapting a pretrained encoder needs few, clipped epochs.

    Parameters
    ----------
    epochs
        Maximum epochs.
    lr
        Learning rate (Adam).
    weight_decay
        Weight decay.
    early_stopping_patience
        Epochs without validation improvement before stopping (``None``: never).
    grad_clip
        Gradient-norm clip (``None``: none).
    head_dropout
        Dropout before the classifier's linear layer.
    """

    epochs: int = ADAPTATION_EPOCHS
    lr: float = DEFAULT_LR
    weight_decay: float = 0.0
    early_stopping_patience: int | None = ADAPTATION_PATIENCE
    grad_clip: float | None = ADAPTATION_GRAD_CLIP
    head_dropout: float = 0.1

    def validate(self) -> None:  # noqa: D102
        name = type(self).__name__
        _check(
            _is_int(self.epochs) and self.epochs > 0,
            f"{name}.epochs must be a positive integer, got {self.epochs!r}.",
        )
        _check(_is_number(self.lr) and self.lr > 0, f"{name}.lr must be > 0, got {self.lr!r}.")
        _check(
            _is_number(self.weight_decay) and self.weight_decay >= 0,
            f"{name}.weight_decay must be >= 0, got {self.weight_decay!r}.",
        )
        _check(
            self.early_stopping_patience is None
            or (_is_int(self.early_stopping_patience) and self.early_stopping_patience >= 0),
            f"{name}.early_stopping_patience must be None or an integer >= 0, got {self.early_stopping_patience!r}.",
        )
        _check(
            self.grad_clip is None or (_is_number(self.grad_clip) and self.grad_clip > 0),
            f"{name}.grad_clip must be None or > 0, got {self.grad_clip!r}.",
        )
        _check(
            _is_number(self.head_dropout) and 0 <= self.head_dropout < 1,
            f"{name}.head_dropout must be in [0, 1), got {self.head_dropout!r}.",
        )


@dataclass(frozen=True)
class HeadConfig(TrainedConfig):
    """Train only a classifier head (LayerNorm → Dropout → Linear) on frozen embeddings.

    The frozen embeddings are computed once and reused every epoch.

    Examples
    --------
    >>> HeadConfig(epochs=30).epochs
    30
    """

    strategy: ClassVar[str] = "head"


@dataclass(frozen=True)
class FullFinetuneConfig(TrainedConfig):
    """Train every encoder weight and the head (largest memory and time cost).

    Examples
    --------
    >>> FullFinetuneConfig().lr
    0.0001
    """

    strategy: ClassVar[str] = "full_finetune"
    epochs: int = FULL_FINETUNE_EPOCHS
    lr: float = FULL_FINETUNE_LR


@dataclass(frozen=True)
class LoRAConfig(TrainedConfig):
    """Low-rank adaptation: ``W x + (alpha / rank) · B A x`` on the target projections.

    Parameters
    ----------
    rank
        Rank of the update.
    alpha
        Scale numerator; the update is multiplied by ``alpha / rank``.
    dropout
        Dropout on the input of the low-rank branch (every target).
    target_modules
        Any of ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, ``linear1``, ``linear2``.

    Examples
    --------
    >>> LoRAConfig(rank=4, target_modules=("q_proj", "k_proj", "v_proj")).rank
    4
    """

    strategy: ClassVar[str] = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def validate(self) -> None:  # noqa: D102
        super().validate()
        _check(
            _is_int(self.rank) and self.rank > 0,
            f"LoRAConfig.rank must be a positive integer, got {self.rank!r}.",
        )
        _check(
            _is_number(self.alpha) and self.alpha > 0,
            f"LoRAConfig.alpha must be > 0, got {self.alpha!r}.",
        )
        _check(
            _is_number(self.dropout) and 0 <= self.dropout < 1,
            f"LoRAConfig.dropout must be in [0, 1), got {self.dropout!r}.",
        )
        _check_targets("LoRAConfig", self.target_modules, LINEAR_TARGETS)


@dataclass(frozen=True)
class AdapterConfig(TrainedConfig):
    """Bottleneck adapters (zero-initialised up-projection) after both sublayers of every layer.

    Parameters
    ----------
    bottleneck_dim
        Width of the bottleneck.
    dropout
        Dropout inside the adapter.
    activation
        ``gelu``, ``relu``, ``silu`` or ``tanh``.

    Examples
    --------
    >>> AdapterConfig(bottleneck_dim=16).bottleneck_dim
    16
    """

    strategy: ClassVar[str] = "adapter"
    bottleneck_dim: int = 64
    dropout: float = 0.05
    activation: str = "gelu"

    def validate(self) -> None:  # noqa: D102
        super().validate()
        _check(
            _is_int(self.bottleneck_dim) and self.bottleneck_dim > 0,
            f"AdapterConfig.bottleneck_dim must be a positive integer, got {self.bottleneck_dim!r}.",
        )
        _check(
            _is_number(self.dropout) and 0 <= self.dropout < 1,
            f"AdapterConfig.dropout must be in [0, 1), got {self.dropout!r}.",
        )
        _check(
            self.activation in ("gelu", "relu", "silu", "tanh"),
            f"AdapterConfig.activation must be 'gelu', 'relu', 'silu' or 'tanh', got {self.activation!r}.",
        )


@dataclass(frozen=True)
class PrefixTuningConfig(TrainedConfig):
    """Prefix tuning: ``prefix_length`` trainable keys and values prepended in every attention layer.

    Parameters
    ----------
    prefix_length
        Prefix vectors per layer.
    dropout
        Dropout on the prefix vectors.
    init_std
        Standard deviation of their normal initialisation.

    Examples
    --------
    >>> PrefixTuningConfig(prefix_length=4).prefix_length
    4
    """

    strategy: ClassVar[str] = "prefix_tuning"
    prefix_length: int = 20
    dropout: float = 0.0
    init_std: float = 0.02

    def validate(self) -> None:  # noqa: D102
        super().validate()
        _check(
            _is_int(self.prefix_length) and self.prefix_length > 0,
            f"PrefixTuningConfig.prefix_length must be a positive integer, got {self.prefix_length!r}.",
        )
        _check(
            _is_number(self.dropout) and 0 <= self.dropout < 1,
            f"PrefixTuningConfig.dropout must be in [0, 1), got {self.dropout!r}.",
        )
        _check(
            _is_number(self.init_std) and self.init_std > 0,
            f"PrefixTuningConfig.init_std must be > 0, got {self.init_std!r}.",
        )


@dataclass(frozen=True)
class IA3Config(TrainedConfig):
    """IA3: learned per-channel scales of keys, values and the feed-forward activation.

    Parameters
    ----------
    init_scale
        Initial value of every scale (``1.0`` starts at the pretrained model).
    target_modules
        Any of ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, ``linear1``,
        ``linear2`` (their outputs are scaled) and ``ffn`` (the feed-forward
        activation, after the ReLU).

    Examples
    --------
    >>> IA3Config().target_modules
    ('k_proj', 'v_proj', 'ffn')
    """

    strategy: ClassVar[str] = "ia3"
    init_scale: float = 1.0
    target_modules: tuple[str, ...] = ("k_proj", "v_proj", "ffn")

    def validate(self) -> None:  # noqa: D102
        super().validate()
        _check(
            _is_number(self.init_scale),
            f"IA3Config.init_scale must be a number, got {self.init_scale!r}.",
        )
        _check_targets("IA3Config", self.target_modules, IA3_TARGETS)


def _check_targets(name: str, targets: Any, allowed: tuple[str, ...]) -> None:
    if isinstance(targets, str) or not isinstance(targets, tuple | list) or not targets:
        msg = f"{name}.target_modules must be a non-empty tuple of names from {format_names(allowed)}, got {targets!r}."
        raise ValueError(msg)
    unknown = [t for t in targets if t not in allowed]
    if unknown or len(set(targets)) != len(targets):
        msg = (
            f"{name}.target_modules has unknown or repeated names {format_names(unknown or targets)}; "
            f"choose from {format_names(allowed)}."
        )
        raise ValueError(msg)


#: Strategy name → its config class, in the order of the documentation.
STRATEGIES: dict[str, type[BaseConfig]] = {
    cls.strategy: cls
    for cls in (
        FrozenProbeConfig,
        HeadConfig,
        FullFinetuneConfig,
        LoRAConfig,
        AdapterConfig,
        PrefixTuningConfig,
        IA3Config,
    )
}

#: Strategies whose encoder stays exactly the pretrained one.
FROZEN_STRATEGIES = ("frozen_probe", "head")


def resolve_configs(
    strategies: tuple[str, ...] | list[str] | str,
    strategy_configs: Mapping[str, BaseConfig | Mapping[str, Any]] | None = None,
) -> dict[str, BaseConfig]:
    """Validate strategy names and build one config per strategy.

    ``strategy_configs`` maps a strategy to its config instance or to a dict of
    fields to override.

    Raises
    ------
    ValueError
        An unknown or repeated strategy, a config for a strategy that was not
        requested, a config of the wrong type, or an invalid field.

    Examples
    --------
    >>> configs = resolve_configs(("head", "lora"), {"lora": {"rank": 4}})
    >>> configs["lora"].rank, type(configs["head"]).__name__
    (4, 'HeadConfig')
    """
    names = (strategies,) if isinstance(strategies, str) else tuple(strategies)
    if not names:
        msg = f"strategies is empty; choose from {format_names(STRATEGIES)}."
        raise ValueError(msg)
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown:
        msg = f"Unknown strategy {format_names(unknown)}; choose from {format_names(STRATEGIES)}."
        raise ValueError(msg)
    if len(set(names)) != len(names):
        msg = f"strategies lists a strategy twice: {list(names)}."
        raise ValueError(msg)
    given = dict(strategy_configs or {})
    extra = [name for name in given if name not in names]
    if extra:
        msg = (
            f"strategy_configs has entries for {format_names(extra)}, which are not in strategies "
            f"{list(names)}. Add them to strategies= or remove the configs."
        )
        raise ValueError(msg)
    configs: dict[str, BaseConfig] = {}
    for name in names:
        cls = STRATEGIES[name]
        value = given.get(name)
        if value is None:
            configs[name] = cls()
        elif isinstance(value, BaseConfig):
            if type(value) is not cls:
                msg = f"strategy_configs[{name!r}] must be a {cls.__name__}, got {type(value).__name__}."
                raise ValueError(msg)
            configs[name] = value
        elif isinstance(value, Mapping):
            configs[name] = cls.from_dict(value)
        else:
            msg = f"strategy_configs[{name!r}] must be a {cls.__name__} or a dict of its fields, got {value!r}."
            raise ValueError(msg)
    return configs


def config_from_dict(payload: Mapping[str, Any]) -> BaseConfig:
    """Rebuild a config from its :meth:`BaseConfig.to_dict` form (uses ``config_type``)."""
    by_type = {cls.__name__: cls for cls in STRATEGIES.values()}
    kind = payload.get("config_type")
    if kind not in by_type:
        msg = f"Unknown config_type {kind!r}; expected one of {format_names(by_type)}."
        raise ValueError(msg)
    return by_type[kind].from_dict(payload)


def replace_config(config: BaseConfig, **changes: Any) -> BaseConfig:
    """Return a copy of ``config`` with fields changed (validated again)."""
    return dataclasses.replace(config, **changes)
