"""What a loaded scGPT checkpoint is (folder and hashes) and what loading it found.

These plain records are shared by the loader (``checkpoint.py``), the model
(``model.py``) and saved annotation runners (``persistence.py``); they live here
so that none of those modules has to import another to name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Licence notice, logged once per checkpoint and shown in every load report.
NOTICE = (
    "scdlkit does not distribute or download scGPT weights; you are responsible for complying "
    "with the terms under which you obtained this checkpoint."
)


@dataclass(frozen=True)
class CheckpointIdentity:
    """Which base checkpoint a result came from: folder and SHA-256 of weights and vocabulary.

    Examples
    --------
    >>> identity = CheckpointIdentity("/ckpt", "ab" * 32, "cd" * 32)
    >>> sorted(identity.to_dict())
    ['path', 'vocab_sha256', 'weights_sha256']
    """

    path: str
    weights_sha256: str
    vocab_sha256: str

    def to_dict(self) -> dict[str, str]:
        """JSON-able form."""
        return {
            "path": self.path,
            "weights_sha256": self.weights_sha256,
            "vocab_sha256": self.vocab_sha256,
        }


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_scgpt` found in a checkpoint.

    Attributes
    ----------
    path
        The checkpoint folder.
    layouts
        Attention-weight layouts found: ``"flash"`` (``self_attn.Wqkv``),
        ``"flash_wrapped"`` (``self_attn._impl.Wqkv``) and/or ``"pytorch"``
        (``self_attn.in_proj_weight``).
    n_tensors
        Tensors loaded into the encoder.
    n_parameters
        Parameters of the encoder.
    ignored_keys
        Keys of ``best_model.pt`` that were not loaded (decoder heads,
        ``flag_encoder``, ...; unknown keys too with ``strict=False``).
    specials_added
        Special tokens appended to the vocabulary because ``vocab.json`` lacked them.
    vocab_size
        Tokens in the vocabulary (equal to the embedding rows).
    notice
        The licence notice.
    """

    path: str
    layouts: tuple[str, ...]
    n_tensors: int
    n_parameters: int
    ignored_keys: tuple[str, ...]
    specials_added: tuple[str, ...]
    vocab_size: int
    notice: str = field(default=NOTICE, repr=False)

    @property
    def ignored_modules(self) -> dict[str, int]:
        """Ignored keys counted per top-level module (``{"mvc_decoder": 3, ...}``)."""
        counts: dict[str, int] = {}
        for key in self.ignored_keys:
            module = key.split(".", 1)[0]
            counts[module] = counts.get(module, 0) + 1
        return counts

    def summary(self) -> str:
        """One paragraph for logs."""
        ignored = (
            ", ".join(f"{name} ({n})" for name, n in self.ignored_modules.items()) or "nothing"
        )
        return (
            f"loaded {self.n_tensors} tensors ({self.n_parameters:,} parameters, attention layout "
            f"{'/'.join(self.layouts)}) from {self.path}; vocabulary of {self.vocab_size} tokens"
            f"{' (appended ' + ', '.join(self.specials_added) + ')' if self.specials_added else ''}; "
            f"ignored {ignored}. {self.notice}"
        )
