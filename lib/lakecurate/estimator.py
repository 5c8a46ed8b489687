"""The public, Spark-free API: ``HierarchicalKMeans(...).fit(X)``, ``balanced_sample(tree, n)`` and
``target_coreset(pool, target)``.

Constructors only store parameters; ``fit`` validates once, at this edge, then hands validated
arrays to the private cores in :mod:`lakecurate.core`.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import numpy as np

from lakecurate.core.in_process import NumpyAssigner
from lakecurate.core.hierarchy import Level, LevelParams, fit_hierarchy, level_params, parent_ids
from lakecurate.core.kmeans import DEFAULT_INIT_POINTS_PER_CENTROID, normalize_rows
from lakecurate.core.coreset import CoresetResult, default_budget, greedy, in_memory_fetch, target_centroids
from lakecurate.core.sampling import ClusterTree, balanced_sample_from_tree
from lakecurate.errors import ConfigError, InputDataError
from lakecurate.validation import (STRATEGIES, check_choice, check_coreset_params, check_embeddings, check_hierarchy, check_int,
                                   check_levels, check_n_coarse)

log = logging.getLogger(__name__)

class HierarchicalKMeans:
    """Hierarchical k-means with resampling (Vo et al. 2024).

    Parameters
    ----------
    n_clusters : list of int, k_1 >= k_2 >= ... >= k_T (an int means one level).
    n_resampling_steps : resampling-clustering steps per level (m).
    resample_size : r per level (an int applies to every level); r <= 1 disables resampling.
        None (the default) disables it everywhere, giving plain hierarchical k-means.
    n_iter : Lloyd iterations per k-means run.
    init : "k-means++" (on a uniform sample of ``init_points_per_centroid * k`` rows) or "random".
    metric : "l2" (squared Euclidean on raw vectors) or "cosine" (rows and centroids normalised).
    seed : seeds every random choice; the same seed gives the same tree.
    n_coarse : per level (an int applies to every level): 0 fits the level with one k-means; C > 0
        fits it in two steps, a k-means with C coarse clusters, then one inside each coarse cluster
        with a share of the level's k (the Spark cluster stage's ``clustering.n_coarse``, same bits).

    Attributes after ``fit``: ``levels_`` (list of :class:`~lakecurate.core.hierarchy.Level`,
    level 1 first), ``tree_`` (:class:`~lakecurate.core.sampling.ClusterTree`), ``n_samples_``.
    """

    def __init__(
        self,
        n_clusters: Union[int, Sequence[int]],
        *,
        n_resampling_steps: int = 10,
        resample_size: Optional[Union[int, Sequence[int]]] = None,
        n_iter: int = 50,
        init: str = "k-means++",
        metric: str = "l2",
        init_points_per_centroid: int = DEFAULT_INIT_POINTS_PER_CENTROID,
        seed: int = 0,
        n_coarse: Union[int, Sequence[int]] = 0,
    ):
        self.n_clusters = n_clusters
        self.n_resampling_steps = n_resampling_steps
        self.resample_size = resample_size
        self.n_iter = n_iter
        self.init = init
        self.metric = metric
        self.init_points_per_centroid = init_points_per_centroid
        self.seed = seed
        self.n_coarse = n_coarse

    def _params(self) -> list[LevelParams]:
        settings = check_hierarchy(
            self.n_clusters,
            n_resampling_steps=self.n_resampling_steps,
            resample_size=self.resample_size,
            n_iter=self.n_iter,
            init=self.init,
            metric=self.metric,
            init_points_per_centroid=self.init_points_per_centroid,
        )
        coarse = check_n_coarse(self.n_coarse, settings.n_clusters, allow_auto=False)
        return level_params(settings, coarse)

    def fit(self, X, y=None) -> "HierarchicalKMeans":
        params = self._params()
        x = check_embeddings(X, metric=self.metric)
        check_levels([p.n_clusters for p in params], x.shape[0])
        if self.metric == "cosine":
            x = normalize_rows(x)
        self.levels_: list[Level] = fit_hierarchy(NumpyAssigner(x), params, int(self.seed))
        self.tree_ = ClusterTree([lv.sizes for lv in self.levels_], parent_ids(self.levels_))
        self.n_samples_ = x.shape[0]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "levels_"):
            raise ConfigError("this HierarchicalKMeans is not fitted yet; call fit(X) first")

    @property
    def labels_(self) -> np.ndarray:
        """Level-1 cluster of every input row."""
        self._check_fitted()
        return self.levels_[0].labels

    def leaf_path(self) -> np.ndarray:
        """(n, T) cluster id of every row at every level."""
        self._check_fitted()
        path = [self.levels_[0].labels]
        for lv in self.levels_[1:]:
            path.append(lv.labels[path[-1]])
        return np.stack(path, axis=1)


def balanced_sample(
    tree: HierarchicalKMeans,
    n: int,
    *,
    strategy: str = "random",
    seed: int = 0,
    max_repeats: int = 1,
) -> np.ndarray:
    """Indices of ``n`` rows sampled evenly down the cluster tree of a fitted ``HierarchicalKMeans``.

    Exactly ``n`` indices come back (ascending). ``n`` larger than the pool is an error unless
    ``max_repeats`` > 1 lets each row be drawn up to that many times.
    """
    if not isinstance(tree, HierarchicalKMeans):
        raise ConfigError(f"tree must be a fitted HierarchicalKMeans; got {type(tree).__name__}")
    tree._check_fitted()
    check_choice(strategy, STRATEGIES, "strategy")
    max_repeats = check_int(max_repeats, "max_repeats", minimum=1)
    n = check_int(n, "n", minimum=0)
    capacity = tree.n_samples_ * max_repeats
    if n > capacity:
        hint = "" if max_repeats > 1 else "; pass max_repeats > 1 to draw rows more than once"
        raise InputDataError(f"n={n} is larger than the pool of {tree.n_samples_} rows x max_repeats={max_repeats}{hint}")
    lv1 = tree.levels_[0]
    return balanced_sample_from_tree(
        tree.tree_, lv1.labels, lv1.distances, int(n), strategy=strategy, seed=seed, max_repeats=int(max_repeats)
    )


def target_coreset(
    pool,
    target,
    *,
    n_centroids: int = 100,
    budget: Optional[int] = None,
    patience: int = 20,
    stop_threshold: float = 0.95,
    seed: int = 0,
    candidates: int = 0,
    details: bool = False,
) -> Union[np.ndarray, CoresetResult]:
    """The rows of ``pool`` most like ``target``: SimCore's greedy with its stopping rule (Kim et al. 2023).

    ``pool`` (N, d) and ``target`` (M, d) are embeddings (any scale: rows are L2-normalised).
    The target is k-means'd into ``n_centroids`` centroids (every target row is one when
    ``n_centroids >= M``); in greedy rounds every centroid takes its most similar row not yet
    taken, until a round's mean similarity falls below ``stop_threshold`` x that of round
    ``patience``, or ``budget`` rows (default 50 x M, capped by N) are taken. The algorithm, its
    ties and its seeded cut are in :mod:`lakecurate.core.coreset`.

    Returns the sorted indices of the chosen pool rows; with ``details=True`` a
    :class:`~lakecurate.core.coreset.CoresetResult` (``.indices``, and per chosen row ``.centroid``,
    ``.similarity`` and ``.round``; ``.stop_reason``, ``.utilities`` per round). ``candidates``
    (rows per centroid held at first, 0 = from the budget) changes memory, never the result.
    """
    check_coreset_params(n_centroids, budget, patience, stop_threshold, seed, candidates)
    x = check_embeddings(pool, name="pool", metric="cosine")
    t = check_embeddings(target, name="target", metric="cosine")
    if t.shape[1] != x.shape[1]:
        raise InputDataError(f"target has dimension {t.shape[1]} but pool has dimension {x.shape[1]}: embed both with the same model")
    n_budget = default_budget(t.shape[0], x.shape[0]) if budget is None else min(int(budget), x.shape[0])
    centroids = target_centroids(t, int(n_centroids), seed=int(seed))
    unit = normalize_rows(x)
    keys = np.arange(x.shape[0], dtype=np.int64)
    result = greedy(in_memory_fetch(keys, unit, centroids), centroids.shape[0], budget=n_budget, pool_rows=x.shape[0],
                    patience=int(patience), stop_threshold=float(stop_threshold), seed=int(seed), candidates=int(candidates))
    result.centroids = centroids
    return result if details else result.keys
