"""``ScGPTConfig``: the architecture settings read from a checkpoint's ``args.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Keys that must be in ``args.json``; every other key has a default.
REQUIRED_ARGS = ("embsize", "nheads", "d_hid", "nlayers")


def _as_int(args: Mapping[str, Any], key: str, default: int | None, source: str) -> int:
    value = args.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and float(value).is_integer() and value > 0
    if not ok:
        msg = f"{source}: {key!r} must be a positive integer, got {value!r}."
        raise ValueError(msg)
    return int(value)


def _as_float(args: Mapping[str, Any], key: str, default: float, source: str) -> float:
    value = args.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        msg = f"{source}: {key!r} must be a number, got {value!r}."
        raise ValueError(msg)
    return float(value)


@dataclass(frozen=True)
class ScGPTConfig:
    """Architecture and tokenisation settings of an scGPT checkpoint.

    Built from the checkpoint's ``args.json`` (the pretraining run's argument
    dump) by :meth:`from_args`; keys that are absent take the value the
    official code uses.

    Attributes
    ----------
    embsize
        Model width ``d``.
    nheads
        Attention heads (``embsize`` must be divisible by it).
    d_hid
        Width of the feed-forward hidden layer.
    nlayers
        Transformer layers.
    dropout
        Dropout of the value encoder, the attention and the feed-forward block.
    pad_token
        The padding token of the vocabulary.
    pad_value
        Value at padding positions (and, by default, at ``<cls>``).
    n_bins
        Expression bins; values become integers ``1..n_bins - 1``, ``0`` is unused
        because zero-expression genes are left out of the sequence.
    max_seq_len
        Context length of pretraining, including ``<cls>``; the default ``max_len``.

    Examples
    --------
    >>> config = ScGPTConfig.from_args({"embsize": 16, "nheads": 2, "d_hid": 32, "nlayers": 2})
    >>> config.head_dim, config.n_bins, config.pad_value
    (8, 51, -2.0)
    """

    embsize: int
    nheads: int
    d_hid: int
    nlayers: int
    dropout: float = 0.2
    pad_token: str = "<pad>"
    pad_value: float = -2.0
    n_bins: int = 51
    max_seq_len: int = 1200

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.embsize // self.nheads

    @classmethod
    def from_args(cls, args: Mapping[str, Any], *, source: str = "args.json") -> ScGPTConfig:
        """Read the settings from a parsed ``args.json``.

        Parameters
        ----------
        args
            The parsed JSON object.
        source
            Where it came from, for messages.

        Returns
        -------
        The configuration.

        Raises
        ------
        ValueError
            A required key is missing, a value has the wrong type, or the
            checkpoint uses an option this implementation does not reproduce
            (pre-norm layers, a non-continuous value encoder, non-binned input,
            a cell embedding other than ``<cls>``, domain-specific batch norm).
        """
        if not isinstance(args, Mapping):
            msg = f"{source} must hold a JSON object (key: value pairs), got {type(args).__name__}."
            raise ValueError(msg)
        missing = [key for key in REQUIRED_ARGS if key not in args]
        if missing:
            msg = (
                f"{source} lacks the required key(s) {', '.join(repr(k) for k in missing)}; an scGPT "
                f"args.json names at least {', '.join(REQUIRED_ARGS)}."
            )
            raise ValueError(msg)
        unsupported = {
            "pre_norm": (args.get("pre_norm", False), (False, None)),
            "input_emb_style": (args.get("input_emb_style", "continuous"), ("continuous",)),
            "input_style": (args.get("input_style", "binned"), ("binned",)),
            "cell_emb_style": (args.get("cell_emb_style", "cls"), ("cls",)),
            "domain_spec_batchnorm": (args.get("domain_spec_batchnorm", False), (False, None)),
            "DSBN": (args.get("DSBN", False), (False, None)),
        }
        for key, (value, allowed) in unsupported.items():
            if value not in allowed:
                msg = (
                    f"{source} sets {key}={value!r}, which scdlkit's scGPT implementation does not "
                    f"support (supported: {', '.join(repr(a) for a in allowed if a is not None)}). "
                    "Only post-norm, binned, continuous-value checkpoints with a <cls> cell "
                    "embedding (such as the official whole-human model) can be loaded."
                )
                raise ValueError(msg)
        pad_token = args.get("pad_token", "<pad>")
        if not isinstance(pad_token, str) or not pad_token:
            msg = f"{source}: 'pad_token' must be a non-empty string, got {pad_token!r}."
            raise ValueError(msg)
        config = cls(
            embsize=_as_int(args, "embsize", None, source),
            nheads=_as_int(args, "nheads", None, source),
            d_hid=_as_int(args, "d_hid", None, source),
            nlayers=_as_int(args, "nlayers", None, source),
            dropout=_as_float(args, "dropout", 0.2, source),
            pad_token=pad_token,
            pad_value=_as_float(args, "pad_value", -2.0, source),
            n_bins=_as_int(args, "n_bins", 51, source),
            max_seq_len=_as_int(args, "max_seq_len", 1200, source),
        )
        if config.embsize % config.nheads:
            msg = f"{source}: embsize={config.embsize} is not divisible by nheads={config.nheads}."
            raise ValueError(msg)
        if not 0 <= config.dropout < 1:
            msg = f"{source}: 'dropout' must be in [0, 1), got {config.dropout}."
            raise ValueError(msg)
        if config.n_bins < 3:
            msg = f"{source}: 'n_bins' must be at least 3, got {config.n_bins}."
            raise ValueError(msg)
        if config.max_seq_len < 2:
            msg = f"{source}: 'max_seq_len' must be at least 2, got {config.max_seq_len}."
            raise ValueError(msg)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> ScGPTConfig:
        """Read ``args.json`` at ``path``.

        Raises
        ------
        ValueError
            The file is not valid JSON, or :meth:`from_args` rejects it.
        """
        path = Path(path)
        try:
            args = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            msg = f"{path} is not valid JSON: {error}."
            raise ValueError(msg) from error
        return cls.from_args(args, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the keys of ``args.json`` this implementation uses)."""
        return asdict(self)
