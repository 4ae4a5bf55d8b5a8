"""``scdlkit.tl.join_latents``: reference and mapped query cells in one AnnData, for a joint UMAP."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import MissingKeyError
from ..data.record import latent_key


def _latent(adata: AnnData, key: str, role: str) -> np.ndarray:
    name = latent_key(key)
    if name not in adata.obsm:
        how = (
            f"scdlkit.tl.predict(reference, key={key!r})"
            if role == "reference"
            else f"scdlkit.tl.map_query(query, reference, key_added={key!r})"
        )
        msg = f"The {role} has no latent space .obsm[{name!r}]; write it with {how} first."
        raise MissingKeyError(msg)
    return np.asarray(adata.obsm[name], dtype=np.float32)


def join_latents(
    reference: AnnData,
    query: AnnData,
    *,
    key: str = "scdlkit",
    query_key: str | None = None,
    label_key: str | None = None,
    batch_key: str | None = None,
) -> AnnData:
    """Put the reference's and the mapped query's cells in one AnnData, with their shared latent space.

    For a joint neighbour graph and UMAP (``sc.pp.neighbors(joint,
    use_rep=f"X_{key}")``), coloured by where cells come from and by their labels.

    Parameters
    ----------
    reference
        The reference AnnData with its latent space ``.obsm[f"X_{key}"]``
        (from :func:`~scdlkit.tl.predict`).
    query
        The query AnnData after :func:`~scdlkit.tl.map_query`.
    key
        Prefix of the reference's latent space.
    query_key
        Prefix the query was mapped under (``key_added`` of ``map_query``; defaults to ``key``).
    label_key
        The reference's label column: the joint ``label`` column holds it for
        reference cells and the transferred prediction
        ``.obs[f"{query_key}_prediction"]`` for query cells.
    batch_key
        A batch column both objects have, copied to the joint ``batch`` column.

    Returns
    -------
    A new AnnData (no genes) with ``.obsm[f"X_{key}"]`` (reference cells first),
    ``.obs["source"]`` (``"reference"``/``"query"``), and ``label``/``batch`` when asked.
    Cell names that occur in both get ``-reference``/``-query`` suffixes.

    Raises
    ------
    MissingKeyError
        A latent space, label, prediction or batch column is missing.
    ValueError
        Latent spaces of different widths (not the same model).

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> ref = ad.AnnData(obsm={"X_scdlkit": np.zeros((3, 2))})
    >>> query = ad.AnnData(obsm={"X_scdlkit": np.ones((2, 2))})
    >>> joint = join_latents(ref, query)
    >>> joint.obs["source"].tolist(), joint.obsm["X_scdlkit"].shape
    (['reference', 'reference', 'reference', 'query', 'query'], (5, 2))
    """
    query_key = query_key or key
    latents = [_latent(reference, key, "reference"), _latent(query, query_key, "query")]
    if latents[0].shape[1] != latents[1].shape[1]:
        msg = (
            f"The reference latent has {latents[0].shape[1]} dimensions, the query's "
            f"{latents[1].shape[1]}: the query was not mapped onto this reference."
        )
        raise ValueError(msg)
    names = [pd.Index(reference.obs_names), pd.Index(query.obs_names)]
    if names[0].intersection(names[1]).size:
        names = [names[0] + "-reference", names[1] + "-query"]
    obs = pd.DataFrame(index=names[0].append(names[1]))
    sizes = [reference.n_obs, query.n_obs]
    obs["source"] = pd.Categorical(
        np.repeat(["reference", "query"], sizes), categories=["reference", "query"]
    )
    columns = {}
    if label_key is not None:
        columns["label"] = (label_key, f"{query_key}_prediction")
    if batch_key is not None:
        columns["batch"] = (batch_key, batch_key)
    for name, (ref_column, query_column) in columns.items():
        values = []
        for adata, column, role in (
            (reference, ref_column, "reference"),
            (query, query_column, "query"),
        ):
            if column not in adata.obs:
                msg = f"The {role} has no .obs[{column!r}] for the joint {name!r} column."
                raise MissingKeyError(msg)
            values.append(adata.obs[column].astype(str).to_numpy())
        obs[name] = pd.Categorical(np.concatenate(values))
    return AnnData(obs=obs, obsm={latent_key(key): np.concatenate(latents)})
