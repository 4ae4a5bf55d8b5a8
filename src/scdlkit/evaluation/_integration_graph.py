"""Neighbour graphs of the integration metrics, built the way scib-metrics 0.5 builds them.

numpy/scipy/scikit-learn versions of the pieces scib-metrics computes with
JAX, pynndescent and umap-learn: exact k-nearest neighbours (the cell itself
included), UMAP's fuzzy-simplicial-set connectivities, the perplexity-based
LISI of Korsunsky et al. (2019) and the diffusion-map neighbours and chi-squared
test of kBET (Büttner et al. 2019) as ``scib_metrics.kbet_per_label`` runs it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

# umap-learn's constants (umap/umap_.py) for the smooth kNN distances
_SMOOTH_K_TOLERANCE = 1e-5
_MIN_K_DIST_SCALE = 1e-3
_SMOOTH_K_ITERATIONS = 64
# scib-metrics' LISI binary search (utils/_lisi.py) and diffusion map (utils/_diffusion_nn.py)
_LISI_TOLERANCE = 1e-5
_LISI_TRIES = 50
_DIFFUSION_EPS = 1e-8


def nearest_neighbors(latent: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``n_neighbors`` nearest neighbours of every cell, the cell itself included.

    Returns the indices and Euclidean distances (cells x neighbours, nearest
    first; a cell's distance to itself exactly 0), the layout of scib-metrics'
    ``NeighborsResults``; ``n_neighbors`` is capped at the number of cells.
    """
    from sklearn.neighbors import NearestNeighbors

    k = max(1, min(int(n_neighbors), latent.shape[0]))
    distances, indices = NearestNeighbors(n_neighbors=k).fit(latent).kneighbors(latent)
    # brute-force distances are computed as |x|² + |y|² - 2xy: a cell's distance to itself
    # comes out slightly above 0, which would shift UMAP's rho (the nearest *positive* distance)
    distances[indices == np.arange(latent.shape[0])[:, None]] = 0.0
    return indices, distances


