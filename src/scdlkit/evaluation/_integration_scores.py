"""The single integration metrics of the scIB benchmark, as scib-metrics 0.5 implements them.

The metrics of Luecken et al. (2022, Nat Methods 19:41) with numpy, scipy,
scikit-learn and igraph (no JAX); the neighbour graphs are built in
``_integration_graph`` and the metrics are combined in ``_integration``.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._threads import keep_torch_threads
from ._checks import as_labels, as_matrix
from ._integration_graph import (
    kbet_scores,
    knn_adjacency,
    lisi,
    nearest_neighbors,
    umap_connectivities,
)
from ._representation import cluster_labels

CLUSTERINGS = ("kmeans", "leiden")


def _labels_and_batches(
    latent: Any, labels: Any, batches: Any = None, *, min_labels: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Check latent, labels and batches: finite, one entry per cell, enough categories.

    Label silhouettes and clusterings need ``min_labels=2`` labels and more
    cells than labels; the per-label batch metrics accept one label. Batches,
    when given, need two categories.
    """
    latent = as_matrix(latent, name="latent")
    n_cells = latent.shape[0]
    labels = as_labels(labels, name="labels", n_cells=n_cells)
    categories = np.unique(labels)
    if categories.shape[0] < min_labels:
        msg = (
            f"labels has a single category ({str(categories[0])!r}); label metrics compare at "
            "least two labels (cell types)."
        )
        raise ValueError(msg)
    if min_labels > 1 and n_cells <= categories.shape[0]:
        msg = (
            f"latent has {n_cells} cells for {categories.shape[0]} labels; silhouettes need more "
            "cells than labels."
        )
        raise ValueError(msg)
    return latent, labels, None if batches is None else _batches(batches, n_cells)


def _batches(values: Any, n_cells: int) -> np.ndarray:
    """Check batches: one entry per cell, no missing values, two categories or more."""
    batches = as_labels(values, name="batches", n_cells=n_cells)
    categories = np.unique(batches)
    if categories.shape[0] < 2:
        msg = (
            f"batches has a single category ({str(categories[0])!r}); batch-correction metrics "
            "need at least two batches. Score single-batch data with representation_metrics."
        )
        raise ValueError(msg)
    return batches


def _codes(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1].ravel()


