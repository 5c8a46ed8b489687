"""Hierarchical k-means with resampling (Vo et al. 2024, "Automatic Data Curation for SSL").

Level 1 clusters the data; level t > 1 clusters the centroids of level t-1, so the levels form a
tree whose leaves hold the data points. Within a level, after the first k-means, each of the m
resampling steps takes the r rows nearest every centroid, runs a fresh k-means (k-means++ init,
as the reference does) on their union, keeps those centroids and re-assigns all of the level's
inputs to them. This pulls centroids off dense modes and spreads them over the support.

``fit_hierarchy`` is the engine: it receives the level-1 assigner (in-process or Spark) and a
factory for the higher levels' assigners, so the pure API and the Spark stage run the same code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from lakecurate.core.assign import Assigner, RoutedCentroids
from lakecurate.core.in_process import NumpyAssigner
from lakecurate.errors import ClusteringWarning, warn_degraded
from lakecurate.core.kmeans import (
    DEFAULT_INIT_POINTS_PER_CENTROID,
    IterationStats,
    KMeansFit,
    fit_kmeans_assigner,
    normalize_rows,
)

if TYPE_CHECKING:
    from lakecurate.validation import HierarchySettings

log = logging.getLogger(__name__)


@dataclass
class LevelParams:
    """Validated parameters of one level (the public edge validates; this core trusts them)."""

    n_clusters: int
    resample_size: int = 1  # r; r <= 1 means no resampling at this level
    n_resampling_steps: int = 0
    n_iter: int = 50
    init: str = "k-means++"
    spherical: bool = False
    init_points_per_centroid: int = DEFAULT_INIT_POINTS_PER_CENTROID
    #: > 0: fit the level in two steps (:func:`fit_two_step_level`) with this many coarse clusters
    n_coarse: int = 0


@dataclass
class Level:
    """One fitted level of the tree.

    ``labels`` / ``distances`` describe this level's *inputs* (data rows at level 1, the previous
    level's clusters above); they are None for a level-1 fit that ran on Spark, where per-row
    labels stay on the executors and go straight to the ``assignments`` table.
    """

    level: int  # 1-based
    centroids: np.ndarray  # (k, d) float32
    counts: np.ndarray  # (k,) inputs per cluster
    sizes: np.ndarray  # (k,) data points under each cluster
    objective: float  # sum of squared distances of the inputs to their centroids
    cluster_inertia: Optional[np.ndarray] = None  # (k,) that sum per cluster
    labels: Optional[np.ndarray] = None
    distances: Optional[np.ndarray] = None
    n_reseeded: int = 0
    n_empty: int = 0
    seconds: float = 0.0
    steps: list[dict] = field(default_factory=list)  # per k-means run: init/resampling step figures
    #: a two-step level's coarse centroids and groups (rows reach ``centroids`` through them)
    routing: Optional[RoutedCentroids] = None

    @property
    def index(self):
        """What rows are assigned with: the routed centroids of a two-step level, else the centroids."""
        return self.routing if self.routing is not None else self.centroids

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])


def level_params(settings: "HierarchySettings", n_coarse: Sequence[int] = ()) -> list[LevelParams]:
    """One :class:`LevelParams` per level from checked settings (:func:`lakecurate.validation.check_hierarchy`)."""
    return [
        LevelParams(
            n_clusters=k,
            resample_size=r,
            n_resampling_steps=settings.n_resampling_steps,
            n_iter=settings.n_iter,
            init=settings.init,
            spherical=settings.metric == "cosine",
            init_points_per_centroid=settings.init_points_per_centroid,
            n_coarse=int(c),
        )
        for k, r, c in zip(settings.n_clusters, settings.resample_size, tuple(n_coarse) + (0,) * len(settings.n_clusters))
    ]


#: a level whose largest cluster holds more than this share of the data points is reported as degenerate
DOMINANT_SHARE = 0.8

LevelCallback = Callable[[int, int, IterationStats], None]  # (level, step, stats)


def _step_record(step: int, n_points: int, fit: KMeansFit) -> dict:
    return {
        "step": step,
        "n_points": n_points,
        "init_seconds": round(fit.init_seconds, 4),
        "objective": fit.objective,
        "n_reseeded": fit.n_reseeded,
        "iterations": [vars(it) for it in fit.iterations],
    }


def fit_level(
    assigner: Assigner,
    params: LevelParams,
    rng: np.random.Generator,
    *,
    level: int = 1,
    on_iteration: Optional[LevelCallback] = None,
) -> tuple[np.ndarray, list[dict], int]:
    """k-means on the level's inputs, then the resampling-clustering steps.

    Returns (centroids, per-step records, clusters re-seeded in total).
    """

    def kmeans(data: Assigner, step: int) -> KMeansFit:
        progress = None if on_iteration is None else (lambda stats: on_iteration(level, step, stats))
        return fit_kmeans_assigner(
            data,
            params.n_clusters,
            rng,
            n_iter=params.n_iter,
            init=params.init,
            spherical=params.spherical,
            init_points_per_centroid=params.init_points_per_centroid,
            on_iteration=progress,
        )

    fit = kmeans(assigner, 0)
    steps = [_step_record(0, assigner.n, fit)]
    reseeded = fit.n_reseeded
    centroids = fit.centroids
    if params.resample_size > 1:
        for step in range(1, params.n_resampling_steps + 1):
            _, points = assigner.closest_per_cluster(centroids, params.resample_size)
            if points.shape[0] < params.n_clusters:
                warn_degraded(
                    f"level {level} resampling step {step}: only {points.shape[0]} points near {params.n_clusters} "
                    f"centroids; resampling stopped after {step - 1} of {params.n_resampling_steps} steps",
                    ClusteringWarning, logger=log,
                )
                break
            # a fresh k-means++ on the union of the r-nearest points (the reference's behaviour)
            fit = kmeans(NumpyAssigner(points), step)
            steps.append(_step_record(step, points.shape[0], fit))
            reseeded += fit.n_reseeded
            centroids = fit.centroids
    return centroids, steps, reseeded


@dataclass
class FineFit:
    """The second step of a two-step level, for one coarse cluster: its share of the level's k,
    fitted with the level's k-means and resampling steps on the cluster's rows alone.

    Runs wherever the group's rows are (an executor, or in-process); its generator comes from
    ``(base_seed, group)`` only, so the result does not depend on where or in what order it runs.
    """

    params: LevelParams
    share: np.ndarray  # fine clusters per coarse cluster
    base_seed: int
    level: int

    def __call__(self, group: int, x: np.ndarray) -> np.ndarray:
        k = int(self.share[group])
        if k >= x.shape[0]:
            return np.array(x[:k], np.float32)  # as many centroids as rows: the rows themselves
        rng = np.random.default_rng(np.random.SeedSequence([self.base_seed, int(group)]))
        centroids, _, _ = fit_level(NumpyAssigner(x), replace(self.params, n_clusters=k, n_coarse=0), rng, level=self.level)
        return centroids


def fit_two_step_level(
    assigner: Assigner,
    params: LevelParams,
    rng: np.random.Generator,
    *,
    level: int = 1,
    on_iteration: Optional[LevelCallback] = None,
    before_groups: Optional[Callable[[int, np.ndarray], None]] = None,
) -> tuple[RoutedCentroids, np.ndarray, np.ndarray, list[dict], int]:
    """A level in two steps: k-means with ``params.n_coarse`` coarse clusters over all inputs, then
    inside each coarse cluster a k-means (with the level's resampling) with a share of
    ``params.n_clusters`` proportional to its size (the reference code's split of a huge level 1).

    No input is ever compared with more than ``n_coarse`` + its group's fine centroids, and no
    task holds more than one group's rows and centroids. ``before_groups(level, coarse counts)``
    may refuse the group pass (a group too large for a task). Returns (routed centroids, counts,
    per-cluster inertia, step records, clusters re-seeded).
    """
    from lakecurate.core.two_step import allocate_subclusters

    progress = None if on_iteration is None else (lambda stats: on_iteration(level, 0, stats))
    coarse = fit_kmeans_assigner(
        assigner, params.n_coarse, rng, n_iter=params.n_iter, init=params.init, spherical=params.spherical,
        init_points_per_centroid=params.init_points_per_centroid, on_iteration=progress,
    )
    if before_groups is not None:
        before_groups(level, coarse.counts)
    share = allocate_subclusters(coarse.counts, params.n_clusters)
    log.info("level %d two-step: %d coarse clusters (largest %d inputs); fine k per coarse cluster %d..%d",
             level, params.n_coarse, int(coarse.counts.max()), int(share[share > 0].min()), int(share.max()))
    t0 = time.perf_counter()
    fits = assigner.fit_groups(coarse.centroids, FineFit(params, share, int(rng.integers(2**62)), level))
    routed = RoutedCentroids(
        coarse=np.ascontiguousarray(coarse.centroids[[f.group for f in fits]]),
        offsets=np.r_[0, np.cumsum([f.centroids.shape[0] for f in fits])].astype(np.int64),
        fine=np.ascontiguousarray(np.concatenate([f.centroids for f in fits]), dtype=np.float32),
    )
    counts = np.concatenate([f.counts for f in fits])
    inertia = np.concatenate([f.inertia for f in fits])
    step = _step_record(0, assigner.n, coarse)
    step.update(two_step=True, coarse_clusters=params.n_coarse, coarse_objective=coarse.objective, objective=float(inertia.sum()),
                fine_groups=len(fits), fine_seconds=round(time.perf_counter() - t0, 3), largest_group=int(coarse.counts.max()))
    return routed, counts, inertia, [step], coarse.n_reseeded


AssignerFactory = Callable[[np.ndarray], Assigner]


def level_rngs(seed: int, n_levels: int) -> list[np.random.Generator]:
    """One independent generator per level, so a run resumed at level t draws what a fresh one would."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_levels)]


def fit_hierarchy(
    level1: Assigner,
    params: Sequence[LevelParams],
    seed: int,
    *,
    make_assigner: AssignerFactory = NumpyAssigner,
    on_iteration: Optional[LevelCallback] = None,
    on_level: Optional[Callable[[Level], None]] = None,
    start_levels: Sequence[Level] = (),
    before_groups: Optional[Callable[[int, np.ndarray], None]] = None,
) -> list[Level]:
    """Fit all levels bottom-up. ``start_levels`` resumes from levels already fitted (checkpoints).

    Level 1 runs on ``level1``; level t > 1 runs on ``make_assigner(centroids of level t-1)``.
    Level sizes count data points: a level-1 cluster's size is its row count, a higher cluster's
    size is the sum of its children's sizes.
    """
    levels: list[Level] = list(start_levels)
    rngs = level_rngs(seed, len(params))
    for idx in range(len(levels), len(params)):
        rng = rngs[idx]
        p = params[idx]
        t0 = time.perf_counter()
        if idx == 0:
            assigner = level1
            weights = None
        else:
            assigner = make_assigner(levels[-1].centroids)
            weights = levels[-1].sizes
        labels = distances = routing = None
        if p.n_coarse:
            log.info("level %d: two-step k-means with k=%d (%d coarse clusters) on %d inputs", idx + 1, p.n_clusters, p.n_coarse, assigner.n)
            routing, counts, cluster_inertia, steps, reseeded = fit_two_step_level(
                assigner, p, rng, level=idx + 1, on_iteration=on_iteration, before_groups=before_groups)
            centroids = routing.fine
            if assigner.in_memory or idx > 0:
                labels, distances = assigner.labels(routing)
        else:
            log.info("level %d: k-means with k=%d on %d inputs", idx + 1, p.n_clusters, assigner.n)
            centroids, steps, reseeded = fit_level(assigner, p, rng, level=idx + 1, on_iteration=on_iteration)
            if assigner.in_memory or idx > 0:
                # above level 1 the inputs are clusters: their labels (O(k_{t-1})) are the tree's edges
                labels, distances = assigner.labels(centroids)
                counts = np.bincount(labels, minlength=p.n_clusters).astype(np.int64)
                cluster_inertia = np.bincount(labels, weights=distances.astype(np.float64), minlength=p.n_clusters)
            else:
                final = assigner.assign(centroids)
                counts, cluster_inertia = final.counts, final.cluster_inertia
        objective = float(cluster_inertia.sum())
        if weights is None:
            sizes = counts.copy()
        else:
            sizes = np.bincount(labels, weights=weights, minlength=p.n_clusters).astype(np.int64)
        level = Level(
            level=idx + 1,
            centroids=centroids,
            counts=counts,
            sizes=sizes,
            objective=objective,
            cluster_inertia=cluster_inertia,
            labels=labels,
            distances=distances,
            n_reseeded=reseeded,
            n_empty=int((counts == 0).sum()),
            seconds=time.perf_counter() - t0,
            steps=steps,
            routing=routing,
        )
        warn_if_degraded(level)
        log.info(
            "level %d done in %.1fs: objective=%.6g, re-seeded=%d, empty=%d",
            level.level, level.seconds, level.objective, reseeded, level.n_empty,
        )
        levels.append(level)
        if on_level is not None:
            on_level(level)
    return levels


def warn_if_degraded(level: Level) -> None:
    """A :class:`~lakecurate.errors.ClusteringWarning` for each way a fitted level is worse than asked."""
    k = level.n_clusters
    if level.n_reseeded:
        warn_degraded(f"level {level.level}: empty clusters were re-seeded {level.n_reseeded} time(s) during the fit, each by "
                      f"splitting a populous one (k={k})", ClusteringWarning, logger=log)
    if level.n_empty:
        warn_degraded(f"level {level.level}: {level.n_empty} of {k} clusters are empty after the final assignment",
                      ClusteringWarning, logger=log)
    total = int(level.sizes.sum())
    if k >= 2 and total and level.sizes.max() > DOMINANT_SHARE * total:
        share = level.sizes.max() / total
        warn_degraded(f"level {level.level}: one of its {k} clusters holds {share:.0%} of the data points: the level may have found "
                      f"little structure in its inputs; balanced sampling gives each cluster of the level the same share of the "
                      f"target where its points allow, so the other clusters' {total - int(level.sizes.max()):,} points are "
                      f"taken at a far higher rate than the largest's; a tree with fewer levels, or fewer clusters at this "
                      f"level, may curate a more balanced subset", ClusteringWarning, logger=log)
    distinct = int(np.unique(level.centroids, axis=0).shape[0])
    if distinct < k:
        warn_degraded(f"level {level.level}: only {distinct} distinct centroids for k={k} (the inputs hold fewer "
                      f"distinct points than clusters)", ClusteringWarning, logger=log)


def parent_ids(levels: Sequence[Level]) -> list[Optional[np.ndarray]]:
    """For each level, the parent cluster (at the next level) of each of its clusters; None at the top."""
    return [levels[i + 1].labels for i in range(len(levels) - 1)] + [None]


__all__ = ["Level", "LevelParams", "fit_hierarchy", "fit_level", "fit_two_step_level", "level_params", "parent_ids", "normalize_rows"]
