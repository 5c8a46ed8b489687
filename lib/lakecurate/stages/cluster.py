"""Cluster stage: hierarchical k-means over the input embeddings -> ``clusters`` and ``assignments``.

Level 1 runs on the executors (Spark assigner over cached blocks). Levels 2..T take the previous
level's centroids: in-process on the driver when they number at most ``driver_max_rows``, else on
the executors through the same assigner. Each fitted level is checkpointed; the two tables are
committed at the end, assignments first, then clusters, each as one table version.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from lakecurate.core.assign import NumpyAssigner
from lakecurate.core.hierarchy import Level, fit_hierarchy, parent_ids
from lakecurate.core.validate import check_levels
from lakecurate.spark.arrow import matrix_to_list_array
from lakecurate.spark.assigner import AssignTuning, SparkAssigner
from lakecurate.stages.checkpoints import LevelCheckpoints
from lakecurate.stages.context import ASSIGNMENTS, CLUSTERS, StageContext

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


def run_cluster(ctx: StageContext, metrics: dict) -> None:
    cfg = ctx.config
    ccfg = cfg.clustering
    params = ccfg.level_params  # validated in config
    t0 = time.perf_counter()
    assigner, report = SparkAssigner.from_dataframe(
        ctx.spark,
        ctx.input_frame(),
        id_column=cfg.input.id_column,
        embedding_column=cfg.input.embedding_column,
        partitions=cfg.spark.partitions,
        normalize=ccfg.metric == "cosine",
        where=f"input {cfg.input.path or cfg.input.table or cfg.input.format}",
        tuning=AssignTuning(cache=cfg.spark.block_cache),
    )
    metrics["n_rows"] = report.n_rows
    metrics["dim"] = report.dim
    metrics["cache_seconds"] = round(time.perf_counter() - t0, 3)
    try:
        check_levels([p.n_clusters for p in params], report.n_rows, key="clustering.n_clusters")
        checkpoints = LevelCheckpoints(ctx.lake.root, ctx.run_id, cfg.fingerprint())
        start = checkpoints.load(len(params))
        if not start and ccfg.level1_coarse_clusters:  # very large k_1: level 1 in two steps
            from lakecurate.stages.split_level import fit_level1_two_step

            start = [fit_level1_two_step(assigner, params[0], ccfg.level1_coarse_clusters, ccfg.seed)]
            checkpoints.save(start[0])
        spark_levels: list[SparkAssigner] = []

        def make_assigner(x: np.ndarray):
            if x.shape[0] > ccfg.driver_max_rows:
                log.info("%d inputs > clustering.driver_max_rows=%d: this level runs on the executors", x.shape[0], ccfg.driver_max_rows)
                sa = SparkAssigner.from_numpy(ctx.spark, x, partitions=cfg.spark.partitions)
                spark_levels.append(sa)
                return sa
            return NumpyAssigner(x)

        def progress(level: int, step: int, it) -> None:
            # per-iteration lines for slow iterations; fast in-process levels only log their last
            last = it.iteration + 1 == params[level - 1].n_iter
            log.log(
                logging.INFO if (it.seconds >= 0.5 or last) else logging.DEBUG,
                "level %d step %d iter %d/%d: objective=%.6g reseeded=%d imbalance=%.3f %.2fs",
                level, step, it.iteration + 1, params[level - 1].n_iter, it.objective, it.n_reseeded, it.imbalance, it.seconds,
            )

        levels = fit_hierarchy(
            assigner, params, ccfg.seed, make_assigner=make_assigner, on_iteration=progress,
            on_level=checkpoints.save, start_levels=start,
        )
        for sa in spark_levels:
            sa.release()
        metrics["levels"] = [level_metrics(lv, report.n_rows if i == 0 else levels[i - 1].n_clusters) for i, lv in enumerate(levels)]
        metrics["resumed_levels"] = len(start)

        t1 = time.perf_counter()
        parents = [p for p in parent_ids(levels) if p is not None]
        assignments = assigner.assignments(levels[0].centroids, parents, id_column=cfg.input.id_column)
        ctx.lake.write_run(assignments, ASSIGNMENTS, ctx.run_id, description="level-1..T cluster of every input row")
        ctx.lake.write_arrow(clusters_table(levels), CLUSTERS, ctx.run_id, description="the cluster tree")
        metrics["write_seconds"] = round(time.perf_counter() - t1, 3)
        metrics["spark_passes"] = assigner.passes
        metrics["block_cache"] = cfg.spark.block_cache
        metrics["block_file_fallback_partitions"] = assigner.fallback_partitions
        checkpoints.clear()
    finally:
        assigner.release()
