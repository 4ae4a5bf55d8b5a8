"""Read, validate and load an scGPT checkpoint folder (``args.json``, ``vocab.json``, ``best_model.pt``).

scdlkit never downloads or bundles weights: the user points :func:`load_scgpt`
at a local folder and is responsible for the terms under which they obtained it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from scanpy import logging as logg

from .._errors import format_names
from ..train.device import resolve_device
from ._hashing import file_sha256
from .config import ScGPTConfig
from .identity import CheckpointIdentity, LoadReport
from .model import ScGPTBackbone, ScGPTModel
from .vocab import GeneVocab

#: The three files of a checkpoint folder.
CHECKPOINT_FILES = ("args.json", "vocab.json", "best_model.pt")

#: Top-level modules of official checkpoints that frozen embeddings and annotation do not use.
IGNORED_PREFIXES = (
    "flag_encoder.",
    "decoder.",
    "mvc_decoder.",
    "cls_decoder.",
    "batch_encoder.",
    "grad_reverse_discriminator.",
    "dsbn.",
    "bn.",
    "pert_encoder.",
)

_ATTN = re.compile(
    r"^transformer_encoder\.layers\.(\d+)\.self_attn\.(?:_impl\.)?"
    r"(Wqkv\.weight|Wqkv\.bias|in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$"
)
_LAYER = re.compile(r"^transformer_encoder\.layers\.(\d+)\.(.+)$")
_NOTIFIED: set[str] = set()


def checkpoint_files(path: str | os.PathLike) -> dict[str, Path]:
    """Return the paths of the three checkpoint files.

    Raises
    ------
    FileNotFoundError
        The folder or one of ``args.json``, ``vocab.json``, ``best_model.pt`` is missing.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        msg = (
            f"scGPT checkpoint folder {str(folder)!r} does not exist. Download a checkpoint from the "
            "scGPT model zoo (see the scdlkit foundation docs) and pass the local folder holding "
            f"{', '.join(CHECKPOINT_FILES)}."
        )
        raise FileNotFoundError(msg)
    files = {name: folder / name for name in CHECKPOINT_FILES}
    missing = [name for name, file in files.items() if not file.is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        msg = (
            f"scGPT checkpoint folder {str(folder)!r} lacks {format_names(missing)} (it holds "
            f"{format_names(present)}). A checkpoint folder needs {', '.join(CHECKPOINT_FILES)}."
        )
        raise FileNotFoundError(msg)
    return files


def checkpoint_identity(path: str | os.PathLike) -> CheckpointIdentity:
    """Folder and SHA-256 of ``best_model.pt`` and ``vocab.json`` of a checkpoint."""
    files = checkpoint_files(path)
    return CheckpointIdentity(
        path=str(Path(path).expanduser().resolve()),
        weights_sha256=file_sha256(files["best_model.pt"]),
        vocab_sha256=file_sha256(files["vocab.json"]),
    )


def read_vocab(path: str | os.PathLike) -> tuple[ScGPTConfig, GeneVocab]:
    """Read only ``args.json`` and ``vocab.json`` of a checkpoint (no weights)."""
    files = checkpoint_files(path)
    config = ScGPTConfig.from_file(files["args.json"])
    return config, GeneVocab.from_file(files["vocab.json"], pad_token=config.pad_token)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load ``best_model.pt`` with ``weights_only=True`` and return a flat ``{name: tensor}``.

    ``{"model_state_dict": ...}`` and ``{"state_dict": ...}`` wrappers are
    unwrapped and a leading ``module.`` (DistributedDataParallel) is removed.

    Raises
    ------
    ValueError
        The file cannot be read safely or holds something other than tensors.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for bad files
        msg = (
            f"Could not load {path} with torch.load(weights_only=True): {error}. scdlkit only "
            "reads plain tensor state_dicts (it never unpickles code)."
        )
        raise ValueError(msg) from error
    for wrapper in ("model_state_dict", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping):
        msg = f"{path} holds a {type(state).__name__}, not a state_dict (a mapping of name to tensor)."
        raise ValueError(msg)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            msg = f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor."
            raise ValueError(msg)
        key = str(key)
        out[key.removeprefix("module.")] = value
    return out


def _layout(name: str, raw_key: str) -> str:
    if name.startswith("Wqkv"):
        return "flash_wrapped" if "._impl." in raw_key else "flash"
    if name.startswith("in_proj"):
        return "pytorch"
    return ""


def map_state_dict(
    state: Mapping[str, torch.Tensor], config: ScGPTConfig, *, strict: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str], tuple[str, ...], list[str]]:
    """Rename official keys to :class:`ScGPTBackbone` names, splitting packed q/k/v.

    Parameters
    ----------
    state
        The checkpoint's flat state_dict.
    config
        Architecture settings (for the number of layers and the width).
    strict
        Raise on keys that belong to no known module; otherwise ignore them.

    Returns
    -------
    mapped
        Tensors under our names.
    sources
        Our name → the checkpoint key it came from (for messages).
    layouts
        Attention layouts found.
    ignored
        Checkpoint keys that were not mapped.

    Raises
    ------
    ValueError
        An unknown key (with ``strict``), a layer index beyond ``nlayers``, the
        same attention weight in two layouts, or a packed projection of the wrong shape.
    """
    mapped: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    layouts: set[str] = set()
    ignored: list[str] = []
    unknown: list[str] = []
    d = config.embsize
    for key, tensor in state.items():
        if key.startswith(IGNORED_PREFIXES):
            ignored.append(key)
            continue
        layer = _LAYER.match(key)
        if layer is not None and int(layer.group(1)) >= config.nlayers:
            msg = (
                f"best_model.pt has key {key!r} for layer {layer.group(1)}, but args.json says "
                f"nlayers={config.nlayers} (layers 0..{config.nlayers - 1}). The weights and "
                "args.json do not belong together."
            )
            raise ValueError(msg)
        attention = _ATTN.match(key)
        if attention is not None:
            index, name = attention.groups()
            prefix = f"transformer_encoder.layers.{index}.self_attn."
            layout = _layout(name, key)
            if layout:
                layouts.add(layout)
                kind = "weight" if name.endswith("weight") else "bias"
                expected = (3 * d, d) if kind == "weight" else (3 * d,)
                if tuple(tensor.shape) != expected:
                    msg = (
                        f"best_model.pt key {key!r} has shape {list(tensor.shape)}, expected "
                        f"{list(expected)} (3 x embsize={d} packed q/k/v rows)."
                    )
                    raise ValueError(msg)
                for part, chunk in zip(
                    ("q_proj", "k_proj", "v_proj"), tensor.split(d), strict=True
                ):
                    target = f"{prefix}{part}.{kind}"
                    if target in mapped:
                        msg = (
                            f"best_model.pt holds the attention weights of layer {index} twice "
                            f"({sources[target]!r} and {key!r}); keep one layout."
                        )
                        raise ValueError(msg)
                    mapped[target], sources[target] = chunk, key
            else:
                target = prefix + name
                if target in mapped:
                    msg = (
                        f"best_model.pt holds {target!r} twice ({sources[target]!r} and {key!r}); "
                        "keep one layout."
                    )
                    raise ValueError(msg)
                mapped[target], sources[target] = tensor, key
            continue
        if key.startswith(("encoder.", "value_encoder.", "transformer_encoder.")):
            mapped[key], sources[key] = tensor, key
            continue
        unknown.append(key)
    if unknown and strict:
        msg = (
            f"best_model.pt has key(s) that belong to no known scGPT module: {format_names(unknown, limit=10)}. "
            "Is this an scGPT checkpoint? Pass strict=False to ignore unknown keys."
        )
        raise ValueError(msg)
    ignored.extend(unknown)
    return mapped, sources, tuple(sorted(layouts)), ignored


