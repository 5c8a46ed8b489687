"""The assigner seam: the only way the Lloyd loop touches data.

Every row has an int64 *row key*: its position for an in-memory array, its id (or a stable hash
of a string id) on Spark. Random draws and tie-breaks use row keys only, so the in-process and
the Spark implementation pick the same rows whatever the partitioning.

Like faiss's ``contrib/clustering.py``, one k-means loop works on any data that can answer four
questions: how many rows (``n``) of what width (``d``); give me these rows (``take_rows``);
assign every row to its nearest centroid and return per-cluster counts, sums and the objective
(``assign``); and give me the r rows nearest each centroid (``closest_per_cluster``).
``lakecurate.core.in_process.NumpyAssigner`` answers them in-process with faiss; ``lakecurate.spark.assigner.SparkAssigner``
answers them with Spark jobs over a cached DataFrame. Both call the per-batch kernels below, so
they compute the same numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, runtime_checkable

import faiss
import numpy as np
import scipy.sparse as sp


#: Rows handed to faiss per call (in-process): bounds the per-call temporaries.
DEFAULT_BATCH_ROWS = 65536


@dataclass
class Assignment:
    """Result of assigning every input row to its nearest centroid."""

    counts: np.ndarray  # (k,) int64: rows per cluster
    sums: np.ndarray  # (k, d) float64: sum of the rows of each cluster
    inertia: float  # sum of squared distances to the nearest centroid
    cluster_inertia: np.ndarray  # (k,) float64: that sum per cluster

    @classmethod
    def zeros(cls, k: int, d: int) -> "Assignment":
        return cls(np.zeros(k, np.int64), np.zeros((k, d)), 0.0, np.zeros(k))

    def __add__(self, other: "Assignment") -> "Assignment":
        return Assignment(
            self.counts + other.counts,
            self.sums + other.sums,
            self.inertia + other.inertia,
            self.cluster_inertia + other.cluster_inertia,
        )


@runtime_checkable
class Assigner(Protocol):
    """What the Lloyd loop needs from a data set."""

    n: int
    d: int
    #: True when per-row labels can be held in driver memory (``labels`` is cheap).
    in_memory: bool

    def sample(self, size: int, salt: int) -> np.ndarray:
        """``size`` rows drawn uniformly without replacement, float32 (size, d).

        The rows are those with the smallest ``random_keys(row key, salt)``, in that order, so the
        draw depends on the salt and the rows' keys only, never on partitioning or batch order.
        """

    def assign(self, centroids: np.ndarray) -> Assignment:
        """Nearest-centroid counts, sums and objective over all rows."""

    def closest_per_cluster(self, centroids: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        """The r rows nearest each centroid (fewer when a cluster is smaller).

        Returns (row indices ascending, float32 rows in that order). Ties in distance break by
        row index so every implementation selects the same rows.
        """

    def labels(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label int64 (n,), squared distance float32 (n,)) of every row."""

    def fit_groups(self, coarse: np.ndarray, fit_one: "GroupFitter") -> list["GroupFit"]:
        """Group the rows by nearest ``coarse`` centroid and fit each group apart (a two-step level).

        ``fit_one(group, rows)`` gets a non-empty group's rows in row-key order and returns its fine
        centroids; each group's rows are then assigned to those (counts, inertia). Returns the
        non-empty groups in ascending order. One group's rows are held in one place at a time.
        """


@dataclass
class GroupFit:
    """One coarse cluster's fit in a two-step level."""

    group: int  # the coarse cluster
    centroids: np.ndarray  # (k_g, d) float32 fine centroids
    counts: np.ndarray  # (k_g,) int64: the group's rows per fine centroid
    inertia: np.ndarray  # (k_g,) float64: their squared distances summed


#: ``fit_one(group, rows) -> (k_g, d) float32 centroids``; must pickle (it runs on executors).
GroupFitter = Callable[[int, np.ndarray], np.ndarray]


def fit_group(group: int, x: np.ndarray, fit_one) -> GroupFit:
    """``fit_one`` on one group's rows, then the group's counts and inertia (both assigners use this)."""
    cent = np.ascontiguousarray(fit_one(group, x), dtype=np.float32)
    lab, dist = nearest_centroid(x, cent)
    k = cent.shape[0]
    return GroupFit(group, cent, np.bincount(lab, minlength=k).astype(np.int64),
                    np.bincount(lab, weights=dist.astype(np.float64), minlength=k))


# ---------------------------------------------------------------- per-batch kernels


