"""Balanced hierarchical sampling (Vo et al. 2024, section 3.2).

Top-down, the target size is split among the top-level clusters by water-filling, then each
cluster's share among its children, down to level 1; inside a level-1 cluster the share is
chosen by a strategy. Two halves, so the Spark stage can run the second one on executors:

* ``hierarchical_quotas`` works on the cluster tree only (sizes and parents, O(k)), on the driver;
* ``select_within_clusters`` picks rows given per-row (cluster, distance, row) and the quotas.
  Its "random" strategy orders rows by a counter-based key of (seed, row), so the same rows come
  out in-process and on any Spark partitioning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from lakecurate.core.keys import random_keys
from lakecurate.errors import ConfigError, SamplingWarning, warn_degraded
from lakecurate.validation import STRATEGIES

log = logging.getLogger(__name__)
#: Key stream for within-cluster random ordering (separate from other uses of the seed).
_SELECTION_STREAM = 1


def water_fill_quotas(sizes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``n`` among clusters as evenly as their sizes allow.

    Finds the largest cap c with sum_i min(c, size_i) <= n, gives each cluster min(c, size_i),
    then hands the remainder out one by one to distinct clusters still above the cap, chosen at
    random. The result sums to exactly ``min(n, sum(sizes))``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if n >= total:
        return sizes.copy()
    if n <= 0:
        return np.zeros_like(sizes)
    sorted_sizes = np.sort(sizes)
    prefix = np.concatenate([[0], np.cumsum(sorted_sizes)])

    def filled(c: int) -> int:
        below = int(np.searchsorted(sorted_sizes, c, side="right"))  # sizes <= c
        return int(prefix[below]) + c * (sizes.size - below)

    lo, hi = 0, int(sorted_sizes[-1])  # filled(lo) <= n < filled(hi) since n < total
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if filled(mid) <= n:
            lo = mid
        else:
            hi = mid
    quotas = np.minimum(sizes, lo)
    remainder = n - int(quotas.sum())
    if remainder:
        above = np.flatnonzero(sizes > lo)
        quotas[rng.choice(above, size=remainder, replace=False)] += 1
    return quotas


@dataclass
class ClusterTree:
    """The shape of a fitted hierarchy, all the sampler needs: sizes and parents per level.

    ``sizes[t]`` counts data points under each cluster of level t+1; ``parents[t]`` maps each
    level-(t+1) cluster to its parent at level t+2 (None at the top level).
    """

    sizes: list[np.ndarray]
    parents: list[Optional[np.ndarray]]

    @property
    def n_points(self) -> int:
        return int(self.sizes[0].sum())


def hierarchical_quotas(tree: ClusterTree, n: int, rng: np.random.Generator, *, max_repeats: int = 1) -> np.ndarray:
    """How many points to draw from each level-1 cluster (sums to exactly n when n <= capacity).

    ``max_repeats`` lets a point be drawn up to that many times (capacity = pool * max_repeats).
    Children are visited parent by parent in cluster-id order, so the draws are reproducible.
    """
    levels = len(tree.sizes)
    quotas = water_fill_quotas(tree.sizes[-1] * max_repeats, n, rng)
    for t in range(levels - 2, -1, -1):
        parent = tree.parents[t]
        child_sizes = tree.sizes[t] * max_repeats
        child_quotas = np.zeros(child_sizes.size, dtype=np.int64)
        order = np.argsort(parent, kind="stable")
        bounds = np.searchsorted(parent[order], np.arange(quotas.size + 1))
        for p in np.flatnonzero(quotas):
            children = order[bounds[p] : bounds[p + 1]]
            child_quotas[children] = water_fill_quotas(child_sizes[children], int(quotas[p]), rng)
        quotas = child_quotas
    pool = tree.n_points
    if n > pool:
        warn_degraded(f"a target of {n} rows is more than the pool of {pool}: every row is drawn, "
                      f"some up to {int(np.max(-(-quotas // np.maximum(tree.sizes[0], 1))))} times", SamplingWarning, logger=log)
    elif n == pool:
        warn_degraded(f"a target of {n} rows takes the whole pool: nothing is left out, so nothing is balanced", SamplingWarning, logger=log)
    return quotas


def selection_keys(rows: np.ndarray, distances: np.ndarray, strategy: str, seed: int) -> np.ndarray:
    """Per-row sort key inside a level-1 cluster: smaller keys are chosen first (ties: row)."""
    if strategy == "random":
        return (random_keys(rows, seed, _SELECTION_STREAM) >> np.uint64(1)).astype(np.int64)
    if strategy == "closest":
        return np.asarray(distances, dtype=np.float32)
    if strategy == "furthest":
        return -np.asarray(distances, dtype=np.float32)
    raise ConfigError(f"strategy={strategy!r} is not one of {list(STRATEGIES)}")


def select_within_clusters(
    labels: np.ndarray,
    distances: np.ndarray,
    rows: np.ndarray,
    quotas: np.ndarray,
    *,
    strategy: str = "random",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows chosen from each level-1 cluster: its first ``quotas[c]`` rows by the strategy's key.

    When a quota exceeds the cluster's size (repeats allowed), every row is taken
    ``quota // size`` times and the first ``quota % size`` once more.
    Returns (chosen rows ascending, with repeats; their rank inside the cluster).
    """
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    key = selection_keys(rows, distances, strategy, seed)
    order = np.lexsort((rows, key, labels))
    lab_sorted = labels[order]
    starts = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]]) if lab_sorted.size else np.array([], np.int64)
    group_sizes = np.diff(np.r_[starts, lab_sorted.size])
    rank = np.arange(lab_sorted.size) - np.repeat(starts, group_sizes)
    size_of = np.repeat(group_sizes, group_sizes)
    quota = quotas[lab_sorted]
    times = quota // size_of + (rank < quota % size_of)
    chosen = np.repeat(rows[order], times)
    chosen_rank = np.repeat(rank, times)
    by_row = np.argsort(chosen, kind="stable")
    return chosen[by_row], chosen_rank[by_row]


def balanced_sample_from_tree(
    tree: ClusterTree,
    labels: np.ndarray,
    distances: np.ndarray,
    n: int,
    *,
    strategy: str = "random",
    seed: int = 0,
    max_repeats: int = 1,
) -> np.ndarray:
    """Quotas down the tree, then selection inside level-1 clusters; rows = 0..N-1."""
    rng = np.random.default_rng(seed)
    quotas = hierarchical_quotas(tree, n, rng, max_repeats=max_repeats)
    rows = np.arange(labels.shape[0], dtype=np.int64)
    chosen, _ = select_within_clusters(labels, distances, rows, quotas, strategy=strategy, seed=seed)
    return chosen


def tree_from_levels(sizes: Sequence[np.ndarray], parents: Sequence[Optional[np.ndarray]]) -> ClusterTree:
    return ClusterTree([np.asarray(s, dtype=np.int64) for s in sizes], [None if p is None else np.asarray(p, np.int64) for p in parents])
