"""Integration metrics: the scIB benchmark's bio-conservation and batch-correction scores.

:func:`integration_metrics` scores one embedding as the scib-metrics 0.5
``Benchmarker`` does (its default metrics, neighbour sizes and aggregates;
Luecken et al. 2022, Nat Methods 19:41); :func:`integration_table` puts the
scores of several embeddings side by side, optionally min-max scaled across
them as ``Benchmarker.get_results(min_max_scale=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from ._integration_graph import nearest_neighbors, umap_connectivities
from ._integration_scores import (
    CLUSTERINGS,
    _bras,
    _clisi,
    _codes,
    _graph_connectivity,
    _ilisi,
    _isolated_labels,
    _kbet,
    _label_silhouettes,
    _labels_and_batches,
    _leiden_nmi_ari,
    _pcr_comparison,
    _unintegrated_pcs,
    nmi_ari_cluster_labels,
)
from ._representation import batch_silhouette, knn_accuracy

#: Bio-conservation metrics, in the Benchmarker's column order (KMeans or Leiden NMI/ARI).
BIO_CONSERVATION = (
    "isolated_labels",
    "nmi_ari_cluster_labels_kmeans_nmi",
    "nmi_ari_cluster_labels_kmeans_ari",
    "nmi_ari_cluster_labels_leiden_nmi",
    "nmi_ari_cluster_labels_leiden_ari",
    "silhouette_label",
    "clisi_knn",
)
#: Batch-correction metrics, in the Benchmarker's column order (BRAS or the scIB batch ASW).
BATCH_CORRECTION = (
    "bras",
    "silhouette_batch",
    "ilisi_knn",
    "kbet_per_label",
    "graph_connectivity",
    "pcr_comparison",
)
#: Metric names → the column names of scib-metrics' ``Benchmarker.get_results()``.
SCIB_COLUMNS = {
    "isolated_labels": "Isolated labels",
    "nmi_ari_cluster_labels_kmeans_nmi": "KMeans NMI",
    "nmi_ari_cluster_labels_kmeans_ari": "KMeans ARI",
    "nmi_ari_cluster_labels_leiden_nmi": "Leiden NMI",
    "nmi_ari_cluster_labels_leiden_ari": "Leiden ARI",
    "silhouette_label": "Silhouette label",
    "clisi_knn": "cLISI",
    "bras": "BRAS",
    "silhouette_batch": "Silhouette batch",
    "ilisi_knn": "iLISI",
    "kbet_per_label": "KBET",
    "graph_connectivity": "Graph connectivity",
    "pcr_comparison": "PCR comparison",
    "batch_correction": "Batch correction",
    "bio_conservation": "Bio conservation",
    "total": "Total",
}
#: The Benchmarker's neighbour sizes: graph connectivity and Leiden, kBET, LISI.
BENCHMARKER_NEIGHBORS = (15, 50, 90)
BATCH_ASWS = ("bras", "silhouette_batch")
#: The scIB weights of the total score.
BIO_WEIGHT, BATCH_WEIGHT = 0.6, 0.4


def _aggregates(metrics: Mapping[str, float]) -> dict[str, float]:
    """Bio, batch and total scores: plain means of the metrics present (NaN skipped), 0.6/0.4."""
    bio = pd.Series([metrics[name] for name in BIO_CONSERVATION if name in metrics], dtype=float)
    batch = pd.Series([metrics[name] for name in BATCH_CORRECTION if name in metrics], dtype=float)
    bio_score, batch_score = float(bio.mean()), float(batch.mean())
    return {
        "bio_conservation": bio_score,
        "batch_correction": batch_score,
        "total": BIO_WEIGHT * bio_score + BATCH_WEIGHT * batch_score,
    }


def _neighbor_sizes(n_neighbors: Sequence[int]) -> tuple[int, int, int]:
    sizes = tuple(n_neighbors)
    if len(sizes) != 3 or not all(isinstance(k, int | np.integer) and k >= 2 for k in sizes):
        msg = (
            f"n_neighbors must be three integers >= 2 (graph connectivity/Leiden, kBET, LISI), "
            f"got {n_neighbors!r}; the Benchmarker uses {BENCHMARKER_NEIGHBORS}."
        )
        raise ValueError(msg)
    return int(sizes[0]), int(sizes[1]), int(sizes[2])


def integration_metrics(
    latent: Any,
    labels: Any,
    batches: Any,
    *,
    unintegrated: Any = None,
    n_neighbors: Sequence[int] = BENCHMARKER_NEIGHBORS,
    clustering: Literal["kmeans", "leiden"] = "kmeans",
    batch_asw: Literal["bras", "silhouette_batch"] = "bras",
    kbet: bool = True,
    n_pcs: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Score how well an embedding removes batch effects and keeps cell types (scIB).

    The default metrics of scib-metrics 0.5's ``Benchmarker`` (Luecken et al.
    2022), computed as scib-metrics does but with numpy, scipy, scikit-learn
    and igraph, on one exact nearest-neighbour search of ``max(n_neighbors)``
    neighbours (each cell its own first neighbour), subset to each metric's
    size.

    Parameters
    ----------
    latent
        Embedding to score (cells x dimensions), e.g. ``adata.obsm["X_scdlkit"]``.
    labels
        Cell types of the cells (at least two).
    batches
        Batches (samples, donors, technologies) of the cells (at least two).
    unintegrated
        The data before integration, for ``pcr_comparison``: the normalised
        expression (cells x genes, dense or sparse; reduced to its first
        ``n_pcs`` principal components, as the Benchmarker's ``prepare``
        does) or an embedding with at most ``n_pcs`` columns (e.g.
        ``adata.obsm["X_pca"]``, used as it is). Without it
        ``pcr_comparison`` is NaN and left out of the batch mean.
    n_neighbors
        Neighbours of graph connectivity (and Leiden), kBET and the LISIs.
    clustering
        NMI/ARI from ``"kmeans"`` (the Benchmarker's default) or ``"leiden"``
        (best NMI over resolutions 0.2–2.0); see
        :func:`~scdlkit.evaluation.nmi_ari_cluster_labels`.
    batch_asw
        Batch silhouette of the batch mean: ``"bras"`` (the Benchmarker's
        default since scib-metrics 0.5.6) or ``"silhouette_batch"`` (the
        scIB batch ASW of the paper and of earlier Benchmarkers, computed by
        :func:`~scdlkit.evaluation.batch_silhouette` with labels).
    kbet
        Whether to compute ``kbet_per_label`` (the slowest metric); ``False``
        leaves it NaN and out of the batch mean.
    n_pcs
        Principal components of a wide ``unintegrated``.
    seed
        Seed of k-means, Leiden and the folds of ``knn_accuracy``.

    Returns
    -------
    Dictionary of floats, named as scib-metrics names its results
    (:data:`SCIB_COLUMNS` maps them to the Benchmarker's column titles):

    bio conservation
        ``isolated_labels``, ``nmi_ari_cluster_labels_kmeans_nmi`` and
        ``..._ari`` (or ``..._leiden_...``), ``silhouette_label`` (rescaled
        to [0, 1]), ``clisi_knn``;
    batch correction
        ``bras`` (or ``silhouette_batch``), ``ilisi_knn``, ``kbet_per_label``,
        ``graph_connectivity``, ``pcr_comparison``;
    aggregates
        ``bio_conservation`` and ``batch_correction`` (the plain means of
        their groups, NaN skipped) and ``total`` = 0.6 bio + 0.4 batch,
        unscaled (scores are absolute, as the Benchmarker's default
        ``min_max_scale=False``);
    extras
        ``knn_accuracy`` (cross-validated kNN label accuracy with
        ``n_neighbors[0]`` neighbours, see
        :func:`~scdlkit.evaluation.knn_accuracy`; not part of the aggregates)
        and ``n_cells``.

    Raises
    ------
    ValueError
        Inputs of different lengths, NaN or infinite values, missing labels or
        batches, a single label or batch, unknown ``clustering`` or
        ``batch_asw``, bad ``n_neighbors``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(["T", "B", "NK"], 60)
    >>> batches = np.tile(["a", "b"], 90)
    >>> centers = {"T": [0, 0], "B": [10, 0], "NK": [0, 10]}
    >>> latent = np.array([centers[label] for label in labels]) + rng.normal(size=(180, 2))
    >>> scores = integration_metrics(latent, labels, batches, unintegrated=latent)
    >>> scores["nmi_ari_cluster_labels_kmeans_ari"], round(scores["ilisi_knn"], 2)
    (1.0, 0.96)
    >>> bio, batch = scores["bio_conservation"], scores["batch_correction"]
    >>> bool(np.isclose(scores["total"], 0.6 * bio + 0.4 * batch))
    True
    """
    latent, labels, batches = _labels_and_batches(latent, labels, batches)
    k_graph, k_kbet, k_lisi = _neighbor_sizes(n_neighbors)
    if clustering not in CLUSTERINGS:
        msg = f"Unknown clustering {clustering!r}; use one of {list(CLUSTERINGS)}."
        raise ValueError(msg)
    if batch_asw not in BATCH_ASWS:
        msg = f"Unknown batch_asw {batch_asw!r}; use one of {list(BATCH_ASWS)}."
        raise ValueError(msg)
    pcs = None if unintegrated is None else _unintegrated_pcs(unintegrated, latent.shape[0], n_pcs)
    indices, distances = nearest_neighbors(latent, max(k_graph, k_kbet, k_lisi))
    graph = indices[:, :k_graph], distances[:, :k_graph]
    silhouettes = _label_silhouettes(latent, labels)

    metrics: dict[str, Any] = {
        "isolated_labels": _isolated_labels(silhouettes, labels, batches, None)
    }
    if clustering == "leiden":
        clusters = _leiden_nmi_ari(umap_connectivities(*graph), labels, seed)
    else:
        clusters = nmi_ari_cluster_labels(latent, labels, method="kmeans", seed=seed)
    metrics[f"nmi_ari_cluster_labels_{clustering}_nmi"] = clusters["nmi"]
    metrics[f"nmi_ari_cluster_labels_{clustering}_ari"] = clusters["ari"]
    metrics["silhouette_label"] = float((np.mean(silhouettes) + 1.0) / 2.0)
    metrics["clisi_knn"] = _clisi(indices[:, :k_lisi], distances[:, :k_lisi], labels)

    if batch_asw == "bras":
        metrics["bras"] = _bras(latent, labels, batches)
    else:
        metrics["silhouette_batch"] = batch_silhouette(latent, batches, labels)
    metrics["ilisi_knn"] = _ilisi(indices[:, :k_lisi], distances[:, :k_lisi], batches)
    metrics["kbet_per_label"] = (
        _kbet(
            umap_connectivities(indices[:, :k_kbet], distances[:, :k_kbet]),
            labels,
            batches,
            alpha=0.05,
            diffusion_n_comps=100,
        )
        if kbet
        else float("nan")
    )
    metrics["graph_connectivity"] = _graph_connectivity(graph[0], labels)
    metrics["pcr_comparison"] = (
        float("nan") if pcs is None else _pcr_comparison(pcs, latent, _codes(batches))
    )
    metrics.update(_aggregates(metrics))
    metrics["knn_accuracy"] = knn_accuracy(latent, labels, n_neighbors=k_graph, seed=seed)
    metrics["n_cells"] = int(latent.shape[0])
    return metrics


