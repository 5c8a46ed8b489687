"""Two-step level 1 for very large k_1: a coarse k-means, then a k-means inside each coarse cluster.

One k-means with millions of centroids does not fit (every row would be compared with every
centroid at every iteration); the reference code splits such a level in two: ``coarse_k``
clusters over all rows, then each coarse cluster gets a share of the k_1 fine clusters
proportional to its size and runs its own small k-means. The fine centroids of all coarse
clusters together are level 1's centroids. The Spark form of the second step is a group-by on
the coarse label with ``applyInPandas`` (:mod:`lakecurate.spark.two_step`); this module
holds the pure parts, shared with an in-process version used by the tests.
"""

from __future__ import annotations

import numpy as np

from lakecurate.core.assign import NumpyAssigner
from lakecurate.core.hierarchy import LevelParams
from lakecurate.core.kmeans import fit_kmeans_assigner


def allocate_subclusters(sizes: np.ndarray, k_total: int) -> np.ndarray:
    """Fine clusters per coarse cluster: proportional to size, >= 1 for a non-empty one, <= its size.

    Largest-remainder rounding (ties to the lower index) so the shares add up to ``k_total``
    exactly whenever ``k_total`` <= the number of rows.
    """
    sizes = np.asarray(sizes, np.int64)
    nonempty = sizes > 0
    k_total = int(min(k_total, sizes.sum()))
    share = np.zeros(sizes.size, np.int64)
    share[nonempty] = 1
    rest = k_total - int(share.sum())
    if rest > 0:
        ideal = sizes / max(sizes.sum(), 1) * k_total
        extra = np.minimum(np.maximum(np.floor(ideal).astype(np.int64) - share, 0), sizes - share)
        share += extra
        rest = k_total - int(share.sum())
        while rest > 0:
            room = sizes - share
            frac = np.where(room > 0, ideal - share, -np.inf)
            order = np.lexsort((np.arange(sizes.size), -frac))
            take = order[: min(rest, int((room > 0).sum()))]
            share[take] += 1
            rest = k_total - int(share.sum())
    return share


def fine_seed(seed: int, coarse_id: int) -> np.random.Generator:
    """The generator of coarse cluster ``coarse_id``'s k-means: independent of where it runs."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 1, int(coarse_id)]))


def fit_fine(x: np.ndarray, k: int, params: LevelParams, seed: int, coarse_id: int) -> np.ndarray:
    """Fine centroids (k, d) of one coarse cluster's rows (ordered by row key by the caller)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if k >= x.shape[0]:
        return x[:k].copy()
    fit = fit_kmeans_assigner(
        NumpyAssigner(x), k, fine_seed(seed, coarse_id), n_iter=params.n_iter, init=params.init,
        spherical=params.spherical, init_points_per_centroid=params.init_points_per_centroid,
    )
    return fit.centroids


def two_step_centroids(x: np.ndarray, params: LevelParams, coarse_k: int, seed: int) -> np.ndarray:
    """In-process two-step level-1 centroids (the reference for the Spark version)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
    a = NumpyAssigner(x)
    coarse = fit_kmeans_assigner(a, coarse_k, rng, n_iter=params.n_iter, init=params.init, spherical=params.spherical,
                                 init_points_per_centroid=params.init_points_per_centroid)
    lab, _ = a.labels(coarse.centroids)
    share = allocate_subclusters(np.bincount(lab, minlength=coarse_k), params.n_clusters)
    parts = [fit_fine(x[lab == c], int(share[c]), params, seed, c) for c in range(coarse_k) if share[c] > 0]
    return np.concatenate(parts).astype(np.float32)