def _label_silhouettes(latent: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from sklearn.metrics import silhouette_samples

    return silhouette_samples(latent, labels)


def _isolated_labels(
    silhouettes: np.ndarray, labels: np.ndarray, batches: np.ndarray, iso_threshold: int | None
) -> float:
    pairs = pd.DataFrame({"label": labels, "batch": batches}).drop_duplicates()
    batches_per_label = pairs.groupby("label")["batch"].count()
    threshold = batches_per_label.min() if iso_threshold is None else iso_threshold
    isolated = batches_per_label.index[batches_per_label <= threshold]
    if isolated.shape[0] == 0:
        return float("nan")
    rescaled = (silhouettes + 1.0) / 2.0
    return float(np.mean([rescaled[labels == label].mean() for label in isolated]))


def _leiden_nmi_ari(
    connectivities: sp.csr_matrix, labels: np.ndarray, seed: int
) -> dict[str, float]:
    import random

    import igraph
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    best: dict[str, float] = {}
    for resolution in [2 * x / 10 for x in range(1, 11)]:
        graph = igraph.Graph.Weighted_Adjacency(connectivities, mode="directed")
        graph.to_undirected(mode="each")
        igraph.set_random_number_generator(random.Random(seed))
        try:
            clusters = graph.community_leiden(
                objective_function="modularity", weights="weight", resolution=resolution
            ).membership
        finally:
            igraph.set_random_number_generator(random)
        nmi = float(normalized_mutual_info_score(labels, clusters))
        if not best or nmi > best["nmi"]:
            best = {"nmi": nmi, "ari": float(adjusted_rand_score(labels, clusters))}
    return best


def _graph_connectivity(indices: np.ndarray, labels: np.ndarray) -> float:
    from scipy.sparse.csgraph import connected_components

    graph = knn_adjacency(indices)
    shares = []
    for label in np.unique(labels):
        mask = labels == label
        _, pieces = connected_components(graph[mask][:, mask], connection="strong")
        shares.append(np.bincount(pieces).max() / mask.sum())
    return float(np.mean(shares))


def _batch_variance_share(matrix: np.ndarray, codes: np.ndarray) -> float:
    """Variance of ``matrix`` explained by the batches (scib-metrics' PCR with every component).

    Regressing every principal component on the one-hot batches and weighting
    the R² by the components' variances sums to the between-batch share of the
    total variance, which is what this returns.
    """
    centered = matrix - matrix.mean(axis=0)
    total = float(np.square(centered).sum())
    sums = np.zeros((int(codes.max()) + 1, matrix.shape[1]))
    np.add.at(sums, codes, centered)
    between = float((np.square(sums).sum(axis=1) / np.bincount(codes)).sum())
    return between / total if total > 0 else float("nan")


def _unintegrated_pcs(unintegrated: Any, n_cells: int, n_pcs: int) -> np.ndarray:
    """Check the unintegrated data; reduce it to ``n_pcs`` principal components if wider."""
    if sp.issparse(unintegrated):
        matrix = sp.csr_matrix(unintegrated, dtype=np.float64)
        if not np.isfinite(matrix.data).all():
            msg = "unintegrated has NaN or infinite values; drop those cells before evaluating."
            raise ValueError(msg)
    else:
        matrix = as_matrix(unintegrated, name="unintegrated")
    if matrix.shape[0] != n_cells:
        msg = f"unintegrated has {matrix.shape[0]} cells but latent has {n_cells}."
        raise ValueError(msg)
    if matrix.shape[1] <= n_pcs:
        return matrix.toarray() if sp.issparse(matrix) else matrix
    import scanpy as sc

    # scanpy's default number of components, as the Benchmarker's sc.tl.pca
    n_comps = min(n_pcs, min(matrix.shape) - 1)
    with keep_torch_threads():
        return np.asarray(
            sc.pp.pca(matrix, n_comps=n_comps, svd_solver="arpack", random_state=0),
            dtype=np.float64,
        )


def _pcr_comparison(pcs: np.ndarray, latent: np.ndarray, codes: np.ndarray) -> float:
    before = _batch_variance_share(pcs, codes)
    after = _batch_variance_share(latent, codes)
    score = (before - after) / before
    if score < 0:
        warnings.warn(
            "PCR comparison is negative: the batches explain more variance of the latent than of "
            "the unintegrated data. Setting it to 0, as scib-metrics does.",
            UserWarning,
            stacklevel=3,
        )
        score = 0.0
    return float(score)


def silhouette_label(latent: Any, labels: Any) -> float:
    """Label silhouette rescaled to ``[0, 1]``: ``(ASW + 1) / 2`` (scib-metrics' ``silhouette_label``).

    The mean Euclidean silhouette width of the labels
    (:func:`~scdlkit.evaluation.label_silhouette`), rescaled so that 1 means
    compact, well separated labels.

    Examples
    --------
    >>> import numpy as np
    >>> latent = np.array([[0.0], [1.0], [10.0], [11.0]])
    >>> round(silhouette_label(latent, ["a", "a", "b", "b"]), 4)
    0.9499
    """
    latent, labels, _ = _labels_and_batches(latent, labels)
    return float((np.mean(_label_silhouettes(latent, labels)) + 1.0) / 2.0)


def isolated_labels(
    latent: Any, labels: Any, batches: Any, *, iso_threshold: int | None = None
) -> float:
    """Isolated-label score: how well the labels found in the fewest batches are kept apart.

    scib-metrics' ``isolated_labels``: the labels present in at most
    ``iso_threshold`` batches (default: the smallest number of batches any
    label is in) are isolated; the score is the mean over them of the mean
    rescaled label silhouette ``(s + 1) / 2`` of their cells, the silhouette
    computed on all cells. When every label is in every batch, every label
    counts as isolated.

    Examples
    --------
    >>> import numpy as np
    >>> latent = np.array([[0.0], [0.2], [5.0], [5.2], [9.0], [9.2]])
    >>> labels = ["a", "a", "b", "b", "c", "c"]
    >>> round(isolated_labels(latent, labels, ["x", "y", "x", "y", "x", "x"]), 4)  # c only in x
    0.975
    """
    latent, labels, batches = _labels_and_batches(latent, labels, batches)
    return _isolated_labels(_label_silhouettes(latent, labels), labels, batches, iso_threshold)


def nmi_ari_cluster_labels(
    latent: Any,
    labels: Any,
    *,
    method: Literal["kmeans", "leiden"] = "kmeans",
    n_neighbors: int = 15,
    seed: int = 0,
) -> dict[str, float]:
    """NMI and ARI of unsupervised clusters against the labels.

    ``"kmeans"`` (scib-metrics' ``nmi_ari_cluster_labels_kmeans``, the
    Benchmarker's default): k-means with one cluster per label
    (:func:`~scdlkit.evaluation.cluster_labels`, scikit-learn, 10 starts).
    ``"leiden"`` (``nmi_ari_cluster_labels_leiden``): igraph Leiden
    (modularity) on the UMAP connectivities of the ``n_neighbors`` graph at
    resolutions 0.2, 0.4, ..., 2.0, keeping the clustering with the best NMI.
    NMI uses the arithmetic-mean normalisation.

    Returns
    -------
    ``{"nmi": ..., "ari": ...}``.

    Examples
    --------
    >>> import numpy as np
    >>> latent = np.array([[0.0], [0.1], [9.0], [9.1]])
    >>> nmi_ari_cluster_labels(latent, ["a", "a", "b", "b"])
    {'nmi': 1.0, 'ari': 1.0}
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    latent, labels, _ = _labels_and_batches(latent, labels)
    if method not in CLUSTERINGS:
        msg = f"Unknown clustering method {method!r}; use one of {list(CLUSTERINGS)}."
        raise ValueError(msg)
    if method == "leiden":
        indices, distances = nearest_neighbors(latent, n_neighbors)
        return _leiden_nmi_ari(umap_connectivities(indices, distances), labels, seed)
    clusters = cluster_labels(
        latent, method="kmeans", n_clusters=np.unique(labels).shape[0], seed=seed
    )
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


def clisi_knn(latent: Any, labels: Any, *, n_neighbors: int = 90) -> float:
    """Cell-type LISI, rescaled: ``(C - median cLISI) / (C - 1)`` for ``C`` labels.

    scib-metrics' ``clisi_knn``: the LISI of the labels (perplexity
    ``n_neighbors // 3``, see :func:`ilisi_knn`) on the ``n_neighbors``
    nearest neighbours; 1 means every neighbourhood holds a single label.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> latent = rng.normal(size=(200, 5)) + np.repeat([[0.0], [20.0]], 100, axis=0)
    >>> clisi_knn(latent, ["a"] * 100 + ["b"] * 100)  # the labels apart
    1.0
    """
    latent, labels, _ = _labels_and_batches(latent, labels)
    indices, distances = nearest_neighbors(latent, n_neighbors)
    return _clisi(indices, distances, labels)


def _clisi(indices: np.ndarray, distances: np.ndarray, labels: np.ndarray) -> float:
    n_labels = np.unique(labels).shape[0]
    scores = lisi(indices, distances, _codes(labels), perplexity=np.floor(indices.shape[1] / 3))
    return float((n_labels - np.nanmedian(scores)) / (n_labels - 1))


def ilisi_knn(latent: Any, batches: Any, *, n_neighbors: int = 90) -> float:
    """Integration LISI, rescaled: ``(median iLISI - 1) / (B - 1)`` for ``B`` batches.

    scib-metrics' ``ilisi_knn`` (Korsunsky et al. 2019): on each cell's
    ``n_neighbors`` nearest neighbours (itself left out), weights
    ``exp(-beta * distance)`` with ``beta`` set so that their perplexity is
    ``n_neighbors // 3``; the cell's LISI is the inverse Simpson index of the
    batches under these weights (the effective number of batches around it).
    1 means every neighbourhood mixes all batches in their overall proportions
    (for equal-sized batches), 0 that each holds one batch. Unlike
    :func:`~scdlkit.evaluation.ilisi` (equal weights, mean, not rescaled) this is
    the scIB definition.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> latent = rng.normal(size=(200, 5))
    >>> round(ilisi_knn(latent, rng.choice(["x", "y"], 200)), 2)  # batches drawn at random
    0.91
    >>> ilisi_knn(latent + np.repeat([[0.0], [20.0]], 100, axis=0), ["x"] * 100 + ["y"] * 100)
    0.0
    """
    latent = as_matrix(latent, name="latent")
    batches = _batches(batches, latent.shape[0])
    indices, distances = nearest_neighbors(latent, n_neighbors)
    return _ilisi(indices, distances, batches)


def _ilisi(indices: np.ndarray, distances: np.ndarray, batches: np.ndarray) -> float:
    n_batches = np.unique(batches).shape[0]
    scores = lisi(indices, distances, _codes(batches), perplexity=np.floor(indices.shape[1] / 3))
    return float((np.nanmedian(scores) - 1) / (n_batches - 1))


def bras(latent: Any, labels: Any, batches: Any) -> float:
    """Batch removal adapted silhouette (BRAS; Rautenstrauch & Ohler 2025), scib-metrics' default.

    Within each label with at least two batches (and fewer batches than
    cells), the silhouette of the batches with cosine distance and, as the
    between-cluster distance, the mean distance to all cells of the other
    batches; the score of a cell is ``1 - |s|``, averaged per label and then
    over labels. 1 means the batches are mixed within every cell type.

    Examples
    --------
    >>> import numpy as np
    >>> latent = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> round(bras(latent, ["a"] * 4, ["x", "x", "y", "y"]), 4)  # batches apart
    0.0055
    """
    latent, labels, batches = _labels_and_batches(latent, labels, batches, min_labels=1)
    return _bras(latent, labels, batches)


def _bras(latent: np.ndarray, labels: np.ndarray, batches: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = latent / np.linalg.norm(latent, axis=1, keepdims=True)
    scores = []
    for label in np.unique(labels):
        mask = labels == label
        codes = _codes(batches[mask])
        n_batches = int(codes.max()) + 1
        if n_batches == 1 or n_batches == int(mask.sum()):
            continue
        points = unit[mask]
        one_hot = np.eye(n_batches)[codes]
        sizes = one_hot.sum(axis=0)
        widths = []
        for start in range(0, points.shape[0], 1024):
            chunk = slice(start, start + 1024)
            distances = np.clip(1.0 - points[chunk] @ points.T, 0.0, 2.0)
            per_batch = distances @ one_hot
            own = codes[chunk]
            rows = np.arange(per_batch.shape[0])
            with np.errstate(divide="ignore", invalid="ignore"):
                within = per_batch[rows, own] / (sizes[own] - 1)
                between = (per_batch.sum(axis=1) - per_batch[rows, own]) / (
                    codes.shape[0] - sizes[own]
                )
                widths.append(np.nan_to_num((between - within) / np.maximum(within, between)))
        scores.append(np.mean(1.0 - np.abs(np.concatenate(widths))))
    return float(np.mean(scores)) if scores else float("nan")


def kbet_per_label(
    latent: Any,
    labels: Any,
    batches: Any,
    *,
    n_neighbors: int = 50,
    alpha: float = 0.05,
    diffusion_n_comps: int = 100,
) -> float:
    """KBET acceptance rate per label (Büttner et al. 2019), as scib-metrics' ``kbet_per_label``.

    On the UMAP connectivities of the ``n_neighbors`` graph, each label's
    subgraph is embedded with a diffusion map (at most ``diffusion_n_comps``
    components) and each cell's ``k0 + 1`` neighbours there (``k0`` = a
    quarter of the label's mean cells per batch, clipped to 10–70) are tested
    against the label's batch proportions with a chi-squared test at level
    ``alpha``; a label's score is the share of cells accepted. Labels with
    fewer than 10 cells or one batch are skipped; the result is the mean over
    the others (NaN if none).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> latent = rng.normal(size=(200, 5))
    >>> labels, batches = ["a"] * 200, ["x"] * 100 + ["y"] * 100
    >>> mixed = kbet_per_label(latent, labels, batches)
    >>> apart = kbet_per_label(latent + np.repeat([[0.0], [9.0]], 100, axis=0), labels, batches)
    >>> mixed > 0.5, apart < 0.05
    (True, True)
    """
    latent, labels, batches = _labels_and_batches(latent, labels, batches, min_labels=1)
    indices, distances = nearest_neighbors(latent, n_neighbors)
    return _kbet(umap_connectivities(indices, distances), labels, batches, alpha, diffusion_n_comps)


def _kbet(
    connectivities: sp.csr_matrix,
    labels: np.ndarray,
    batches: np.ndarray,
    alpha: float,
    diffusion_n_comps: int,
) -> float:
    scores = kbet_scores(
        connectivities,
        _codes(batches),
        labels,
        alpha=alpha,
        diffusion_n_comps=diffusion_n_comps,
    )
    return float(scores.mean()) if scores.notna().any() else float("nan")


def graph_connectivity(latent: Any, labels: Any, *, n_neighbors: int = 15) -> float:
    """Graph connectivity: per label, the share of its cells in the largest connected piece.

    scib-metrics' ``graph_connectivity``: the directed ``n_neighbors``-nearest-
    neighbour graph (each cell included in its own neighbours) restricted to
    one label, its largest strongly connected component divided by the
    label's cells, averaged over labels. 1 means every label forms one
    connected neighbourhood graph.

    Examples
    --------
    >>> import numpy as np
    >>> latent = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    >>> graph_connectivity(latent, ["a", "a", "a", "b", "b", "b"], n_neighbors=3)
    1.0
    >>> graph_connectivity(latent, ["a", "a", "b", "a", "b", "b"], n_neighbors=3)
    0.6666666666666666
    """
    latent, labels, _ = _labels_and_batches(latent, labels, min_labels=1)
    indices, _ = nearest_neighbors(latent, n_neighbors)
    return _graph_connectivity(indices, labels)


def pcr_comparison(unintegrated: Any, latent: Any, batches: Any, *, n_pcs: int = 50) -> float:
    """Principal component regression comparison: how much batch variance the integration removed.

    scib-metrics' ``pcr_comparison``: ``(pcr_before - pcr_after) /
    pcr_before``, where ``pcr`` is the variance-weighted mean R² of the
    batches on every principal component (Büttner et al. 2019), before on
    ``unintegrated`` and after on ``latent``. Negative values (the batches
    explain more variance after) are set to 0 with a warning, as scib-metrics
    does. ``unintegrated`` wider than ``n_pcs`` columns (for example the
    normalised expression) is first reduced to its ``n_pcs`` principal
    components (:func:`scanpy.pp.pca`), as the Benchmarker's ``prepare`` does;
    a narrower one (an existing PCA) is used as it is.

    Examples
    --------
    >>> import numpy as np
    >>> before = np.array([[0.0, 1.0], [0.0, 2.0], [5.0, 1.0], [5.0, 2.0]])
    >>> after = before[:, 1:]  # the batch axis removed
    >>> pcr_comparison(before, after, ["x", "x", "y", "y"])
    1.0
    """
    latent = as_matrix(latent, name="latent")
    batches = _batches(batches, latent.shape[0])
    pcs = _unintegrated_pcs(unintegrated, latent.shape[0], n_pcs)
    return _pcr_comparison(pcs, latent, _codes(batches))