def integration_table(
    scores: Mapping[str, Mapping[str, Any]],
    *,
    min_max_scale: bool = False,
    clean_names: bool = True,
) -> pd.DataFrame:
    """Put the integration scores of several embeddings side by side, as the Benchmarker's table.

    Parameters
    ----------
    scores
        Embedding name → the dictionary :func:`integration_metrics` returned.
    min_max_scale
        Scale every metric to [0, 1] across the embeddings (``(x - min) /
        (max - min)``, 0 where all are equal) before the aggregates are
        recomputed, as ``Benchmarker.get_results(min_max_scale=True)`` and the
        scIB paper's figures do. Scaled scores rank the embeddings of this
        table only; the default keeps the absolute scores.
    clean_names
        Use the Benchmarker's column titles (``"KMeans NMI"``, ``"Total"``, ...).

    Returns
    -------
    One row per embedding: the scIB metrics present (in the Benchmarker's
    order), then ``bio_conservation``, ``batch_correction`` and ``total``
    recomputed from them. Extras such as ``knn_accuracy`` are left out.

    Examples
    --------
    >>> table = integration_table(
    ...     {
    ...         "pca": {"silhouette_label": 0.6, "ilisi_knn": 0.1},
    ...         "vae": {"silhouette_label": 0.5, "ilisi_knn": 0.3},
    ...     }
    ... )
    >>> table["Total"].round(2).to_dict()
    {'pca': 0.4, 'vae': 0.42}
    """
    if not scores:
        msg = "scores is empty; pass {embedding name: integration_metrics(...)}."
        raise ValueError(msg)
    frame = pd.DataFrame.from_dict(
        {str(name): dict(values) for name, values in scores.items()}, orient="index"
    )
    columns = [name for name in (*BIO_CONSERVATION, *BATCH_CORRECTION) if name in frame.columns]
    if not columns:
        msg = (
            "scores hold no integration metric; pass the dictionaries integration_metrics "
            f"returns (metrics such as {list(BIO_CONSERVATION[:2])})."
        )
        raise ValueError(msg)
    frame = frame[columns].astype(float)
    if min_max_scale:
        low, span = frame.min(), frame.max() - frame.min()
        frame = (frame - low) / span.where(span > 0, 1.0)
    aggregates = pd.DataFrame([_aggregates(row) for _, row in frame.iterrows()], index=frame.index)
    table = pd.concat([frame, aggregates], axis=1)
    table.index.name = "Embedding"
    return table.rename(columns=SCIB_COLUMNS) if clean_names else table
