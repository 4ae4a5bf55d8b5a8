"""Encode categorical ``.obs`` columns (labels, batches) as integer codes and back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._errors import format_names


@dataclass(frozen=True)
class CategoryEncoder:
    """A fixed, ordered list of categories and the codes ``0..n-1`` that stand for them.

    Plain data (a list of strings), so it goes into JSON and ``.uns`` as is.

    Parameters
    ----------
    categories
        Category names in code order.
    key
        The ``.obs`` column the categories came from (for messages).
    unlabeled
        Semi-supervised labels: the value that marks an unlabelled cell (such
        as ``"Unknown"``). It is not a category; it and missing values encode
        as ``-1``.

    Examples
    --------
    >>> enc = CategoryEncoder(("B", "T"), key="cell_type")
    >>> enc.encode(pd.Series(["T", "B", "T"]))
    array([1, 0, 1])
    >>> enc.decode(np.array([0, 1])).tolist()
    ['B', 'T']
    >>> semi = CategoryEncoder.fit(
    ...     pd.Series(["T", "Unknown", None, "B"]), key="ct", unlabeled="Unknown"
    ... )
    >>> semi.categories, semi.encode(pd.Series(["T", "Unknown", None])).tolist()
    (('B', 'T'), [1, -1, -1])
    """

    categories: tuple[str, ...]
    key: str = "labels"
    unlabeled: str | None = None

    @classmethod
    def fit(cls, values: pd.Series, *, key: str, unlabeled: str | None = None) -> CategoryEncoder:
        """Learn the categories of ``values``.

        A categorical column keeps its category order (unused categories are
        dropped); anything else is sorted. Missing values are an error, unless
        ``unlabeled`` is given: then they and ``unlabeled`` mark unlabelled
        cells and are not categories.

        Raises
        ------
        ValueError
            Missing values without ``unlabeled``, or no labelled cell at all.
        """
        values = pd.Series(values)
        if unlabeled is None:
            _check_no_missing(values, key)
            labelled = values
        else:
            unlabeled = str(unlabeled)
            labelled = values[values.notna() & (values.astype(str) != unlabeled)]
            if labelled.empty:
                msg = (
                    f"{key!r} has no labelled cell: every value is missing or the unlabeled "
                    f"category {unlabeled!r}. Label some cells, or check unlabeled_category."
                )
                raise ValueError(msg)
        if isinstance(values.dtype, pd.CategoricalDtype):
            present = set(labelled.astype(str).unique())
            categories = [str(c) for c in values.cat.categories if str(c) in present]
        else:
            categories = sorted(labelled.astype(str).unique())
        return cls(tuple(categories), key=key, unlabeled=unlabeled)

    @property
    def n_categories(self) -> int:
        """Number of categories."""
        return len(self.categories)

    def encode(self, values: pd.Series | Sequence[str]) -> np.ndarray:
        """Map values to int64 codes; values not seen when fitting raise a ``ValueError``.

        With :attr:`unlabeled`, that value and missing values give ``-1``.
        """
        values = pd.Series(values)
        unlabelled = np.zeros(values.shape[0], dtype=bool)
        if self.unlabeled is None:
            _check_no_missing(values, self.key)
        else:
            unlabelled = (values.isna() | (values.astype(str) == self.unlabeled)).to_numpy()
        codes = pd.Categorical(values.astype(str), categories=list(self.categories)).codes
        codes = np.where(unlabelled, -1, codes)
        if (codes[~unlabelled] < 0).any():
            unseen = sorted(set(values.astype(str)[(codes < 0) & ~unlabelled]))
            msg = (
                f"{self.key!r} has values the model never saw: {format_names(unseen)}. "
                f"Known values: {format_names(self.categories)}."
            )
            raise ValueError(msg)
        return codes.astype(np.int64)

    def decode(self, codes: np.ndarray) -> pd.Categorical:
        """Map codes back to a categorical with the original category names."""
        return pd.Categorical.from_codes(np.asarray(codes, dtype=np.int64), list(self.categories))

    def to_dict(self) -> dict[str, object]:
        """JSON-able form, see :meth:`from_dict`."""
        payload: dict[str, object] = {"key": self.key, "categories": list(self.categories)}
        if self.unlabeled is not None:
            payload["unlabeled"] = self.unlabeled
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, object]) -> CategoryEncoder:
        """Rebuild an encoder written by :meth:`to_dict`."""
        unlabeled = payload.get("unlabeled")
        return cls(
            tuple(str(c) for c in payload["categories"]),
            key=str(payload["key"]),
            unlabeled=None if unlabeled is None else str(unlabeled),
        )

    def extended(self, values: Sequence[str]) -> CategoryEncoder:
        """Return an encoder with the new ``values`` appended (known ones keep their codes).

        Examples
        --------
        >>> CategoryEncoder(("a", "b"), key="batch").extended(["c", "a"]).categories
        ('a', 'b', 'c')
        """
        new = [str(v) for v in dict.fromkeys(values) if str(v) not in self.categories]
        return type(self)((*self.categories, *new), key=self.key, unlabeled=self.unlabeled)


def _check_no_missing(values: pd.Series, key: str) -> None:
    missing = values.isna()
    if missing.any():
        msg = (
            f"{key!r} has {int(missing.sum())} missing values (first at cell "
            f"{values.index[np.argmax(missing.to_numpy())]!r}). Fill them or subset the AnnData "
            "to the cells that have a value."
        )
        raise ValueError(msg)
