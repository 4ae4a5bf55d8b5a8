"""One small object that lets every front read from and write to AnnData or MuData.

Writes are staged and applied together by :meth:`DataHandler.commit`, after
everything that can fail has run, so an error never leaves half-written keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg

from .._uns import h5ad_safe
from .fields import ModSpec, resolve_target
from .record import OWNED_KEYS, SPLIT_KEY


def check_writable(data: AnnData | MuData) -> None:
    """Refuse AnnData views: writing into them would silently copy or fail."""
    views = [data] + (list(data.mod.values()) if isinstance(data, MuData) else [])
    if any(isinstance(item, AnnData) and item.is_view for item in views):
        msg = (
            "adata is a view of another AnnData; scdlkit writes results into it. Make it an "
            "independent object first: adata = adata.copy()."
        )
        raise ValueError(msg)


@dataclass
class DataHandler:
    """Where results of one call go, and the writes staged for them.

    Parameters
    ----------
    data
        The AnnData or MuData the user passed.
    mod
        Modality spec (see :func:`scdlkit.data.resolve_fields`).
    """

    data: AnnData | MuData
    mod: ModSpec = None
    _staged: list[tuple[str, str, Any]] = field(default_factory=list, init=False)

    @property
    def target(self) -> AnnData | MuData:
        """The object results go into: the AnnData, the modality, or the MuData for several."""
        return resolve_target(self.data, self.mod)

    @property
    def single_modality(self) -> str | None:
        """The modality name when results go into one modality of a MuData."""
        if isinstance(self.data, MuData) and isinstance(self.target, AnnData):
            return self.mod if isinstance(self.mod, str) else list(self.mod)[0]
        return None

    def stage(self, slot: str, name: str, value: Any) -> None:
        """Stage ``value`` for ``target.<slot>[name]`` (slot: obs, obsm, layers, uns)."""
        if slot == "uns":
            value = h5ad_safe(value, where=f".uns[{name!r}]")
        self._staged.append((slot, name, value))

    def clear_previous(self, key: str, *, include_split: bool = False) -> list[str]:
        """Stage removal of every key an earlier run under ``key`` wrote; return what exists.

        ``include_split`` also removes ``.obs[f"{key}_split"]`` (a new ``fit`` does,
        ``predict`` does not).
        """
        target = self.target
        existing = []
        for slot, patterns in OWNED_KEYS.items():
            store = getattr(target, slot, None)
            if store is None:  # a MuData has no .layers
                continue
            for pattern in patterns:
                if pattern == SPLIT_KEY and not include_split:
                    continue
                name = pattern.format(key=key)
                if name in (store.columns if slot == "obs" else store):
                    existing.append(f"{slot}[{name!r}]")
                    self._staged.append((slot, name, None))
        return existing

    def commit(self) -> None:
        """Apply the staged writes (a ``None`` value deletes the key)."""
        target = self.target
        modality = self.single_modality
        for slot, name, value in self._staged:
            store = getattr(target, slot)
            if value is None:
                if slot == "obs":
                    target.obs.drop(columns=name, inplace=True)
                    if modality is not None:
                        self.data.obs.drop(
                            columns=f"{modality}:{name}", inplace=True, errors="ignore"
                        )
                else:
                    del store[name]
                continue
            if slot == "obs" and isinstance(value, pd.Series):
                value = value.reindex(target.obs_names)
            store[name] = value
            if slot == "obs" and modality is not None:
                self._mirror_obs(modality, name, target.obs[name])
        self._staged.clear()

    def _mirror_obs(self, modality: str, name: str, column: pd.Series) -> None:
        """Copy a modality's ``.obs`` column to ``mdata.obs[f"{mod}:{name}"]`` (not via update())."""
        mirrored = column.reindex(self.data.obs_names)
        if isinstance(column.dtype, pd.CategoricalDtype):
            mirrored = pd.Categorical(mirrored, categories=column.cat.categories)
        self.data.obs[f"{modality}:{name}"] = (
            np.asarray(mirrored) if not isinstance(mirrored, pd.Categorical) else mirrored
        )

    def log_overwrite(self, key: str, existing: list[str]) -> None:
        """Tell the user that a previous run's results under ``key`` are replaced."""
        if existing:
            logg.warning(
                f"overwriting the results of an earlier scdlkit run under key {key!r}: {', '.join(existing)}"
            )
