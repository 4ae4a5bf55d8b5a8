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

    Examples
    --------
    >>> enc = CategoryEncoder(("B", "T"), key="cell_type")
    >>> enc.encode(pd.Series(["T", "B", "T"]))
    array([1, 0, 1])
    >>> enc.decode(np.array([0, 1])).tolist()
    ['B', 'T']
    """

    categories: tuple[str, ...]
    key: str = "labels"

    @classmethod
    def fit(cls, values: pd.Series, *, key: str) -> CategoryEncoder:
        """Learn the categories of ``values``.

        A categorical column keeps its category order (unused categories are
        dropped); anything else is sorted. Missing values are an error.
        """
        _check_no_missing(values, key)
        if isinstance(values.dtype, pd.CategoricalDtype):
            present = set(values.astype(str).unique())
            categories = [str(c) for c in values.cat.categories if str(c) in present]
        else:
            categories = sorted(values.astype(str).unique())
        return cls(tuple(categories), key=key)

    @property
    def n_categories(self) -> int:
        """Number of categories."""
        return len(self.categories)

    def encode(self, values: pd.Series | Sequence[str]) -> np.ndarray:
        """Map values to int64 codes; values not seen when fitting raise a ``ValueError``."""
        values = pd.Series(values)
        _check_no_missing(values, self.key)
        codes = pd.Categorical(values.astype(str), categories=list(self.categories)).codes
        if (codes < 0).any():
            unseen = sorted(set(values.astype(str)[codes < 0]))
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
        return {"key": self.key, "categories": list(self.categories)}

    @classmethod
    def from_dict(cls, payload: dict[str, object]) -> CategoryEncoder:
        """Rebuild an encoder written by :meth:`to_dict`."""
        return cls(tuple(str(c) for c in payload["categories"]), key=str(payload["key"]))


def _check_no_missing(values: pd.Series, key: str) -> None:
    missing = values.isna()
    if missing.any():
        msg = (
            f"{key!r} has {int(missing.sum())} missing values (first at cell "
            f"{values.index[np.argmax(missing.to_numpy())]!r}). Fill them or subset the AnnData "
            "to the cells that have a value."
        )
        raise ValueError(msg)
