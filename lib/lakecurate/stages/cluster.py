"""Cluster stage: hierarchical k-means over the input embeddings -> ``clusters`` and ``assignments``.

Level 1 runs on the executors (the Spark assigner over cached blocks). Levels 2..T take the
previous level's centroids: in-process on the driver, or on the executors through the same
assigner, where the sizing model (:func:`lakecurate.sizing.size_job`, on this session's cores)
puts them, or by ``clustering.driver_max_rows`` when set. Each fitted
level is checkpointed, so a killed job resumes at the next level; the two tables are committed at
the end, the tree (clusters) first, then the rows pointing into it (assignments), each as one table
version; the stage's ``succeeded`` row in ``runs`` marks them as belonging together.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Optional

import numpy as np
import pyarrow as pa

from lakecurate.core.in_process import NumpyAssigner
from lakecurate.core.hierarchy import Level, fit_hierarchy, parent_ids
from lakecurate.core.kmeans import normalize_rows
from lakecurate.faults import fault_point
from lakecurate.inputs import keep_listing
from lakecurate.spark.arrow import matrix_to_list_array
from lakecurate.spark.assigner import SparkAssigner
from lakecurate.spark.assignments import assignment_rows
from lakecurate.spark.blocks import EmbeddingBlocks
from lakecurate.stages.checkpoints import LevelCheckpoints
from lakecurate.stages.context import Checks, Reruns, Stage, StageContext
from lakecurate.errors import ConfigError
from lakecurate.sizing import (GROUP_BYTES_PER_FLOAT, USABLE_SHARE, Hardware, cached_rates, fmt_bytes, machine_memory, parse_bytes,
                               size_config)
from lakecurate.tables import ASSIGNMENTS, CLUSTERS, COARSE_CLUSTERS
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


def coarse_table(levels: list[Level]) -> pa.Table:
    """One row per coarse cluster of every two-step level: what routes a row to its fine centroids."""
    cols: dict[str, list] = {"level": [], "coarse_id": [], "first_cluster": [], "n_clusters": []}
    centroids = []
    for lv in levels:
        if lv.routing is None:
            continue
        g = lv.routing.n_groups
        cols["level"].append(np.full(g, lv.level, np.int32))
        cols["coarse_id"].append(np.arange(g, dtype=np.int32))
        cols["first_cluster"].append(lv.routing.offsets[:-1].astype(np.int32))
        cols["n_clusters"].append(np.diff(lv.routing.offsets).astype(np.int32))
        centroids.append(lv.routing.coarse)
    d = levels[0].centroids.shape[1]
    table = {k: pa.array(np.concatenate(v) if v else np.zeros(0, np.int32)) for k, v in cols.items()}
    table["centroid"] = matrix_to_list_array(np.concatenate(centroids) if centroids else np.zeros((0, d), np.float32))
    return pa.table(table)


def resolved_levels(params, size) -> list:
    """The plan's levels with ``n_coarse`` as the sizing resolved it (``auto`` from its memory model), each choice logged."""
    out = []
    for p, lv in zip(params, size.levels):
        if lv.why:
            log.info("level %d: %s", lv.level, lv.why)
        out.append(replace(p, n_coarse=lv.n_coarse))
    return out


def check_size(cfg, n: int, d: int, hardware: Optional[Hardware] = None):
    """The sizing of ``lakecurate plan`` on ``hardware`` (by default one 2-core executor and this
    machine as the driver): refuses what cannot run (memory; time does not stop a run)."""
    hw = hardware or Hardware(task_memory=parse_bytes(cfg.clustering.task_memory, "clustering.task_memory"), driver_memory=machine_memory())
    size = size_config(cfg, n, d, hw)
    size.raise_if_impossible()
    return size


