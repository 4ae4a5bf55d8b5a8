"""Exceptions and message helpers shared by every layer."""

from __future__ import annotations

from collections.abc import Iterable


class MissingKeyError(KeyError):
    """A key (layer, modality, ``.obs`` column, ...) that the user named does not exist.

    Subclasses :class:`KeyError` so ``except KeyError`` keeps working, but prints
    its message as plain text instead of a quoted ``repr``.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def format_names(names: Iterable[object], *, limit: int = 20) -> str:
    """Format names for an error message: quoted, comma-separated, truncated after ``limit``.

    Parameters
    ----------
    names
        The names to list.
    limit
        How many to show before summarising the rest as ``... (N more)``.

    Returns
    -------
    A string such as ``"'a', 'b', ... (3 more)"`` or ``"none"`` for an empty input.

    Examples
    --------
    >>> format_names(["counts", "spliced"])
    "'counts', 'spliced'"
    """
    names = [str(name) for name in names]
    if not names:
        return "none"
    shown = ", ".join(repr(name) for name in names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown
