"""Representation metrics: how well a latent space keeps cell types apart and mixes batches."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from .._threads import keep_torch_threads
from ._checks import as_labels, as_matrix

CLUSTERINGS = ("leiden", "kmeans")


def knn_accuracy(
    latent: Any,
    labels: Any,
    *,
    reference_latent: Any = None,
    reference_labels: Any = None,
    n_neighbors: int = 15,
    n_folds: int = 5,
    seed: int = 0,
) -> float:
    """Accuracy of a k-nearest-neighbour classifier of labels in the latent space.

    With a reference (for example the training cells), a
    :class:`~sklearn.neighbors.KNeighborsClassifier` is fitted on the reference
    cells and scored on ``latent``/``labels``. Without one, the labels of
    ``latent`` are predicted by ``n_folds``-fold cross-validation
    (:func:`~sklearn.model_selection.cross_val_predict`).

    Parameters
    ----------
    latent
        Embedding of the evaluated cells (cells x dimensions).
    labels
        Their labels.
    reference_latent, reference_labels
        Embedding and labels of the cells the classifier learns from.
    n_neighbors
        Neighbours of the classifier (fewer when there are fewer reference cells).
    n_folds
        Folds of the cross-validation without a reference.
    seed
        Seed of the cross-validation folds.

    Returns
    -------
    The fraction of evaluated cells whose label is predicted correctly.

    Examples
    --------
    >>> import numpy as np
    >>> reference = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> knn_accuracy(
    ...     np.array([[0.2], [4.9], [0.3]]),
    ...     ["a", "b", "b"],
    ...     reference_latent=reference,
    ...     reference_labels=["a", "a", "b", "b"],
    ...     n_neighbors=1,
    ... )
    0.6666666666666666
    """
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    latent = as_matrix(latent, name="latent")
    labels = as_labels(labels, name="labels", n_cells=latent.shape[0])
    if (reference_latent is None) != (reference_labels is None):
        msg = "Pass both reference_latent and reference_labels, or neither."
        raise ValueError(msg)
    if reference_latent is not None:
        reference_latent = as_matrix(reference_latent, name="reference_latent")
        reference_labels = as_labels(
            reference_labels, name="reference_labels", n_cells=reference_latent.shape[0]
        )
        if reference_latent.shape[1] != latent.shape[1]:
            msg = (
                f"reference_latent has {reference_latent.shape[1]} dimensions but latent has "
                f"{latent.shape[1]}."
            )
            raise ValueError(msg)
        k = max(1, min(int(n_neighbors), reference_latent.shape[0]))
        classifier = KNeighborsClassifier(n_neighbors=k).fit(reference_latent, reference_labels)
        return float(np.mean(classifier.predict(latent) == labels))
    if latent.shape[0] < 2:
        msg = "knn_accuracy without a reference needs at least 2 cells."
        raise ValueError(msg)
    folds = max(2, min(int(n_folds), latent.shape[0]))
    smallest_training_fold = latent.shape[0] - int(np.ceil(latent.shape[0] / folds))
    k = max(1, min(int(n_neighbors), smallest_training_fold))
    predicted = cross_val_predict(
        KNeighborsClassifier(n_neighbors=k),
        latent,
        labels,
        cv=KFold(folds, shuffle=True, random_state=seed),
    )
    return float(np.mean(predicted == labels))


def label_silhouette(latent: Any, labels: Any) -> float:
    """Mean silhouette width of the labels in the latent space (Euclidean), in ``[-1, 1]``.

    Computed with :func:`sklearn.metrics.silhouette_score`; higher means the
    labels form tighter, better separated groups. NaN with fewer than 2 labels
    or fewer than ``n_labels + 1`` cells.

    Examples
    --------
    >>> import numpy as np
    >>> latent = np.array([[0.0], [1.0], [10.0], [11.0]])
    >>> round(label_silhouette(latent, ["a", "a", "b", "b"]), 4)
    0.8997
    """
    from sklearn.metrics import silhouette_score

    latent = as_matrix(latent, name="latent")
    labels = as_labels(labels, name="labels", n_cells=latent.shape[0])
    n_labels = np.unique(labels).shape[0]
    if not 2 <= n_labels <= latent.shape[0] - 1:
        return float("nan")
    return float(silhouette_score(latent, labels))


def cluster_labels(
    latent: Any,
    *,
    method: Literal["leiden", "kmeans"] = "leiden",
    n_clusters: int | None = None,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    seed: int = 0,
) -> np.ndarray:
    """Cluster cells in a latent space.

    ``"leiden"``: :func:`scanpy.pp.neighbors` on the latent (exact neighbours
    from scikit-learn, Gaussian-kernel weights, so no numba compilation), then
    :func:`scanpy.tl.leiden` (igraph flavour) at ``resolution``. ``"kmeans"``:
    :class:`sklearn.cluster.KMeans` with ``n_clusters`` clusters.

    Returns
    -------
    Cluster of each cell, as strings.

    Raises
    ------
    ImportError
        ``"leiden"`` without the ``igraph`` package.

    Examples
    --------
    >>> import numpy as np
    >>> latent = np.array([[0.0], [0.1], [9.0], [9.1]])
    >>> cluster_labels(latent, method="kmeans", n_clusters=2).tolist()
    ['1', '1', '0', '0']
    """
    latent = as_matrix(latent, name="latent")
    if method not in CLUSTERINGS:
        msg = f"Unknown clustering {method!r}; use one of {list(CLUSTERINGS)}."
        raise ValueError(msg)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        if n_clusters is None:
            msg = "method='kmeans' needs n_clusters= (for example the number of labels)."
            raise ValueError(msg)
        k = max(1, min(int(n_clusters), latent.shape[0]))
        codes = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(latent)
        return codes.astype(str)
    import importlib.util

    import scanpy as sc
    from anndata import AnnData

    if importlib.util.find_spec("igraph") is None:
        msg = (
            "Leiden clustering needs the igraph package (pip install igraph); or pass "
            "clustering='kmeans'."
        )
        raise ImportError(msg)
    if latent.shape[0] < 3:
        return np.zeros(latent.shape[0], dtype=int).astype(str)
    holder = AnnData(obs=pd.DataFrame(index=[str(i) for i in range(latent.shape[0])]))
    holder.obsm["X_latent"] = latent.astype(np.float32)
    with keep_torch_threads():
        sc.pp.neighbors(
            holder,
            use_rep="X_latent",
            n_neighbors=max(2, min(int(n_neighbors), latent.shape[0] - 1)),
            method="gauss",
            transformer="sklearn",
            random_state=seed,
        )
    sc.tl.leiden(
        holder,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    return holder.obs["leiden"].astype(str).to_numpy()


def batch_silhouette(latent: Any, batches: Any, labels: Any = None) -> float:
    """Batch mixing by silhouette: ``1 - |silhouette of the batches|``, in ``[0, 1]``.

    Per-cell silhouette widths of the batches come from
    :func:`sklearn.metrics.silhouette_samples`. With ``labels`` they are
    computed within each label (the scIB "batch ASW"): per label the mean of
    ``1 - |s|``, then the mean over labels that occur in at least two batches.
    Without labels, the mean of ``1 - |s|`` over all cells. 1 means the batches
    are mixed, values near 0 that they separate. NaN when no group has two
    batches.

    Examples
    --------
    >>> import numpy as np
    >>> latent = np.array([[0.0], [0.0], [5.0], [5.0]])
    >>> batch_silhouette(latent, ["x", "x", "y", "y"])  # each batch in its own place
    0.0
    """
    from sklearn.metrics import silhouette_samples

    latent = as_matrix(latent, name="latent")
    batches = as_labels(batches, name="batches", n_cells=latent.shape[0])
    groups = (
        np.zeros(latent.shape[0], dtype=int).astype(str)
        if labels is None
        else as_labels(labels, name="labels", n_cells=latent.shape[0])
    )
    scores = []
    for group in np.unique(groups):
        mask = groups == group
        n_batches = np.unique(batches[mask]).shape[0]
        if not 2 <= n_batches <= int(mask.sum()) - 1:
            continue
        widths = silhouette_samples(latent[mask], batches[mask])
        scores.append(float(np.mean(1.0 - np.abs(widths))))
    return float(np.mean(scores)) if scores else float("nan")


def ilisi(latent: Any, batches: Any, *, n_neighbors: int = 30) -> float:
    """LISI-style batch mixing: mean inverse Simpson index of batches among each cell's neighbours.

    For every cell, its ``n_neighbors`` nearest neighbours in the latent space
    (:class:`sklearn.neighbors.NearestNeighbors`, the cell itself excluded) give
    batch proportions ``p_b``; the cell's score is ``1 / sum(p_b**2)``, the
    effective number of batches around it. This follows the integration LISI of
    Korsunsky et al. (2019) with equal neighbour weights instead of a
    perplexity-based kernel. It ranges from 1 (every neighbourhood holds one
    batch) to the number of batches (every neighbourhood holds all batches in
    equal parts).

    Examples
    --------
    >>> import numpy as np
    >>> latent = np.array([[0.0], [0.1], [0.2], [0.3]])
    >>> ilisi(latent, ["x", "y", "x", "y"], n_neighbors=2)  # per cell: 2, 1, 1, 2
    1.5
    """
    from sklearn.neighbors import NearestNeighbors

    latent = as_matrix(latent, name="latent")
    batches = as_labels(batches, name="batches", n_cells=latent.shape[0])
    if latent.shape[0] < 2:
        return float("nan")
    k = max(1, min(int(n_neighbors), latent.shape[0] - 1))
    _, codes = np.unique(batches, return_inverse=True)
    # kneighbors() without X leaves every cell out of its own neighbours
    neighbours = NearestNeighbors(n_neighbors=k).fit(latent).kneighbors(return_distance=False)
    counts = np.zeros((latent.shape[0], int(codes.max()) + 1))
    np.add.at(counts, (np.repeat(np.arange(latent.shape[0]), k), codes[neighbours].ravel()), 1.0)
    proportions = counts / k
    return float(np.mean(1.0 / np.square(proportions).sum(axis=1)))


def representation_metrics(
    latent: Any,
    labels: Any = None,
    *,
    batches: Any = None,
    reference_latent: Any = None,
    reference_labels: Any = None,
    n_neighbors: int = 15,
    clustering: Literal["leiden", "kmeans"] = "leiden",
    resolution: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a latent space against cell labels and, optionally, batches.

    Parameters
    ----------
    latent
        Embedding of the evaluated cells (cells x dimensions), e.g. the test split.
    labels
        Their labels (cell types); label metrics are skipped without them.
    batches
        Their batches; batch-mixing metrics are computed only with them.
    reference_latent, reference_labels
        Embedding and labels of the cells the kNN classifier learns from (e.g.
        the training split); without them it is cross-validated within ``latent``.
    n_neighbors
        Neighbours of the kNN classifier and of the Leiden graph.
    clustering
        ``"leiden"`` (:func:`scanpy.tl.leiden` on a neighbour graph of the latent)
        or ``"kmeans"`` (:class:`sklearn.cluster.KMeans` with one cluster per label).
    resolution
        Leiden resolution.
    seed
        Seed of clustering and cross-validation.

    Returns
    -------
    Dictionary of floats (those that the inputs allow):

    ``knn_accuracy``
        See :func:`knn_accuracy`.
    ``silhouette_label``
        See :func:`label_silhouette`.
    ``ari``, ``nmi``
        :func:`~sklearn.metrics.adjusted_rand_score` and
        :func:`~sklearn.metrics.normalized_mutual_info_score` of the clusters
        (:func:`cluster_labels`) against the labels.
    ``batch_silhouette``, ``ilisi``
        With ``batches``: see :func:`batch_silhouette` (within labels when given)
        and :func:`ilisi`.
    ``n_cells``
        Number of evaluated cells.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(["a", "b"], 20)
    >>> latent = rng.normal(size=(40, 2)) + np.where(labels == "a", 0.0, 8.0)[:, None]
    >>> metrics = representation_metrics(latent, labels, clustering="kmeans")
    >>> metrics["knn_accuracy"], metrics["ari"]
    (1.0, 1.0)
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    latent = as_matrix(latent, name="latent")
    metrics: dict[str, Any] = {}
    label_array = None
    if labels is not None:
        label_array = as_labels(labels, name="labels", n_cells=latent.shape[0])
        metrics["knn_accuracy"] = knn_accuracy(
            latent,
            label_array,
            reference_latent=reference_latent,
            reference_labels=reference_labels,
            n_neighbors=n_neighbors,
            seed=seed,
        )
        metrics["silhouette_label"] = label_silhouette(latent, label_array)
        clusters = cluster_labels(
            latent,
            method=clustering,
            n_clusters=np.unique(label_array).shape[0],
            resolution=resolution,
            n_neighbors=n_neighbors,
            seed=seed,
        )
        metrics["ari"] = float(adjusted_rand_score(label_array, clusters))
        metrics["nmi"] = float(normalized_mutual_info_score(label_array, clusters))
    if batches is not None:
        metrics["batch_silhouette"] = batch_silhouette(latent, batches, label_array)
        metrics["ilisi"] = ilisi(latent, batches)
    metrics["n_cells"] = int(latent.shape[0])
    return metrics