#: Rows per chunk when re-computing candidate distances and forming float64 sums: the chunk's
#: temporaries stay in cache (2.5-5x faster than whole-batch temporaries on this project's
#: machines; distances are the same bits, sums add the same float32 values in float64).
CHUNK_ROWS = 2048

#: ``LAKECURATE_FAISS_DEVICE=cpu`` keeps faiss on the CPU even where a GPU is visible.
_DEVICE_ENV = "LAKECURATE_FAISS_DEVICE"
_gpu_state: dict = {"device": None, "resources": None, "count": None}


def faiss_device() -> str:
    """``"gpu"`` when faiss was built with GPU support and this process sees a GPU, else ``"cpu"``.

    The one place the assignment chooses its device: an executor with a GPU (Spark's
    ``spark.task.resource.gpu.amount``) and ``faiss-gpu`` installed searches on the GPU through
    the same kernels below; everything after the candidate search stays on the CPU, so labels and
    distances are the same bits on either device.
    """
    if os.environ.get(_DEVICE_ENV, "auto").lower() == "cpu":
        return "cpu"
    if _gpu_state["count"] is None:  # asked once per process (a CUDA call in GPU builds)
        get = getattr(faiss, "get_num_gpus", None)
        _gpu_state["count"] = get() if get is not None else 0
    return "gpu" if _gpu_state["count"] > 0 else "cpu"


def use_gpu_device(device: Optional[int]) -> None:
    """Pin this process's faiss GPU searches to ``device`` (e.g. the GPU Spark gave the task)."""
    if device != _gpu_state["device"]:
        _gpu_state["device"] = device
        _gpu_state["resources"] = None


def _gpu_resources():
    if _gpu_state["resources"] is None:
        _gpu_state["resources"] = faiss.StandardGpuResources()  # on the device knn_gpu is given
    return _gpu_state["resources"]


def knn_candidates(x: np.ndarray, centroids: np.ndarray, kk: int, with_distances: bool = False):
    """Indices (n, kk) of the kk nearest centroids by faiss's matrix-multiply search (CPU or GPU);
    with ``with_distances``, (faiss's float32 squared distances, indices)."""
    if faiss_device() == "gpu":
        dev = _gpu_state["device"]
        dist, cand = faiss.knn_gpu(_gpu_resources(), x, centroids, kk, device=-1 if dev is None else int(dev))
    else:
        dist, cand = faiss.knn(x, centroids, kk)
    return (dist, cand) if with_distances else cand


#: float32 unit roundoff
_UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2
#: relative slack for the row-wise re-computed squared distances (float32 sums of d squares)
RECOMPUTE_SLACK = 1e-4


def search_error(x_sq: np.ndarray, c_sq_max: float, d: int) -> np.ndarray:
    """A bound on the error of faiss's float32 squared distance ||x||^2 + ||c||^2 - 2 x.c (BLAS):
    (d + 3) roundings of terms no larger than ||x||^2 + ||c||^2, twice over for the dot product."""
    return 2.0 * (d + 3) * _UNIT_ROUNDOFF * (x_sq + c_sq_max)


