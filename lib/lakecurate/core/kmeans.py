"""One Lloyd loop for every data source, k-means++ on a uniform sample, empty-cluster re-seeding.

The loop only talks to data through an :class:`~lakecurate.core.assign.Assigner`, so the same
code fits an in-memory array, the driver-side levels 2..T and a Spark DataFrame on executors.
It assumes validated input (finite float32, n >= k); validation happens once at the public edge.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from lakecurate.core.assign import Assigner
from lakecurate.core.in_process import NumpyAssigner

log = logging.getLogger(__name__)

#: Relative perturbation when an empty cluster takes half of a big one (faiss uses the same).
SPLIT_EPS = 1.0 / 1024.0
#: Points per centroid in the k-means++ sample (the whole input when smaller).
DEFAULT_INIT_POINTS_PER_CENTROID = 40


@dataclass
class IterationStats:
    """Progress of one Lloyd iteration: returned to the caller and written to the ``runs`` table."""

    iteration: int
    objective: float  # sum of squared distances under the centroids entering this iteration
    n_reseeded: int  # empty clusters re-seeded by splitting a large one
    imbalance: float  # k * sum(count^2) / n^2; 1.0 means perfectly even clusters
    seconds: float


@dataclass
class KMeansFit:
    """A fitted k-means: final centroids and the assignment of all rows to them."""

    centroids: np.ndarray  # (k, d) float32
    counts: np.ndarray  # (k,) rows per cluster under the final centroids
    objective: float  # sum of squared distances under the final centroids
    init_seconds: float
    iterations: list[IterationStats] = field(default_factory=list)

    @property
    def n_reseeded(self) -> int:
        return sum(it.n_reseeded for it in self.iterations)


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Plain k-means++ seeding (Arthur & Vassilvitskii 2007) on an in-memory array.

    Each new centre is drawn with probability proportional to its squared distance to the
    nearest centre chosen so far. When every remaining point coincides with a centre (all
    distances zero) the draw falls back to uniform, so duplicates never stall the seeding.

    Pruned by the triangle inequality (as in Elkan's k-means): a point whose nearest centre so
    far is c_j cannot move to the new centre c when ``d(c, c_j) >= 2 d(x, c_j)``, so only the
    other points' distances are computed. Same draws as the unpruned loop (up to float rounding
    in distances that could not have changed anyway), several times less work once a few dozen
    centres exist: the unpruned loop reads the whole sample once per centre, which made the
    seeding cost several Lloyd iterations.
    """
    n = x.shape[0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    center_sq = np.empty(k, dtype=np.float64)
    owner = np.zeros(n, dtype=np.int64)  # the nearest centre chosen so far, per point

    first = int(rng.integers(n))
    centers[0], center_sq[0] = x[first], sq_norms[first]
    closest = np.maximum(sq_norms - 2.0 * (x @ x[first]).astype(np.float64) + sq_norms[first], 0.0)
    for i in range(1, k):
        total = closest.sum()
        if total > 0.0:
            idx = int(np.searchsorted(np.cumsum(closest), rng.random() * total, side="right"))
            idx = min(idx, n - 1)
        else:
            idx = int(rng.integers(n))
        c = x[idx]
        centers[i], center_sq[i] = c, sq_norms[idx]
        # squared distances from the new centre to the earlier ones (i x d: small, in cache)
        cc = np.maximum(center_sq[:i] - 2.0 * (centers[:i] @ c).astype(np.float64) + sq_norms[idx], 0.0)
        # could get closer unless d(c, c_owner)^2 >= 4 d(x, c_owner)^2; a small slack keeps the
        # borderline points (float rounding) in the computed set
        cand = np.flatnonzero(cc[owner] < 4.0 * closest * (1.0 + 1e-3) + 1e-12)
        if cand.size == 0:
            continue
        d_new = np.maximum(sq_norms[cand] - 2.0 * (x[cand] @ c).astype(np.float64) + sq_norms[idx], 0.0)
        better = d_new < closest[cand]
        moved = cand[better]
        closest[moved] = d_new[better]
        owner[moved] = i
    return centers


def init_centroids(
    assigner: Assigner,
    k: int,
    rng: np.random.Generator,
    *,
    method: str = "k-means++",
    points_per_centroid: int = DEFAULT_INIT_POINTS_PER_CENTROID,
) -> np.ndarray:
    """Initial centroids from a uniform sample of rows (the whole input when it is small).

    Exact k-means++ over all N rows costs k passes over the data; on a sample of
    ``points_per_centroid * k`` rows it costs no pass at all beyond fetching the sample, and
    the sample is fixed by the seed alone, so the Spark and in-process paths start identically.
    """
    sample_size = min(assigner.n, max(k, points_per_centroid * k))
    salt = int(rng.integers(2**62))
    if method == "random":
        return assigner.sample(k, salt)
    return kmeans_plusplus(assigner.sample(sample_size, salt), k, rng)


def split_empty_clusters(centroids: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> int:
    """Re-seed every empty cluster by splitting a populous one, in place, as faiss does.

    The cluster to split is drawn with probability proportional to (count - 1); its centroid is
    copied and the two copies are pushed apart by a small symmetric perturbation, so the next
    assignment divides its points between them. Returns how many clusters were re-seeded.
    """
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return 0
    counts = counts.astype(np.float64).copy()
    sign = np.where(np.arange(centroids.shape[1]) % 2 == 0, 1.0, -1.0).astype(np.float32)
    for ci in empty:
        weights = np.maximum(counts - 1.0, 0.0)
        if weights.sum() <= 0:
            break  # every cluster holds at most one point: nothing left to split
        cj = int(rng.choice(counts.size, p=weights / weights.sum()))
        base = centroids[cj].copy()
        # additive term keeps zero coordinates from staying identical after the split
        bump = SPLIT_EPS * (np.abs(base) + 1e-6) * sign
        centroids[ci] = base + bump
        centroids[cj] = base - bump
        counts[ci] = np.floor(counts[cj] / 2)
        counts[cj] -= counts[ci]
    return int(empty.size)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


ProgressCallback = Callable[[IterationStats], None]


def lloyd(
    assigner: Assigner,
    centroids: np.ndarray,
    n_iter: int,
    rng: np.random.Generator,
    *,
    spherical: bool = False,
    on_iteration: Optional[ProgressCallback] = None,
) -> KMeansFit:
    """``n_iter`` Lloyd iterations from the given centroids, then one final assignment.

    Every iteration assigns all rows, moves each non-empty centroid to the mean of its rows,
    re-seeds empty ones by splitting, and records objective, re-seeds, imbalance and seconds.
    ``spherical`` renormalises centroids (cosine k-means on unit-norm inputs).
    """
    c = np.array(centroids, dtype=np.float32, copy=True)
    k = c.shape[0]
    history: list[IterationStats] = []
    for it in range(n_iter):
        t0 = time.perf_counter()
        a = assigner.assign(c)
        nonempty = a.counts > 0
        c[nonempty] = (a.sums[nonempty] / a.counts[nonempty, None]).astype(np.float32)
        if spherical:
            c = normalize_rows(c)
        n_reseeded = split_empty_clusters(c, a.counts, rng)
        n = max(int(a.counts.sum()), 1)
        stats = IterationStats(
            iteration=it,
            objective=a.inertia,
            n_reseeded=n_reseeded,
            imbalance=float(k * np.square(a.counts.astype(np.float64)).sum() / (n * n)),
            seconds=time.perf_counter() - t0,
        )
        history.append(stats)
        if on_iteration is not None:
            on_iteration(stats)
    final = assigner.assign(c)
    return KMeansFit(centroids=c, counts=final.counts, objective=final.inertia, init_seconds=0.0, iterations=history)


def fit_kmeans_assigner(
    assigner: Assigner,
    k: int,
    rng: np.random.Generator,
    *,
    n_iter: int = 50,
    init: str = "k-means++",
    spherical: bool = False,
    init_points_per_centroid: int = DEFAULT_INIT_POINTS_PER_CENTROID,
    on_iteration: Optional[ProgressCallback] = None,
) -> KMeansFit:
    """Initialise on a sample, then run the Lloyd loop: the whole of one k-means."""
    t0 = time.perf_counter()
    c0 = init_centroids(assigner, k, rng, method=init, points_per_centroid=init_points_per_centroid)
    if spherical:
        c0 = normalize_rows(c0)
    init_seconds = time.perf_counter() - t0
    fit = lloyd(assigner, c0, n_iter, rng, spherical=spherical, on_iteration=on_iteration)
    fit.init_seconds = init_seconds
    return fit


def fit_kmeans(
    x: np.ndarray,
    n_clusters: int,
    *,
    n_iter: int = 50,
    metric: str = "l2",
    init: str = "k-means++",
    seed: int | np.random.Generator = 0,
) -> tuple[KMeansFit, np.ndarray, np.ndarray]:
    """Flat k-means on an in-memory array: (fit, labels, squared distances).

    Convenience for callers inside lakecurate (e.g. de-duplication's coarse clustering); the
    public estimator is :class:`lakecurate.HierarchicalKMeans` with one level.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    spherical = metric == "cosine"
    if spherical:
        x = normalize_rows(x)
    assigner = NumpyAssigner(x)
    fit = fit_kmeans_assigner(assigner, n_clusters, rng, n_iter=n_iter, init=init, spherical=spherical)
    labels, dist = assigner.labels(fit.centroids)
    return fit, labels, dist
