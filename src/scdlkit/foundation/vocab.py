"""``GeneVocab``: gene symbol to token id, read from a checkpoint's ``vocab.json``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import format_names
from ._hashing import file_sha256

#: Special tokens every official loader appends, in this order, when absent.
SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")


class GeneVocab:
    """The token vocabulary of an scGPT checkpoint.

    Tokens are case-sensitive HGNC gene symbols plus the special tokens
    ``<pad>``, ``<cls>`` and ``<eoc>``; ids are ``0..n - 1``.

    Parameters
    ----------
    tokens
        Token to id; the ids must be exactly ``0..len(tokens) - 1``.
    pad_token
        The padding token (added when absent, like every special token).
    sha256
        SHA-256 of the file the vocabulary was read from (empty when built in memory).

    Attributes
    ----------
    specials_added
        Special tokens that were not in ``tokens`` and were appended.

    Examples
    --------
    >>> vocab = GeneVocab({"CD3E": 0, "MS4A1": 1})
    >>> len(vocab), vocab.pad_id, vocab.cls_id
    (5, 2, 3)
    >>> vocab.lookup(["MS4A1", "unknown", "CD3E"]).tolist()
    [1, -1, 0]
    """

    def __init__(
        self, tokens: Mapping[str, int], *, pad_token: str = "<pad>", sha256: str = ""
    ) -> None:
        ordered = _ordered_tokens(tokens)
        specials = tuple(dict.fromkeys((pad_token, *SPECIAL_TOKENS)))
        present = set(ordered)
        self.specials_added = tuple(token for token in specials if token not in present)
        ordered.extend(self.specials_added)
        self._index = pd.Index(ordered, dtype=object)
        self.pad_token = pad_token
        self.pad_id = int(self._index.get_loc(pad_token))
        self.cls_id = int(self._index.get_loc("<cls>"))
        self.special_ids = frozenset(int(self._index.get_loc(token)) for token in specials)
        self.sha256 = sha256

    @classmethod
    def from_file(cls, path: str | Path, *, pad_token: str = "<pad>") -> GeneVocab:
        """Read ``vocab.json`` (a JSON object mapping token to integer id).

        Raises
        ------
        ValueError
            Not valid JSON, not an object, or ids that are not integers
            ``0..n - 1`` (the message names an offending token).
        """
        path = Path(path)
        try:
            tokens = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            msg = f"{path} is not valid JSON: {error}."
            raise ValueError(msg) from error
        if not isinstance(tokens, dict):
            msg = f"{path} must hold a JSON object mapping gene symbol to id, got {type(tokens).__name__}."
            raise ValueError(msg)
        try:
            return cls(tokens, pad_token=pad_token, sha256=file_sha256(path))
        except ValueError as error:
            msg = f"{path}: {error}"
            raise ValueError(msg) from error

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __repr__(self) -> str:
        return f"GeneVocab({len(self)} tokens, pad_id={self.pad_id}, cls_id={self.cls_id})"

    @property
    def tokens(self) -> pd.Index:
        """All tokens in id order."""
        return self._index

    def lookup(self, names: Iterable[str]) -> np.ndarray:
        """Token ids of ``names`` (exact, case-sensitive); ``-1`` where a name is not a gene token.

        Special tokens are never matched, so a gene column called ``"<pad>"``
        does not become padding.
        """
        names = pd.Index(list(names), dtype=object)
        ids = self._index.get_indexer(names).astype(np.int64)
        if self.special_ids:
            ids[np.isin(ids, list(self.special_ids))] = -1
        return ids


def _ordered_tokens(tokens: Mapping[str, int]) -> list[str]:
    items = list(tokens.items())
    bad = [
        token
        for token, index in items
        if not isinstance(token, str) or isinstance(index, bool) or not isinstance(index, int)
    ]
    if bad:
        msg = f"ids must be integers and tokens strings; offending token(s): {format_names(bad, limit=5)}."
        raise ValueError(msg)
    ids = np.fromiter((index for _, index in items), dtype=np.int64, count=len(items))
    order = np.argsort(ids, kind="stable")
    expected = np.arange(len(items))
    if not np.array_equal(ids[order], expected):
        position = int(np.argmax(ids[order] != expected))
        token = items[order[position]][0]
        msg = (
            f"ids must be consecutive integers 0..{len(items) - 1}; token {token!r} has id "
            f"{int(ids[order][position])} where {position} was expected (duplicate or missing ids)."
        )
        raise ValueError(msg)
    ordered: Sequence[str] = [items[i][0] for i in order]
    return list(ordered)
