"""The plot methods of :class:`~scdlkit.TaskRunner`, drawn by the ``pl`` functions.

The ``pl`` functions read a run record from an AnnData; the runner hands them a
small AnnData that holds its outputs and its run record (the record
:func:`scdlkit.tl.fit` writes, built by the pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from .._errors import format_names
from .._threads import keep_torch_threads
from .._uns import h5ad_safe
from ..data import SplitData, get_obs_column, resolve_fields
from ..data.transform import fit_block_rows, iter_selected_rows
from ._scoring import class_predictions, held_out
from ._state import FittedState

#: Key of the run record the runner hands to the ``pl`` functions.
KEY = "TaskRunner"
LATENT_METHODS = ("umap", "tsne", "pca", "latent")


class RunnerPlots(FittedState):
    """Plot methods of :class:`~scdlkit.TaskRunner`, drawn from its fitted state."""

    def _holder(self, obs_names: pd.Index, **slots: Any) -> AnnData:
        """Return an AnnData of ``obs_names`` that holds the run record under :data:`KEY`."""
        holder = AnnData(obs=pd.DataFrame(index=pd.Index(obs_names).astype(str)), **slots)
        holder.uns[KEY] = h5ad_safe(self._record())
        return holder

    def _plot_cells(self, adata: AnnData | MuData | None) -> tuple[AnnData | MuData, SplitData]:
        """Return the data and cells a plot shows: the given ``adata``, else the fitted data's held-out cells."""
        if adata is not None:
            return adata, self._query(adata)
        if self.prepared_ is None or self._adata is None:
            msg = "This runner was loaded from disk and keeps no data; pass adata= to plot."
            raise ValueError(msg)
        return self._adata, held_out(self.prepared_)[0]

    def plot_losses(self, *, components: bool = False, **kwargs: Any) -> Any:
        """Training and validation loss per epoch (:func:`scdlkit.pl.history`).

        ``kwargs`` go to :func:`scdlkit.pl.history` (``log_y``, ``ax``, ``show``,
        ``save``, ``return_fig``).
        """
        from ..pl import history

        self._check_fitted("plot_losses()")
        return history(self._holder(pd.Index([])), key=KEY, components=components, **kwargs)

    def plot_latent(
        self,
        adata: AnnData | MuData | None = None,
        *,
        method: Literal["umap", "tsne", "pca", "latent"] = "umap",
        color: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Plot the latent space of every cell of ``adata`` (default: the fitted data).

        Parameters
        ----------
        adata
            Cells to embed; defaults to all cells the runner was fitted on.
        method
            ``"umap"`` (:func:`scanpy.tl.umap` on a neighbour graph of the latent),
            ``"tsne"``, ``"pca"`` (of the latent) or ``"latent"`` (its first two dimensions).
        color
            ``.obs`` columns to colour by; defaults to ``label_key`` and ``batch_key``.
        **kwargs
            Passed to the scanpy plot function (``show``, ``return_fig``, ``save``, ...).
        """
        import scanpy as sc

        self._check_fitted("plot_latent()")
        if method not in LATENT_METHODS:
            msg = f"Unknown method {method!r}; use one of {format_names(LATENT_METHODS)}."
            raise ValueError(msg)
        data = self._adata if adata is None else adata
        if data is None:
            msg = "This runner was loaded from disk and keeps no data; pass adata= to plot."
            raise ValueError(msg)
        query = self._query(data)
        latent = self._outputs(query, needed=("latent",))["latent"]
        holder = self._holder(query.obs_names, X=latent)
        holder.obsm["X_latent"] = latent
        names = [color] if isinstance(color, str) else list(color or [])
        if color is None:
            names = [key for key in (self.label_key, self.batch_key) if key is not None]
        mod = self._bundle.preprocessing.get("mod")
        for name in names:
            holder.obs[name] = get_obs_column(data, name, query.obs_names, mod=mod).values
        options = {"color": names or None, **kwargs}
        if method == "latent":
            return sc.pl.embedding(holder, basis="latent", **options)
        if method == "pca":
            sc.pp.pca(holder, n_comps=min(2, latent.shape[1]), random_state=self.seed)
            return sc.pl.pca(holder, **options)
        if method == "tsne":
            sc.tl.tsne(holder, use_rep="X_latent", random_state=self.seed)
            return sc.pl.tsne(holder, **options)
        with keep_torch_threads():
            sc.pp.neighbors(holder, use_rep="X_latent", random_state=self.seed)
            sc.tl.umap(holder, random_state=self.seed)
        return sc.pl.umap(holder, **options)

    def plot_reconstruction(
        self,
        adata: AnnData | MuData | None = None,
        *,
        genes: str | Sequence[str] | None = None,
        n_genes: int = 4,
        **kwargs: Any,
    ) -> Any:
        """Observed against reconstructed values per gene (:func:`scdlkit.pl.reconstruction`).

        Parameters
        ----------
        adata
            Cells to show (all of them); defaults to the fitted data's test cells.
        genes
            Genes to show (model features); defaults to the ``n_genes`` most
            variable ones among the shown cells.
        n_genes
            How many genes to pick when ``genes`` is not given.
        **kwargs
            Passed to :func:`scdlkit.pl.reconstruction` (``ncols``, ``show``, ``return_fig``, ...).

        Raises
        ------
        ValueError
            The runner trains a classifier, or several modalities were used side by side.
        """
        from ..pl import reconstruction

        self._check_fitted("plot_reconstruction()")
        self._check_reconstructs("plot_reconstruction()")
        preprocessing = self._bundle.preprocessing
        mod = preprocessing.get("mod")
        if mod is not None and not isinstance(mod, str):
            msg = (
                "plot_reconstruction() shows one modality; for several use scdlkit.tl.fit, "
                "scdlkit.tl.predict and scdlkit.pl.reconstruction on the MuData."
            )
            raise ValueError(msg)
        data, cells = self._plot_cells(adata)
        outputs = self._outputs(cells, needed=("reconstruction",), include_inputs=True)
        features = [str(name) for name in preprocessing["feature_names"]]
        if genes is None:
            order = np.argsort(-outputs["x"].var(axis=0), kind="stable")[: max(1, int(n_genes))]
            genes = [features[i] for i in order]
        fields = resolve_fields(
            data,
            layer=preprocessing.get("layer"),
            mod=mod,
            use_raw=bool(preprocessing.get("use_raw")),
        )
        order = np.argsort(cells.rows, kind="stable")
        blocks = [
            block[local]
            for _, block, local in iter_selected_rows(
                fields.matrix, cells.rows[order], block_rows=fit_block_rows(fields.matrix.shape[1])
            )
        ]
        observed = _stack(blocks)[np.argsort(order, kind="stable")]
        holder = self._holder(
            fields.obs_names[cells.rows],
            var=pd.DataFrame(index=fields.feature_names.astype(str)),
            layers={"observed": observed},
        )
        holder.obsm[f"{KEY}_reconstruction"] = outputs["reconstruction"]
        holder.uns[KEY]["reconstruction_features"] = np.asarray(features, dtype=object)
        return reconstruction(holder, genes=genes, key=KEY, layer="observed", **kwargs)

    def plot_confusion_matrix(
        self,
        adata: AnnData | MuData | None = None,
        *,
        normalize: Literal["true", "pred"] | None = "true",
        **kwargs: Any,
    ) -> Any:
        """Confusion matrix of the predictions (:func:`scdlkit.pl.confusion`).

        Parameters
        ----------
        adata
            Cells to show (all of them, with labels in ``label_key``); defaults to
            the fitted data's test cells.
        normalize
            ``"true"`` (rows sum to 1), ``"pred"`` (columns sum to 1) or ``None`` (counts).
        **kwargs
            Passed to :func:`scdlkit.pl.confusion` (``ax``, ``cmap``, ``show``, ``return_fig``, ...).

        Raises
        ------
        ValueError
            The runner does not train a classifier.
        """
        from ..pl import confusion

        self._check_fitted("plot_confusion_matrix()")
        self._check_classifies("plot_confusion_matrix()")
        data, cells = self._plot_cells(adata)
        logits = self._outputs(cells, needed=("logits",))["logits"]
        holder = self._holder(cells.obs_names)
        holder.obs[f"{KEY}_prediction"] = class_predictions(logits, self.classes_)[1]
        truth = self._obs(data, self.label_key, cells.obs_names)
        if truth is not None:
            holder.obs[self.label_key] = truth
        return confusion(holder, key=KEY, normalize=normalize, **kwargs)


def _stack(blocks: list[Any]) -> Any:
    import scipy.sparse as sp

    if any(sp.issparse(block) for block in blocks):
        return sp.vstack([sp.csr_matrix(block) for block in blocks], format="csr")
    return np.concatenate([np.asarray(block) for block in blocks])