def umap_connectivities(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """Symmetric fuzzy-simplicial-set connectivities of a kNN graph (UMAP, as scanpy uses).

    umap-learn's ``fuzzy_simplicial_set`` with ``local_connectivity=1`` and
    ``set_op_mix_ratio=1``: per cell, ``rho`` is the distance to its nearest
    other cell and ``sigma`` solves ``sum_j exp(-(d_j - rho) / sigma) = log2(k)``
    by bisection; edge weights ``exp(-(d - rho) / sigma)`` (the cell itself 0),
    then ``W + W.T - W * W.T``.
    """
    n_cells, k = indices.shape
    dists = distances.astype(np.float32)
    positive = dists > 0.0
    has_positive = positive.any(axis=1)
    first_positive = np.argmax(positive, axis=1)
    rho = np.where(has_positive, dists[np.arange(n_cells), first_positive], 0.0).astype(np.float32)
    # bisection on sigma for every cell at once (the first column is the cell itself)
    shifted = (dists[:, 1:] - rho[:, None]).astype(np.float64)
    target = np.log2(k)
    low = np.zeros(n_cells)
    high = np.full(n_cells, np.finfo(np.float64).max)
    mid = np.ones(n_cells)
    active = np.ones(n_cells, dtype=bool)
    for _ in range(_SMOOTH_K_ITERATIONS):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        with np.errstate(over="ignore"):
            terms = np.where(shifted[rows] > 0, np.exp(-shifted[rows] / mid[rows, None]), 1.0)
        psum = terms.sum(axis=1)
        converged = np.abs(psum - target) < _SMOOTH_K_TOLERANCE
        active[rows[converged]] = False
        rows, psum = rows[~converged], psum[~converged]
        above = psum > target
        high[rows[above]] = mid[rows[above]]
        mid[rows[above]] = (low[rows[above]] + high[rows[above]]) / 2.0
        below = rows[~above]
        low[below] = mid[below]
        unbounded = high[below] >= np.finfo(np.float64).max
        mid[below] = np.where(unbounded, mid[below] * 2.0, (low[below] + high[below]) / 2.0)
    sigma = mid.astype(np.float32)
    floor = np.where(
        rho > 0.0, _MIN_K_DIST_SCALE * dists.mean(axis=1), _MIN_K_DIST_SCALE * dists.mean()
    ).astype(np.float32)
    sigma = np.maximum(sigma, floor)
    gap = dists - rho[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(
            (gap <= 0.0) | (sigma[:, None] == 0.0),
            1.0,
            np.exp(-np.maximum(gap, 0.0) / sigma[:, None]),
        ).astype(np.float32)
    weights[indices == np.arange(n_cells)[:, None]] = 0.0
    rows = np.repeat(np.arange(n_cells), k)
    graph = sp.coo_matrix((weights.ravel(), (rows, indices.ravel())), shape=(n_cells, n_cells))
    graph = graph.tocsr()
    graph.eliminate_zeros()
    transpose = graph.T.tocsr()
    graph = (graph + transpose - graph.multiply(transpose)).tocsr()
    graph.eliminate_zeros()
    return graph


def knn_adjacency(indices: np.ndarray) -> sp.csr_matrix:
    """Directed kNN graph of ``indices`` (row: a cell, columns: its neighbours) with unit weights."""
    n_cells, k = indices.shape
    indptr = np.arange(0, n_cells * k + 1, k)
    ones = np.ones(n_cells * k)
    return sp.csr_matrix((ones, indices.ravel(), indptr), shape=(n_cells, n_cells))


def lisi(
    indices: np.ndarray, distances: np.ndarray, codes: np.ndarray, *, perplexity: float
) -> np.ndarray:
    """Per-cell LISI: the inverse Simpson index of ``codes`` under a perplexity-calibrated kernel.

    As scib-metrics' ``lisi_knn`` (Korsunsky et al. 2019): neighbour weights
    ``exp(-beta * d)`` with the cell itself masked out, ``beta`` found by
    bisection so that the entropy of the weights is ``log(perplexity)``
    (tolerance 1e-5, at most 50 steps); the score is ``1 / sum_c p_c**2`` of
    the weights' label proportions ``p_c`` (-1 where every weight is zero).
    """
    n_cells = indices.shape[0]
    dists = distances.astype(np.float64)
    others = indices != np.arange(n_cells)[:, None]
    log_perplexity = np.log(perplexity)

    def entropy(rows: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weights = np.where(others[rows], np.exp(-dists[rows] * beta[:, None]), 0.0)
        total = weights.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.where(
                total == 0,
                0.0,
                np.log(total) + beta * (dists[rows] * weights).sum(axis=1) / total,
            )
            p = np.where(total[:, None] == 0, 0.0, weights / total[:, None])
        return h, p

    all_rows = np.arange(n_cells)
    beta = np.ones(n_cells)
    beta_min = np.full(n_cells, -np.inf)
    beta_max = np.full(n_cells, np.inf)
    h, p = entropy(all_rows, beta)
    h_diff = h - log_perplexity
    for _ in range(_LISI_TRIES):
        rows = np.flatnonzero(np.abs(h_diff) >= _LISI_TOLERANCE)
        if rows.size == 0:
            break
        up = h_diff[rows] > 0
        old_beta = beta[rows]
        beta_min[rows[up]] = old_beta[up]
        beta_max[rows[~up]] = old_beta[~up]
        raised = np.where(
            np.isinf(beta_max[rows]), old_beta * 2.0, (old_beta + beta_max[rows]) / 2.0
        )
        lowered = np.where(
            np.isinf(beta_min[rows]), old_beta / 2.0, (old_beta + beta_min[rows]) / 2.0
        )
        beta[rows] = np.where(up, raised, lowered)
        h[rows], p[rows] = entropy(rows, beta[rows])
        h_diff[rows] = h[rows] - log_perplexity
    n_codes = int(codes.max()) + 1
    neighbour_codes = codes[indices]
    proportions = np.zeros((n_cells, n_codes))
    np.add.at(
        proportions, (np.repeat(all_rows, indices.shape[1]), neighbour_codes.ravel()), p.ravel()
    )
    simpson = np.where(h == 0, -1.0, np.square(proportions).sum(axis=1))
    return 1.0 / simpson


def _diffusion_neighbors(
    connectivities: sp.csr_matrix, n_neighbors: int, n_comps: int
) -> np.ndarray:
    """``n_neighbors + 1`` neighbours (self included) in the diffusion map of a connectivity graph.

    scib-metrics' ``diffusion_nn``: density-normalised symmetric transitions
    (Coifman et al. 2005, scanpy's code), the ``n_comps`` eigenvectors of
    largest magnitude (ARPACK), each scaled by ``lambda / (1 - lambda)`` (the
    eigenvalue 1 kept as is), and Euclidean neighbours in that embedding.
    """
    from scipy.sparse.linalg import eigsh

    # in float64 throughout: from float32 transitions (as scib-metrics builds them) the
    # eigenvalue 1 can come out as 0.9999998 and be scaled by 1 / (1 - lambda) ~ 5e6
    connectivities = connectivities.astype(np.float64)
    q = np.asarray(connectivities.sum(axis=0)).ravel()
    q_inverse = sp.diags(1.0 / q)
    kernel = q_inverse @ connectivities @ q_inverse
    z = np.sqrt(np.asarray(kernel.sum(axis=0)).ravel())
    z_inverse = sp.diags(1.0 / z)
    transitions = z_inverse @ kernel @ z_inverse
    n_comps = min(transitions.shape[0] - 1, n_comps)
    values, vectors = eigsh(transitions, k=n_comps, which="LM")
    values = values.astype(np.float32) + np.float32(_DIFFUSION_EPS)
    with np.errstate(divide="ignore"):
        scale = np.where(values == 1, values, values / (1 - values)).astype(np.float32)
    embedding = vectors.astype(np.float32) * scale
    k = min(n_neighbors + 1, embedding.shape[0])
    return nearest_neighbors(embedding, k)[0]


def _kbet_acceptance(neighbours: np.ndarray, codes: np.ndarray, alpha: float) -> float:
    """KBET acceptance rate: share of cells whose neighbourhood batch counts pass a chi-squared test."""
    from scipy.stats import chi2

    _, codes = np.unique(codes, return_inverse=True)
    n_batches = int(codes.max()) + 1
    expected = np.bincount(codes, minlength=n_batches) / codes.shape[0] * neighbours.shape[1]
    observed = np.zeros((neighbours.shape[0], n_batches))
    np.add.at(
        observed,
        (np.repeat(np.arange(neighbours.shape[0]), neighbours.shape[1]), codes[neighbours].ravel()),
        1.0,
    )
    statistic = np.sum(np.square(observed - expected) / expected, axis=1)
    p_values = chi2.sf(statistic, n_batches - 1)
    return float(np.mean(p_values >= alpha))


def kbet_scores(
    connectivities: sp.csr_matrix,
    batch_codes: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float,
    diffusion_n_comps: int,
) -> pd.Series:
    """KBET acceptance rate of every label, as scib-metrics' ``kbet_per_label`` computes it.

    Per label (sorted): NaN with fewer than 10 cells or a single batch;
    otherwise ``k0 = clip(floor(mean cells per batch / 4), 10, 70)`` and, on
    the label's subgraph of ``connectivities``, the kBET test on ``k0 + 1``
    diffusion-map neighbours. A subgraph in several pieces keeps the pieces
    of at least ``3 * k0`` cells when they hold 75 % of the label (else the
    label scores 0); a failed diffusion map scores 0. As in scib-metrics, the
    number of diffusion components carries over from label to label (it is
    the smallest ``n_cells - 1`` met so far, at most ``diffusion_n_comps``).
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.sparse.linalg import ArpackError

    scores = {}
    n_comps = int(diffusion_n_comps)
    for label in np.unique(labels):
        mask = labels == label
        graph = connectivities[mask][:, mask].tocsr()
        codes = batch_codes[mask]
        n_cells = graph.shape[0]
        if n_cells < 10 or np.unique(codes).shape[0] == 1:
            scores[label] = np.nan
            continue
        mean_size = np.mean(np.unique(codes, return_counts=True)[1])
        k0 = int(min(70, max(10, int(np.floor(mean_size / 4)))))
        n_pieces, pieces = connected_components(graph, connection="strong")
        if n_pieces > 1:
            piece_sizes = np.bincount(pieces)
            keep = np.flatnonzero(piece_sizes[pieces] >= 3 * k0)
            if keep.shape[0] / n_cells < 0.75:
                scores[label] = 0.0
                continue
            graph, codes = graph[keep][:, keep].tocsr(), codes[keep]
        n_comps = min(n_comps, graph.shape[0] - 1)
        try:
            neighbours = _diffusion_neighbors(graph, k0, n_comps)
        except (ValueError, ArpackError):
            scores[label] = 0.0
            continue
        scores[label] = _kbet_acceptance(neighbours, codes, alpha)
    return pd.Series(scores, dtype=float)