def session_hardware(ctx: StageContext, d: int, k: int) -> Hardware:
    """What this run's session has, as the sizing model counts it: the cluster's cores (Spark's
    default parallelism), GPUs per executor (``spark.executor.resource.gpu.amount``), this
    machine as the driver, and the kernel rates ``lakecurate plan`` measured here, if it did."""
    import os

    from lakecurate.spark.session import default_parallelism

    conf = ctx.spark.conf
    cores = default_parallelism(ctx.spark)
    executors = max(1, int(conf.get("spark.executor.instances", None) or 1))
    gpus = int(float(conf.get("spark.executor.resource.gpu.amount", None) or 0))
    rates = cached_rates(d, k) or {}
    return Hardware(executors=executors, cores=max(1, cores // executors), gpus=gpus,
                    task_memory=parse_bytes(ctx.config.clustering.task_memory, "clustering.task_memory"),
                    driver_memory=machine_memory(), driver_cores=os.cpu_count() or 1, **rates)


def _group_check(task_memory: int, d: int):
    def check(level: int, counts: np.ndarray) -> None:
        need = GROUP_BYTES_PER_FLOAT * int(counts.max()) * d
        if need > USABLE_SHARE * task_memory:
            raise ConfigError(
                f"level {level}: the largest coarse cluster holds {int(counts.max()):,} of {int(counts.sum()):,} inputs, "
                f"{fmt_bytes(need)} in one task > {USABLE_SHARE:.0%} of clustering.task_memory={fmt_bytes(task_memory)}; "
                f"fix: more coarse clusters (clustering.n_coarse[{level - 1}] above {counts.size}) or more task memory")
    return check


def level_metrics(lv: Level, n_inputs: int, where: str) -> dict:
    return {
        "level": lv.level,
        "where": where,  # "executors" or "driver" (the sizing's choice, or clustering.driver_max_rows)
        "n_clusters": lv.n_clusters,
        "n_inputs": n_inputs,
        "objective": lv.objective,
        "n_reseeded": lv.n_reseeded,
        "n_empty": lv.n_empty,
        "seconds": round(lv.seconds, 3),
        "coarse_clusters": lv.routing.n_groups if lv.routing is not None else 0,
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
    t0 = time.perf_counter()
    keep_listing(ctx.lake, ctx.plan.inputs.get("input"))  # what a nightly run compares its folder with
    blocks = ctx.input_blocks("cluster", transform=normalize_rows if ccfg.metric == "cosine" else None, metric=ccfg.metric)
    assigner = SparkAssigner(blocks)
    upper: list[EmbeddingBlocks] = []  # levels 2..T run on the executors
    metrics.update(n_rows=blocks.n, dim=blocks.d, cache_seconds=round(time.perf_counter() - t0, 3))
    try:
        check_levels([p.n_clusters for p in ctx.plan.levels], blocks.n, key="clustering.n_clusters")
        size = check_size(cfg, blocks.n, blocks.d, session_hardware(ctx, blocks.d, ctx.plan.levels[0].n_clusters))
        log.info("sizing: %s", "; ".join(f"level {lv.level} {lv.where}{f' two-step {lv.n_coarse}' if lv.n_coarse else ''} "
                                          f"{fmt_bytes(lv.task_bytes)} per task" for lv in size.levels))
        params = resolved_levels(ctx.plan.levels, size)
        checkpoints = LevelCheckpoints(ctx.lake, ctx.run_id, ctx.plan.fingerprint)
        start = checkpoints.load(len(params))
        upper_levels = iter(size.levels[max(1, len(start)):])  # the levels make_assigner is asked for, in order

        def make_assigner(x: np.ndarray):
            lv = next(upper_levels)
            log.info("level %d: %s", lv.level, lv.placed)
            if lv.where == "driver":
                return NumpyAssigner(x)
            upper.append(EmbeddingBlocks.from_numpy(ctx.spark, x, partitions=cfg.spark.partitions, cache=cfg.spark.block_cache, lake=ctx.lake))
            return SparkAssigner(upper[-1])

        def saved(level: Level) -> None:
            checkpoints.save(level)
            fault_point("cluster:level_saved", level=level.level)

        levels = fit_hierarchy(
            assigner, params, ccfg.seed, make_assigner=make_assigner, on_iteration=_log_iteration([p.n_iter for p in params]),
            on_level=saved, start_levels=start, before_groups=_group_check(parse_bytes(ccfg.task_memory, "clustering.task_memory"), blocks.d),
        )
        while upper:
            upper.pop().release()
        metrics["levels"] = [level_metrics(lv, blocks.n if i == 0 else levels[i - 1].n_clusters, size.levels[i].where)
                             for i, lv in enumerate(levels)]
        metrics["resumed_levels"] = len(start)

        t1 = time.perf_counter()
        parents = [p for p in parent_ids(levels) if p is not None]
        rows = assignment_rows(blocks, levels[0].index, parents, id_column=cfg.input.id_column)
        # the tree first, then the rows that point into it; runs' "succeeded" row marks both as one
        ctx.lake.write_arrow(clusters_table(levels), CLUSTERS, ctx.run_id)
        coarse = coarse_table(levels)
        if coarse.num_rows:  # a one-step tree has no coarse clusters (readers take a missing run as one-step)
            ctx.lake.write_arrow(coarse, COARSE_CLUSTERS, ctx.run_id)
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
        if facts.dim is not None:
            check_size(cfg, facts.rows, facts.dim)  # again in the stage, with the rows and width it caches


def summarize(m: dict) -> list[str]:
    return [
        f"  level {lv['level']}: {lv['n_clusters']} clusters over {lv['n_inputs']} inputs{' on the ' + lv['where'] if lv.get('where') else ''}"
        f"{' (two-step: ' + str(lv['coarse_clusters']) + ' coarse)' if lv.get('coarse_clusters') else ''}, "
        f"objective {lv['objective']:.4g}, re-seeded {lv['n_reseeded']}, empty {lv['n_empty']}, "
        f"sizes {lv['smallest_cluster']}..{lv['largest_cluster']}, {lv['seconds']:.1f}s"
        for lv in m.get("levels", [])
    ]


STAGE = Stage(
    name="cluster",
    run=run_cluster,
    help="hierarchical k-means with resampling: embeddings -> the clusters and assignments tables",
    writes=lambda cfg: (ASSIGNMENTS, CLUSTERS, COARSE_CLUSTERS),
    summary=summarize,
    checks=Checks(input=preflight),
    reruns=Reruns(depends_on=("clustering",), reusable=True),
)