def _check_against(
    backbone: ScGPTBackbone, mapped: Mapping[str, torch.Tensor], sources: Mapping[str, str]
) -> None:
    expected = backbone.state_dict()
    missing = [key for key in expected if key not in mapped]
    if missing:
        official = [
            re.sub(r"self_attn\.[qkv]_proj\.(weight|bias)", r"self_attn.Wqkv.\1", key)
            for key in missing
        ]
        listed = format_names(dict.fromkeys(official), limit=8)
        msg = (
            f"best_model.pt lacks {len(missing)} encoder weight(s): {listed} (the attention may "
            "also be stored as self_attn.in_proj_weight or self_attn._impl.Wqkv.weight). The "
            "weights do not match args.json, or the file is not an scGPT checkpoint."
        )
        raise ValueError(msg)
    unexpected = [key for key in mapped if key not in expected]
    if unexpected:
        named = format_names([sources[key] for key in unexpected], limit=8)
        msg = f"best_model.pt has encoder key(s) the architecture in args.json does not have: {named}."
        raise ValueError(msg)
    for key, tensor in expected.items():
        if tuple(mapped[key].shape) != tuple(tensor.shape):
            msg = (
                f"best_model.pt key {sources[key]!r} has shape {list(mapped[key].shape)}, but "
                f"args.json implies {list(tensor.shape)}."
            )
            if key == "encoder.embedding.weight":
                msg += (
                    " The number of rows must equal the vocabulary size (vocab.json plus specials)."
                )
            raise ValueError(msg)