def rowwise_sq_dist(x: np.ndarray, c: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """||x_i - c[lab_i]||^2 per row; each row's value depends on that row alone (not on chunking)."""
    out = np.empty(x.shape[0], np.float32)
    for s in range(0, x.shape[0], CHUNK_ROWS):
        diff = x[s : s + CHUNK_ROWS] - c[lab[s : s + CHUNK_ROWS]]
        out[s : s + CHUNK_ROWS] = np.square(diff, out=diff).sum(axis=1)
    return out


@dataclass
class RoutedCentroids:
    """A two-step level's centroids: each row goes to its nearest coarse centroid, then to the
    nearest fine centroid of that coarse cluster (:func:`lakecurate.core.hierarchy.fit_two_step_level`).

    ``fine`` holds every coarse cluster's fine centroids one group after another; group g's are
    ``fine[offsets[g]:offsets[g + 1]]`` and a row's label is its index in ``fine``. Only coarse
    clusters that received fine centroids are kept, so every row has somewhere to go. A row's
    label depends on that row alone (two exact nearest-centroid searches), whatever the batch.
    """

    coarse: np.ndarray  # (g, d) float32
    offsets: np.ndarray  # (g + 1,) int64, offsets[0] = 0, offsets[-1] = k
    fine: np.ndarray  # (k, d) float32

    @property
    def shape(self) -> tuple[int, int]:
        return self.fine.shape

    @property
    def n_groups(self) -> int:
        return int(self.coarse.shape[0])

    def group(self, g: int) -> np.ndarray:
        return self.fine[self.offsets[g] : self.offsets[g + 1]]

    def search(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64, squared distances float32) of the rows of ``x``."""
        groups, _ = nearest_centroid(x, self.coarse)
        labels = np.zeros(x.shape[0], np.int64)
        dist = np.zeros(x.shape[0], np.float32)
        order = np.argsort(groups, kind="stable")
        bounds = np.r_[0, np.cumsum(np.bincount(groups, minlength=self.n_groups))]
        for g in np.flatnonzero(np.diff(bounds)):
            rows = order[bounds[g] : bounds[g + 1]]
            lab, d = nearest_centroid(x[rows], self.group(int(g)))
            labels[rows] = lab + self.offsets[g]
            dist[rows] = d
        return labels, dist


def as_centroids(c):
    """float32 centroids as the kernels take them: an array, or a two-step level's routed centroids."""
    return c if isinstance(c, RoutedCentroids) else np.ascontiguousarray(c, dtype=np.float32)


def nearest_centroid(x: np.ndarray, centroids) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest centroid by squared L2: (labels int64, squared distances float32).

    ``centroids`` is a (k, d) array or :class:`RoutedCentroids` (a two-step level: nearest coarse
    centroid, then nearest fine centroid inside it).

    The label is the centroid with the smallest row-wise distance (:func:`rowwise_sq_dist`, from the
    difference vector), the lowest index on a tie: a function of (row, centroids) alone, whatever
    the batch or the BLAS. faiss's matrix-product search finds the nearest candidates; where its
    second is farther than the product's rounding can explain (:func:`search_error`: most rows),
    the first is that centroid and only its distance is re-computed. The other rows re-score every
    centroid within the rounding window (:func:`in_window`): a re-seeded cluster's split copies
    put three or more there, and the two best alone missed the nearest (one row in 20 000).

    The same rule on a GPU (faiss's ``knn_gpu``): its float32 GEMM obeys the same bound
    (:func:`search_error` holds for any order of the d products' sums), so the labels and
    distances are the CPU's bits. (A GPU search once re-scored only its two best candidates, which
    misses the nearest where three or more lie in the window.) ``bench/gpu_check.py`` compares
    the two devices' labels on a GPU machine.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if isinstance(centroids, RoutedCentroids):
        return centroids.search(x)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    k = c.shape[0]
    kk = min(WINDOW_CANDIDATES, k)
    dist, cand = knn_candidates(x, c, kk, with_distances=True)

    best_lab = cand[:, 0].astype(np.int64)
    best = rowwise_sq_dist(x, c, best_lab)
    if kk >= 2:  # settle by re-score the rows where the product's rounding could have ranked wrongly
        x_sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        err = search_error(x_sq, float(np.einsum("ij,ij->i", c, c, dtype=np.float64).max()), x.shape[1])
        d = dist.astype(np.float64)
        rows = np.flatnonzero(close_pair(d[:, 0], d[:, 1], err))
        if rows.size:
            inside = in_window(d[rows], err[rows])
            wide = inside[:, -1] & (kk < k)  # the window may hold centroids beyond the kk the search returned
            if wide.any():
                best_lab[rows[wide]], best[rows[wide]] = nearest_by_rescore(x[rows[wide]], c, x_sq[rows[wide]], err[rows[wide]])
            r, j = np.nonzero(inside[~wide])
            if r.size:
                sub = rows[~wide]
                at, lab, dd = rescore_candidates(x, c, sub[r], cand[sub[r], j].astype(np.int64))
                best_lab[at], best[at] = lab, dd
    return best_lab, best.astype(np.float32)


#: Candidates the search returns per row, on a CPU or a GPU alike: rows whose best few all lie within the rounding window
#: (measured on the benchmark pool: 4 in the window for 0.1-0.7% of rows, 2 for 9-18%) are
#: re-scored against every centroid; the others among these alone.
WINDOW_CANDIDATES = 4


def tile_rows(k: int) -> int:
    """Rows per (rows x k) product tile: at most 1024, fewer at large k so a tile stays ~16 MB."""
    return int(max(16, min(1024, (1 << 22) // max(k, 1))))


def close_pair(d1: np.ndarray, d2: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Rows whose two best product distances (float64, with ||x||^2) are within what the product's
    rounding (``err``, :func:`search_error`) and the re-score's slack can explain."""
    return d2 - d1 <= 2.0 * err + 2.0 * RECOMPUTE_SLACK * np.abs(d2)


def in_window(p: np.ndarray, err: np.ndarray) -> np.ndarray:
    """(rows, m) bool: the product distances (float64, with ||x||^2; +inf for none) within the
    rounding window of each row's best, as :func:`close_pair` has it. A centroid outside is provably
    farther row-wise than the row-wise nearest, so only these can be it."""
    return np.isfinite(p) & close_pair(p.min(1, keepdims=True), p, err[:, None])


def rescore_candidates(x: np.ndarray, c: np.ndarray, rows: np.ndarray, labels: np.ndarray):
    """(rows, labels, float32 distances), one per distinct row of ``rows`` (sorted): the smallest
    row-wise distance among that row's candidate ``labels``, the lowest label on a tie."""
    d = rowwise_sq_dist(x[rows], c, labels)
    o = np.lexsort((labels, d, rows))
    first = o[np.r_[True, rows[o][1:] != rows[o][:-1]]]
    return rows[first], labels[first], d[first]


def nearest_by_rescore(x: np.ndarray, c: np.ndarray, x_sq: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, float32 distances) of every row against every centroid: the product over all k, then
    :func:`rescore_candidates` over those :func:`in_window` (for the few rows whose window holds
    more candidates than were found)."""
    n, k = x.shape[0], c.shape[0]
    lab, out = np.empty(n, np.int64), np.empty(n, np.float32)
    cm2_t = np.ascontiguousarray(-2.0 * c.T)
    c_sq = np.einsum("ij,ij->i", c, c)
    ch = tile_rows(k)
    for s in range(0, n, ch):
        e = min(n, s + ch)
        p = (x[s:e] @ cm2_t + c_sq[None, :]).astype(np.float64) + x_sq[s:e, None]
        r, j = np.nonzero(in_window(p, err[s:e]))  # every row has its best
        _, lab[s:e], out[s:e] = rescore_candidates(x[s:e], c, r, j)
    return lab, out


#: How partial sums are formed: ``sparse`` one-hot matmul (default) or ``add_at`` (np.add.at,
#: kept only so the benchmark can show the difference).
SUMS_METHODS = ("sparse", "add_at")


def cluster_sums(x: np.ndarray, labels: np.ndarray, k: int, method: str = "sparse") -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster (counts, float64 sums) by a sparse one-hot matmul per 2048-row chunk (faster than np.add.at).

    Sums accumulate in float64 so that adding partial sums from Spark partitions in any order
    rounds to the same float32 centroids as one in-process pass.
    """
    n = x.shape[0]
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    if method == "add_at":
        sums = np.zeros((k, x.shape[1]))
        np.add.at(sums, labels, x.astype(np.float64, copy=False))
        return counts, sums
    sums = np.zeros((k, x.shape[1]))
    for s in range(0, n, CHUNK_ROWS):  # the chunk's float64 copy stays in cache: ~2.5x faster than one copy
        lab = labels[s : s + CHUNK_ROWS]
        onehot = sp.csr_matrix((np.ones(lab.size), (lab, np.arange(lab.size))), shape=(k, lab.size))
        sums += onehot @ x[s : s + CHUNK_ROWS].astype(np.float64)
    return counts, sums


def assign_batch(x: np.ndarray, centroids: np.ndarray, sums_method: str = "sparse") -> Assignment:
    """Assignment statistics of one batch of rows."""
    lab, dist = nearest_centroid(x, centroids)
    k = centroids.shape[0]
    counts, sums = cluster_sums(x, lab, k, sums_method)
    per_cluster = np.bincount(lab, weights=dist.astype(np.float64), minlength=k)
    return Assignment(counts, sums, float(per_cluster.sum()), per_cluster)


def smallest_keys(keys: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """Positions of the ``size`` smallest (key, row) pairs, in that order (mergeable across batches)."""
    if keys.size > size:
        cut = np.argpartition(keys, size - 1)[:size]
        kth = keys[cut].max()
        cand = np.flatnonzero(keys <= kth)  # keep every tie of the cut-off key, sorted out below
    else:
        cand = np.arange(keys.size)
    order = cand[np.lexsort((rows[cand], keys[cand]))]
    return order[:size]


def top_r_per_cluster(labels: np.ndarray, dist: np.ndarray, rows: np.ndarray, r: int) -> np.ndarray:
    """Positions of the r smallest (distance, row) entries within each label.

    Used per batch on executors, again on the merged candidates, and in-process: the global
    top-r is the top-r of the per-batch top-r's, so any partitioning gives the same rows.
    """
    order = np.lexsort((rows, dist, labels))
    lab_sorted = labels[order]
    starts = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, lab_sorted.size]))
    rank = np.arange(lab_sorted.size) - group_start
    return order[rank < r]
