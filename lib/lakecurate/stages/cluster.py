"""Cluster stage: hierarchical k-means over the input embeddings -> ``clusters`` and ``assignments``.

Level 1 runs on the executors (the Spark assigner over cached blocks). Levels 2..T take the
previous level's centroids: in-process on the driver when they number at most
``clustering.driver_max_rows``, else on the executors through the same assigner. Each fitted
level is checkpointed, so a killed job resumes at the next level; the two tables are committed at
the end, the tree (clusters) first, then the rows pointing into it (assignments), each as one table
version; the stage's ``succeeded`` row in ``runs`` marks them as belonging together.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from lakecurate.core.assign import NumpyAssigner
from lakecurate.core.hierarchy import Level, fit_hierarchy, parent_ids
from lakecurate.core.kmeans import normalize_rows
from lakecurate.faults import fault_point
from lakecurate.spark.arrow import matrix_to_list_array
from lakecurate.spark.assigner import SparkAssigner
from lakecurate.spark.assignments import assignment_rows
from lakecurate.spark.blocks import EmbeddingBlocks
from lakecurate.spark.two_step import fit_level1_two_step
from lakecurate.stages.checkpoints import LevelCheckpoints
from lakecurate.stages.context import Stage, StageContext
from lakecurate.tables import ASSIGNMENTS, CLUSTERS
from lakecurate.validation import check_levels

log = logging.getLogger(__name__)


def clusters_table(levels: list[Level]) -> pa.Table:
    """One row per cluster per level: the tree, its sizes, centroids and quality figures."""
    parents = parent_ids(levels)
    cols: dict[str, list] = {k: [] for k in ("level", "cluster_id", "parent_id", "n_children", "size", "inertia", "radius")}
    centroid_blocks = []
    for lv, par in zip(levels, parents):
        k = lv.n_clusters
        inertia = lv.cluster_inertia if lv.cluster_inertia is not None else np.zeros(k)
        counts = lv.counts.astype(np.float64)
        cols["level"].append(np.full(k, lv.level, np.int32))
        cols["cluster_id"].append(np.arange(k, dtype=np.int32))
        cols["parent_id"].append(pa.array(par.astype(np.int32)) if par is not None else pa.nulls(k, pa.int32()))
        cols["n_children"].append(lv.counts.astype(np.int64))
        cols["size"].append(lv.sizes.astype(np.int64))
        cols["inertia"].append(inertia.astype(np.float64))
        cols["radius"].append(np.sqrt(np.divide(inertia, counts, out=np.zeros(k), where=counts > 0)))
        centroid_blocks.append(lv.centroids)
    table = {
        "level": pa.array(np.concatenate(cols["level"])),
        "cluster_id": pa.array(np.concatenate(cols["cluster_id"])),
        "parent_id": pa.concat_arrays(cols["parent_id"]),
        "n_children": pa.array(np.concatenate(cols["n_children"])),
        "size": pa.array(np.concatenate(cols["size"])),
        "centroid": matrix_to_list_array(np.concatenate(centroid_blocks)),
        "inertia": pa.array(np.concatenate(cols["inertia"])),
        "radius": pa.array(np.concatenate(cols["radius"])),
    }
    return pa.table(table)


def level_metrics(lv: Level, n_inputs: int) -> dict:
    return {
        "level": lv.level,
        "n_clusters": lv.n_clusters,
        "n_inputs": n_inputs,
        "objective": lv.objective,
        "n_reseeded": lv.n_reseeded,
        "n_empty": lv.n_empty,
        "seconds": round(lv.seconds, 3),
        "largest_cluster": int(lv.sizes.max()),
        "smallest_cluster": int(lv.sizes.min()),
        "steps": lv.steps,
    }


def _log_iteration(n_iters: list[int]):
    def progress(level: int, step: int, it) -> None:
        # per-iteration lines for slow iterations; fast in-process levels only log their last
        last = it.iteration + 1 == n_iters[level - 1]
        log.log(
            logging.INFO if (it.seconds >= 0.5 or last) else logging.DEBUG,
            "level %d step %d iter %d/%d: objective=%.6g reseeded=%d imbalance=%.3f %.2fs",
            level, step, it.iteration + 1, n_iters[level - 1], it.objective, it.n_reseeded, it.imbalance, it.seconds,
        )
        fault_point("cluster:iteration", level=level, iteration=it.iteration + 1)

    return progress


def run_cluster(ctx: StageContext, metrics: dict) -> None:
    cfg = ctx.config
    ccfg = cfg.clustering
    params = ctx.plan.levels
    t0 = time.perf_counter()
    blocks = ctx.input_blocks("cluster", transform=normalize_rows if ccfg.metric == "cosine" else None)
    assigner = SparkAssigner(blocks)
    upper: list[EmbeddingBlocks] = []  # levels 2..T run on the executors
    metrics.update(n_rows=blocks.n, dim=blocks.d, cache_seconds=round(time.perf_counter() - t0, 3))
    try:
        check_levels([p.n_clusters for p in params], blocks.n, key="clustering.n_clusters")
        checkpoints = LevelCheckpoints(ctx.lake, ctx.run_id, ctx.plan.fingerprint)
        start = checkpoints.load(len(params))
        if not start and ccfg.level1_coarse_clusters:  # very large k_1: level 1 in two steps
            start = [fit_level1_two_step(assigner, params[0], ccfg.level1_coarse_clusters, ccfg.seed)]
            checkpoints.save(start[0])

        def make_assigner(x: np.ndarray):
            if x.shape[0] <= ccfg.driver_max_rows:
                return NumpyAssigner(x)
            log.info("%d inputs > clustering.driver_max_rows=%d: this level runs on the executors", x.shape[0], ccfg.driver_max_rows)
            upper.append(EmbeddingBlocks.from_numpy(ctx.spark, x, partitions=cfg.spark.partitions, cache=cfg.spark.block_cache, lake=ctx.lake))
            return SparkAssigner(upper[-1])

        def saved(level: Level) -> None:
            checkpoints.save(level)
            fault_point("cluster:level_saved", level=level.level)

        levels = fit_hierarchy(
            assigner, params, ccfg.seed, make_assigner=make_assigner, on_iteration=_log_iteration([p.n_iter for p in params]),
            on_level=saved, start_levels=start,
        )
        while upper:
            upper.pop().release()
        metrics["levels"] = [level_metrics(lv, blocks.n if i == 0 else levels[i - 1].n_clusters) for i, lv in enumerate(levels)]
        metrics["resumed_levels"] = len(start)

        t1 = time.perf_counter()
        parents = [p for p in parent_ids(levels) if p is not None]
        rows = assignment_rows(blocks, levels[0].centroids, parents, id_column=cfg.input.id_column)
        # the tree first, then the rows that point into it; runs' "succeeded" row marks both as one
        ctx.lake.write_arrow(clusters_table(levels), CLUSTERS, ctx.run_id)
        ctx.lake.write_run(rows, ASSIGNMENTS, ctx.run_id)
        metrics.update(write_seconds=round(time.perf_counter() - t1, 3), spark_passes=blocks.passes,
                       block_cache=blocks.cache, block_file_fallback_partitions=blocks.fallback_partitions)
        checkpoints.clear()
    finally:
        for b in upper:
            b.release()
        blocks.release()


def preflight(cfg, facts) -> None:
    if facts.rows is not None:
        check_levels(list(cfg.clustering.n_clusters), facts.rows, key="clustering.n_clusters")


def summarize(m: dict) -> list[str]:
    return [
        f"  level {lv['level']}: {lv['n_clusters']} clusters over {lv['n_inputs']} inputs, "
        f"objective {lv['objective']:.4g}, re-seeded {lv['n_reseeded']}, empty {lv['n_empty']}, "
        f"sizes {lv['smallest_cluster']}..{lv['largest_cluster']}, {lv['seconds']:.1f}s"
        for lv in m.get("levels", [])
    ]


STAGE = Stage(
    name="cluster",
    config_sections=("clustering",),
    reusable=True,
    run=run_cluster,
    help="hierarchical k-means with resampling: embeddings -> the clusters and assignments tables",
    writes=lambda cfg: (ASSIGNMENTS, CLUSTERS),
    summary=summarize,
    preflight=preflight,
)
