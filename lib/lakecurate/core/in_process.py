"""The in-process assigner: a float32 array answers the :class:`~lakecurate.core.assign.Assigner`
questions with faiss (the pure API, and levels 2..T on the driver), its passes optionally pruned
by group bounds (:mod:`lakecurate.core.pruning`).

Its own module so that ``core/assign`` (the kernels) and ``core/pruning`` (bounds over those
kernels) import one way only: this module uses both.
"""

from __future__ import annotations

import numpy as np

from lakecurate.core import pruning
from lakecurate.core.assign import (DEFAULT_BATCH_ROWS, Assignment, GroupFit, RoutedCentroids, assign_batch, faiss_device,
                                    fit_group, nearest_centroid, smallest_keys, top_r_per_cluster)
from lakecurate.core.keys import random_keys


class NumpyAssigner:
    """In-process assigner over a float32 array (the pure API, and levels 2..T on the driver)."""

    in_memory = True

    def __init__(self, x: np.ndarray, batch_rows: int = DEFAULT_BATCH_ROWS, prune: bool = False):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.n, self.d = self.x.shape
        self.batch_rows = batch_rows
        #: group bounds between passes (:mod:`lakecurate.core.pruning`): same results, fewer products
        self.prune = prune
        self._tracker = None
        self._bounds: dict = {}  # batch start -> Bounds of the last pass
        self.prune_stats = None  # PruneStats of the last pass, when it used bounds

    def _batches(self):
        for start in range(0, self.n, self.batch_rows):
            yield start, self.x[start : start + self.batch_rows]

    def sample(self, size: int, salt: int) -> np.ndarray:
        rows = np.arange(self.n, dtype=np.int64)
        return self.x[smallest_keys(random_keys(rows, salt), rows, size)]

    def assign(self, centroids: np.ndarray) -> Assignment:
        step = None
        if self.prune and not isinstance(centroids, RoutedCentroids) and faiss_device() == "cpu":
            if self._tracker is None:
                self._tracker = pruning.BoundsTracker()
            step = self._tracker.step(centroids)
        total = Assignment.zeros(centroids.shape[0], self.d)
        if step is None:
            self._bounds = {}
            for _, xb in self._batches():
                total = total + assign_batch(xb, centroids)
            return total
        stats = pruning.PruneStats()
        pp = pruning.prepare_pass(centroids, step)
        for start, xb in self._batches():
            acc, self._bounds[start], st = pruning.assign_batch_pruned(xb, pp, self._bounds.get(start))
            total, stats = total + acc, stats + st
        self.prune_stats = stats
        return total

    def labels(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labs, dists = [], []
        for _, xb in self._batches():
            lab, dist = nearest_centroid(xb, centroids)
            labs.append(lab)
            dists.append(dist)
        return np.concatenate(labs), np.concatenate(dists)

    def fit_groups(self, coarse: np.ndarray, fit_one) -> list[GroupFit]:
        groups, _ = self.labels(coarse)
        order = np.argsort(groups, kind="stable")  # rows of each group in row order
        bounds = np.r_[0, np.cumsum(np.bincount(groups, minlength=coarse.shape[0]))]
        return [fit_group(g, self.x[order[bounds[g] : bounds[g + 1]]], fit_one)
                for g in range(coarse.shape[0]) if bounds[g + 1] > bounds[g]]

    def closest_per_cluster(self, centroids: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        lab, dist = self.labels(centroids)
        rows = np.arange(self.n, dtype=np.int64)
        chosen = np.sort(rows[top_r_per_cluster(lab, dist, rows, r)])
        return chosen, self.x[chosen]
