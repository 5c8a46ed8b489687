"""Dedup stage: semantic de-duplication of the input embeddings -> the ``duplicates`` table.

The Spark form of :func:`lakecurate.core.dedup.find_duplicates`, step for step, so both remove
the same rows (the rule is in that module's docstring):

1. the input is cached as blocks of unit rows (:func:`~lakecurate.core.dedup.unit_rows`) and a
   spherical k-means with ``dedup.n_clusters`` coarse clusters runs through the same Lloyd loop
   as the pure API (:func:`~lakecurate.core.dedup.coarse_clustering`);
2. rows are compared pairwise inside their coarse cluster (and with the rows of their
   ``dedup.n_neighbor_clusters`` nearest other clusters), one task per cluster, or per pair of
   chunks of a cluster above ``dedup.max_cluster_rows`` (:mod:`lakecurate.core.dedup_routing`);
3. groups joined across clusters are merged on the driver, and the removed rows are committed as
   one version of ``duplicates`` (:mod:`lakecurate.spark.dedup`).

Nothing is deleted: the stage hands the input minus the run's ``duplicates`` rows on to the
stages after it, so the kept set is what the cluster stage sees.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from lakecurate.core.dedup import coarse_clustering, default_n_clusters, increment_n_clusters, removal_by_band, unit_rows
from lakecurate.core.dedup_routing import chunks_per_cluster, n_tasks
from lakecurate.errors import ConfigError, InputDataError
from lakecurate.faults import fault_point
from lakecurate.inputs import with_ids
from lakecurate.spark.assigner import SparkAssigner
from lakecurate.spark.cache import keep
from lakecurate.spark.progress import progress
from lakecurate.spark.dedup import pairwise_results, removed_within_clusters, resolve_removed
from lakecurate.stages.context import Checks, Command, HandsOn, Reruns, Stage, StageContext
from lakecurate.tables import ASSIGNMENTS, DUPLICATES

log = logging.getLogger(__name__)


def run_dedup(ctx: StageContext, metrics: dict) -> None:
    """The dedup stage (see module docstring); writes ``duplicates`` for ``ctx.run_id``."""
    from pyspark.sql import functions as F

    if ctx.config.dedup.mode == "incremental":
        return run_increment(ctx, metrics)
    cfg = ctx.config
    dcfg = cfg.dedup
    id_col = cfg.input.id_column
    t0 = time.perf_counter()
    blocks = ctx.input_blocks("dedup", transform=unit_rows)
    held: list = []
    shipped: list = []
    try:
        n = blocks.n
        k = dcfg.n_clusters if dcfg.n_clusters is not None else default_n_clusters(n)
        if k > n:
            raise InputDataError(f"dedup.n_clusters={k} is more than the {n} rows in the input")
        r = min(dcfg.n_neighbor_clusters, k - 1)
        metrics.update(n_rows=n, dim=blocks.d, eps=dcfg.eps, n_clusters=k, n_neighbor_clusters=r)
        metrics["cache_seconds"] = round(time.perf_counter() - t0, 3)

        fit, sizes, results = within_clusters(ctx, blocks, k, r, metrics, f"dedup: pairwise comparisons within {k} coarse clusters",
                                              held)

        t3 = time.perf_counter()
        with progress(ctx.spark, "dedup: merging duplicate groups across clusters and writing the duplicates table"):
            removed, metrics["cross_pairs"], metrics["merged_representatives"] = resolve_removed(blocks, results, shipped)
            table = removed.select(F.col("id").alias(id_col), "kept_id", "similarity", "cluster")
            ctx.lake.write_run(table, DUPLICATES, ctx.run_id)
        metrics["merge_write_seconds"] = round(time.perf_counter() - t3, 3)

        removed_per = np.zeros(k)
        for row in ctx.lake.read(DUPLICATES, ctx.run_id).groupBy("cluster").count().collect():
            removed_per[int(row["cluster"])] = row["count"]
        n_removed = int(removed_per.sum())
        metrics.update(removed=n_removed, kept=n - n_removed,
                       removed_by_cluster_size=removal_by_band(sizes, removed_per))
        metrics["seconds"] = round(time.perf_counter() - t0, 3)
        metrics["seconds_per_million_rows"] = round(metrics["seconds"] / max(n, 1) * 1e6, 3)
        log.info(
            "dedup: %d rows, %d coarse clusters (largest %d), eps=%g, neighbours=%d: kept %d, removed %d in %.1fs",
            n, k, int(sizes.max()), dcfg.eps, r, n - n_removed, n_removed, metrics["seconds"],
        )
    finally:
        for frame in held:
            frame.release()
        for free in shipped:
            free()
        blocks.release()


def within_clusters(ctx: StageContext, blocks, k: int, r: int, metrics: dict, what: str, held: list):
    """Steps 1 and 2 of the module docstring on ``blocks``: (coarse fit, cluster sizes, the
    pairwise results, kept: ``held`` gets what to release)."""
    dcfg = ctx.config.dedup
    t1 = time.perf_counter()
    fit, _ = coarse_clustering(SparkAssigner(blocks), k, n_iter=dcfg.n_iter, seed=dcfg.seed)
    sizes = fit.counts.astype(np.int64)
    q = chunks_per_cluster(sizes, dcfg.max_cluster_rows)
    metrics.update(coarse_seconds=round(time.perf_counter() - t1, 3), largest_cluster=int(sizes.max()),
                   chunked_clusters=int((q > 1).sum()), tasks=n_tasks(sizes, q))
    if (q > 1).any():
        log.info("dedup: %d coarse cluster(s) above dedup.max_cluster_rows=%d (largest %d rows) are compared in chunks",
                 int((q > 1).sum()), dcfg.max_cluster_rows, int(sizes.max()))
    fault_point("dedup:pairwise")
    t2 = time.perf_counter()
    results = pairwise_results(blocks, fit.centroids, q, n_neighbors=r, eps=dcfg.eps, block_size=dcfg.block_size)
    with progress(ctx.spark, what, rows=blocks.n):
        held.append(keep(results, spark=ctx.spark, lake=ctx.lake, mode=ctx.config.spark.block_cache, what="pairwise results"))
        results = held[-1].frame
        metrics["removed_in_cluster"] = removed_within_clusters(results).count()
    metrics["pairwise_seconds"] = round(time.perf_counter() - t2, 3)
    return fit, sizes, results


def run_increment(ctx: StageContext, metrics: dict) -> None:
    """``dedup.mode: incremental`` (nightly runs that assign): the rows not yet in the tree,
    against its kept rows and each other, as :func:`lakecurate.core.dedup.find_increment_duplicates`.

    The old rows are the input's rows in the tree's ``assignments`` (the kept rows of the fit and
    of every increment since); they all stay. The new rows are the input's other rows, less those
    the tree's pool already lost as duplicates. The coarse clustering is fitted on the new rows;
    the old rows only get their nearest coarse centroid, and are compared with new rows only.
    """
    from pyspark.sql import functions as F

    from lakecurate.spark.blocks import EmbeddingBlocks
    from lakecurate.spark.dedup import increment_removed, old_links
    from lakecurate.stages.assign import find_tree, increment_read, new_rows

    cfg = ctx.config
    dcfg = cfg.dedup
    id_col = cfg.input.id_column
    t0 = time.perf_counter()
    tree_run = find_tree(ctx)
    snapshot, read = increment_read(ctx, tree_run)
    new = new_rows(ctx, tree_run, ctx.input_frame("dedup", snapshot))
    has_new = new.limit(1).count() > 0  # the counts come with the caches
    metrics.update(mode="incremental", tree_run_id=tree_run, eps=dcfg.eps, input_read=read)
    if not has_new:
        log.info("dedup: every row of the input is in the tree of run %s or was removed from its pool: nothing to compare", tree_run)
        metrics.update(new_rows=0, n_rows=0, removed=0, removed_as_old=0, kept=0, seconds=round(time.perf_counter() - t0, 3))
        return

    def cache(frame, what):
        return EmbeddingBlocks.from_dataframe(
            ctx.spark, frame, id_column=id_col, embedding_column=cfg.input.embedding_column, partitions=cfg.spark.partitions,
            transform=unit_rows, where=f"dedup {what} of {cfg.input.location}", cache=cfg.spark.block_cache, lake=ctx.lake)

    blocks = cache(new, "new rows")
    olds = tree_rows(ctx, tree_run, cache)
    shipped: list = []
    held: list = []

    def hold(frame, what):
        held.append(keep(frame, spark=ctx.spark, lake=ctx.lake, mode=cfg.spark.block_cache, what=what))
        return held[-1].frame

    try:
        n, n_old = blocks.n, (olds.n if olds is not None else 0)
        metrics.update(new_rows=n, old_rows=n_old)
        k = increment_n_clusters(n, n_old, dcfg.n_clusters, dcfg.n_neighbor_clusters)
        r = min(dcfg.n_neighbor_clusters, k - 1)
        metrics.update(n_rows=n, n_clusters=k, n_neighbor_clusters=r, cache_seconds=round(time.perf_counter() - t0, 3))
        t2 = time.perf_counter()
        fit, _, results = within_clusters(ctx, blocks, k, r, metrics, f"dedup: the {n} new rows among themselves, in {k} coarse clusters",
                                          held)
        with progress(ctx.spark, "dedup: merging the new rows' duplicate groups across clusters"):
            removed, metrics["cross_pairs"], metrics["merged_representatives"] = resolve_removed(blocks, results, shipped)
        metrics["merge_seconds"] = round(time.perf_counter() - t2 - metrics["coarse_seconds"] - metrics["pairwise_seconds"], 3)
        t3 = time.perf_counter()
        with progress(ctx.spark, f"dedup: the new rows against the tree's {n_old} kept rows, and writing the duplicates table",
                      rows=n + n_old):
            as_old = 0
            if olds is not None:
                links = old_links(blocks, olds, fit.centroids, n_neighbors=r, eps=dcfg.eps, block_size=dcfg.block_size)
                removed, as_old = increment_removed(blocks, olds, fit.centroids, removed, hold(links, "links to old rows"), hold)
            else:
                removed = removed.select("id", "kept_id", "similarity", "cluster")
            table = removed.select(F.col("id").alias(id_col), "kept_id", "similarity", "cluster")
            ctx.lake.write_run(table, DUPLICATES, ctx.run_id)
        metrics["old_rows_seconds"] = round(time.perf_counter() - t3, 3)
        n_removed = ctx.lake.read(DUPLICATES, ctx.run_id).count()
        metrics.update(removed=n_removed, removed_as_old=as_old, removed_among_new=n_removed - as_old, kept=n - n_removed,
                       seconds=round(time.perf_counter() - t0, 3))
        log.info("dedup: %d new rows against the %d kept rows of the tree of run %s (eps=%g, %d coarse clusters): "
                 "%d duplicates of kept rows, %d among the new, %d kept in %.1fs",
                 n, n_old, tree_run, dcfg.eps, k, as_old, n_removed - as_old, n - n_removed, metrics["seconds"])
    finally:
        for frame in held:
            frame.release()
        for free in shipped:
            free()
        blocks.release()
        if olds is not None:
            olds.release()


def tree_rows(ctx: StageContext, tree_run: str, cache):
    """The input's rows that are in the tree (its ``assignments``), cached as unit-row blocks, or
    None when there are none: the one read of the kept rows a nightly dedup makes. An input of
    files is read by the tasks (Arrow, :meth:`EmbeddingBlocks.from_files`), keeping the rows whose
    id the tree holds (:func:`~lakecurate.inputs.with_ids`: up to ``HANDED_IDS_MAX`` ids on the
    driver); else, or above that, a semi-join through Spark."""
    from dataclasses import replace

    from lakecurate.spark.blocks import EmbeddingBlocks

    cfg = ctx.config
    id_col = cfg.input.id_column
    where = f"dedup rows of the tree of {cfg.input.location}"
    files, why = with_ids(ctx.lake, lambda: ctx.input_files("dedup"), ASSIGNMENTS, tree_run, id_col, keep=True, what="the tree's ids")
    if files is not None:
        files = replace(files, where=where)
        try:
            return EmbeddingBlocks.from_files(
                ctx.spark, files, id_column=id_col, embedding_column=cfg.input.embedding_column, partitions=cfg.spark.partitions,
                transform=unit_rows, cache=cfg.spark.block_cache, lake=ctx.lake, block_rows=cfg.spark.arrow_batch_rows)
        except InputDataError as exc:
            if str(exc).startswith(f"{where} is empty"):  # the tree's rows are no longer in the input
                return None
            raise
    log.info("%s: read through Spark: %s", where, why)
    old = ctx.input_frame("dedup").join(ctx.lake.read(ASSIGNMENTS, tree_run).select(id_col), on=id_col, how="left_semi")
    return cache(old, "rows of the tree") if old.limit(1).count() > 0 else None


def check(cfg) -> None:
    incremental = cfg.dedup is not None and cfg.dedup.mode == "incremental"
    if "dedup" in cfg.stages and "assign" in cfg.stages and not incremental:
        raise ConfigError("stages include 'dedup' and 'assign' but dedup.mode is 'full': a full de-duplication of the grown "
                          "pool could remove rows the tree holds; set dedup.mode: incremental")
    if "dedup" in cfg.stages and incremental and "assign" not in cfg.stages:
        raise ConfigError(f"dedup.mode: incremental compares the rows new to a tree with its kept rows, but stages={list(cfg.stages)} "
                          "do not assign: add 'assign' (and no 'cluster'), or set dedup.mode: full")


def preflight(cfg, facts) -> None:
    k = cfg.dedup.n_clusters
    if k is not None and facts.rows is not None and k > facts.rows:
        raise InputDataError(f"dedup.n_clusters={k} is more than the {facts.rows} rows in the input {facts.where}")


def kept_rows(ctx: StageContext, upstream):
    """What the stages after dedup read: the input minus the run's duplicates."""
    df = upstream()
    if not ctx.lake.exists(DUPLICATES):
        return df
    id_col = ctx.config.input.id_column
    removed = ctx.lake.read(DUPLICATES, ctx.output_run("dedup")).select(id_col)
    return df.join(removed, on=id_col, how="left_anti")


