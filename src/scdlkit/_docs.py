"""Shared docstring fragments, injected with :func:`doc_params` (as scanpy does)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

doc_adata = """\
adata
    AnnData or MuData with cells as rows."""

doc_mod = """\
mod
    For a MuData: the modality to read and write (``"rna"``), or a list of
    modalities used side by side (results then go into the MuData itself)."""

doc_layer = """\
layer
    Layer holding the expression values; ``None`` uses ``.X``."""

doc_key_added = """\
key_added
    Prefix of every key written (``.obsm[f"X_{key_added}"]``, ``.uns[key_added]``, ...)."""

doc_copy = """\
copy
    Return a modified copy instead of writing into ``adata``."""


def doc_params(**fragments: str) -> Callable[[F], F]:
    """Replace ``{name}`` placeholders of a docstring with shared fragments.

    Only the named placeholders are touched, so other braces in the docstring
    (``.obsm[f"X_{key}"]``) stay as they are.
    """

    def decorate(function: F) -> F:
        text = function.__doc__ or ""
        for name, fragment in fragments.items():
            pattern = re.compile(r"^([ \t]*)\{" + re.escape(name) + r"\}", flags=re.MULTILINE)
            text = pattern.sub(lambda match, f=fragment: textwrap.indent(f, match.group(1)), text)
        function.__doc__ = text
        return function

    return decorate