def load_scgpt(
    path: str | os.PathLike, *, device: str | torch.device = "auto", strict: bool = True
) -> ScGPTModel:
    """Load a local scGPT checkpoint folder as a frozen, inference-only model.

    Reads ``args.json``, ``vocab.json`` and ``best_model.pt`` (with
    ``weights_only=True``), accepts all three attention-weight layouts
    (flash ``self_attn.Wqkv``, wrapped flash ``self_attn._impl.Wqkv``, PyTorch
    ``self_attn.in_proj_weight``), loads the encoder strictly and reports the
    heads it does not need (``flag_encoder``, ``decoder``, ``mvc_decoder``, ...).
    Nothing is downloaded.

    Parameters
    ----------
    path
        Folder holding ``args.json``, ``vocab.json`` and ``best_model.pt``.
    device
        ``"auto"`` (CUDA, then MPS, then CPU) or a device string.
    strict
        Raise on keys that belong to no known scGPT module (``False`` ignores
        and reports them).

    Returns
    -------
    :class:`~scdlkit.foundation.ScGPTModel` in evaluation mode with every
    parameter frozen; ``model.load_report`` says what was loaded and ignored,
    ``model.identity`` holds the SHA-256 of the weights and the vocabulary.

    Raises
    ------
    FileNotFoundError
        The folder or one of its three files is missing.
    ValueError
        Invalid ``args.json`` / ``vocab.json``, an unreadable weights file,
        missing, unknown or mismatched keys, a shape mismatch (the message
        names the key), or a vocabulary that does not match the embedding.

    Examples
    --------
    >>> import tempfile
    >>> from scdlkit.foundation import load_scgpt
    >>> from scdlkit.foundation.testing import make_tiny_checkpoint
    >>> path = make_tiny_checkpoint(tempfile.mkdtemp(), genes=["CD3E", "MS4A1", "LYZ"])
    >>> model = load_scgpt(path, device="cpu")
    >>> model.supports_training, model.load_report.ignored_modules
    (False, {'flag_encoder': 1, 'decoder': 6, 'mvc_decoder': 3})
    """
    files = checkpoint_files(path)
    config, vocab = read_vocab(path)
    state = read_state_dict(files["best_model.pt"])
    mapped, sources, layouts, ignored = map_state_dict(state, config, strict=strict)
    rows = mapped.get("encoder.embedding.weight")
    if rows is not None and rows.shape[0] != len(vocab):
        added = (
            f" after appending {', '.join(vocab.specials_added)}" if vocab.specials_added else ""
        )
        msg = (
            f"vocab.json has {len(vocab)} tokens{added}, but best_model.pt key "
            f"'encoder.embedding.weight' has {rows.shape[0]} rows. Use the vocab.json that came "
            "with these weights."
        )
        raise ValueError(msg)
    backbone = ScGPTBackbone(config, num_tokens=len(vocab), pad_id=vocab.pad_id)
    _check_against(backbone, mapped, sources)
    backbone.load_state_dict(mapped, strict=True)
    identity = CheckpointIdentity(
        path=str(Path(path).expanduser().resolve()),
        weights_sha256=file_sha256(files["best_model.pt"]),
        vocab_sha256=vocab.sha256,
    )
    report = LoadReport(
        path=identity.path,
        layouts=layouts,
        n_tensors=len(mapped),
        n_parameters=sum(p.numel() for p in backbone.parameters()),
        ignored_keys=tuple(ignored),
        specials_added=vocab.specials_added,
        vocab_size=len(vocab),
    )
    if identity.path not in _NOTIFIED:
        _NOTIFIED.add(identity.path)
        logg.info(report.summary())
    model = ScGPTModel(
        backbone, vocab=vocab, scgpt_config=config, identity=identity, load_report=report
    )
    return model.to(resolve_device(device))