def kept_files(ctx: StageContext, upstream):
    """:func:`kept_rows` as files: the input's files, read without the run's duplicates."""
    if not ctx.lake.exists(DUPLICATES):
        return upstream()
    return with_ids(ctx.lake, upstream, DUPLICATES, ctx.output_run("dedup"), ctx.config.input.id_column, keep=False,
                    what="the ids the dedup stage hands on")


def summarize(m: dict) -> list[str]:
    lines = [f"  de-duplication removed {m.get('removed')} of {m.get('n_rows')} rows "
             f"(eps {m.get('eps')}, {m.get('n_clusters')} coarse clusters, largest "
             f"{m.get('largest_cluster')}, {m.get('n_neighbor_clusters')} neighbour clusters)"]
    for band in m.get("removed_by_cluster_size", []):
        lines.append(f"    clusters of {band['band']:>12} rows: {band['n_clusters']:>6} clusters, "
                     f"removed {band['n_removed']} of {band['n_rows']}")
    return lines


STAGE = Stage(
    name="dedup",
    run=run_dedup,
    help="remove near-duplicates first: input embeddings -> the duplicates table",
    writes=lambda cfg: (DUPLICATES,),
    summary=summarize,
    hands_on=HandsOn(kept_rows, files=kept_files),
    command=Command(),
    checks=Checks(config=check, input=preflight),
    reruns=Reruns(depends_on=("dedup",), reusable=lambda cfg: cfg.dedup.mode == "full"),  # an increment depends on the tree too
)
