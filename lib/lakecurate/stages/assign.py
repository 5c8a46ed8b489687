"""Assign stage (nightly runs): the input's new rows join an existing tree -> ``assignments`` + ``clusters``.

A grown pool is not re-clustered every night: a new tree would renumber every cluster and reshuffle
every curated row downstream. Instead:

1. the tree: ``assign.tree_run_id``, or the latest run in the lake whose cluster stage succeeded
   with this config's ``clustering`` section (the same metric, the same levels);
2. the new rows: the input as this stage sees it (after dedup when the run de-duplicates) minus
   the ids already in the tree's ``assignments`` and the ids its pool lost as duplicates (when it
   was fitted, and in every increment since: :func:`tree_lineage`), anti-joins on id; none:
   nothing is written;
3. each new row gets its nearest level-1 centroid with the kernel the fit used
   (:func:`~lakecurate.spark.assignments.assignment_rows`: a row of the fitted pool gets the label
   the fit gave it) and the path up the tree; the rows are appended to the tree's rows of
   ``assignments`` as one table version, its commit tagged with this run's id (the increment);
4. ``clusters``: the tree's rows again as one new version, centroids unchanged, ``size`` and
   level-1 ``n_children`` counted from its assignments, whenever they differ from what the tree
   says: every run of the stage checks, so a rerun after a kill between the two commits repairs
   the counts, with or without new rows (:func:`recount`);
5. staleness: the share of the increment's rows farther from their level-1 centroid than that
   cluster's 99th-percentile distance at fit time (kept with the tree under
   ``<lake>/_trees/<tree run>/``), overall and per top-level cluster, in ``runs.metrics``; above
   ``assign.refit_threshold`` a :class:`~lakecurate.errors.StaleTreeWarning` recommends a re-cluster.

Re-running the same increment changes nothing: the same input has the same run id (the stage is
skipped); under another run id its rows are already assigned.

Two runs at once (two attempts of one run, or two configs growing one tree): the anti-join reads
``assignments`` pinned at one version, and the append commits only if no later version touched
the tree's rows (:meth:`~lakecurate.lake.Lake.append_run` ``unchanged_since``); the loser computes
its new rows again on the new snapshot, finds the winner's rows there, and appends only what is
still new. An increment is appended once, whatever two runs do.
"""

from __future__ import annotations

import io
import json
import logging
import time
import warnings

from typing import Optional

import numpy as np

from lakecurate.config import RunConfig, to_dict
from lakecurate.core.assign import RoutedCentroids
from lakecurate.core.kmeans import normalize_rows
from lakecurate.errors import ConfigError, RunChangedError, StaleTreeWarning, TableError
from lakecurate.faults import fault_point
from lakecurate.inputs import keep_listing
from lakecurate.spark.arrow import matrix_to_list_array
from lakecurate.spark.assignments import assignment_rows, cluster_counts
from lakecurate.stages.context import Checks, Command, Reruns, Stage, StageContext
from lakecurate.tables import ASSIGNMENTS, CLUSTERS, COARSE_CLUSTERS, DUPLICATES, RUNS

log = logging.getLogger(__name__)

#: the quantile of fit-time distances a new row is compared with
STALE_QUANTILE = 0.99
#: times the new rows are computed again when a concurrent run grew the tree first
APPEND_ATTEMPTS = 12


def check(cfg: RunConfig) -> None:
    if "assign" in cfg.stages and "cluster" in cfg.stages:
        raise ConfigError(f"stages={list(cfg.stages)}: 'assign' adds rows to an existing tree and 'cluster' fits a new one: "
                          "list one of them")


def find_tree(ctx: StageContext) -> str:
    """The run whose tree the new rows join (``assign.tree_run_id``, else the latest with this clustering)."""
    cfg = ctx.config
    want = cfg.assign.tree_run_id
    rows = [r for r in ctx.lake.read_small(RUNS, columns=["run_id", "stage", "status", "finished_at", "config", "metrics"])
            if r["stage"] == "cluster" and r["status"] == "succeeded"] if ctx.lake.exists(RUNS) else []
    if want is not None:
        mine = [r for r in rows if r["run_id"] == want]
        if not mine:
            raise TableError(f"assign.tree_run_id={want!r}: no run of that id committed a tree in {ctx.lake.root!r}")
        row = max(mine, key=lambda r: r["finished_at"])
        fitted = json.loads(row["config"] or "{}").get("clustering")
        if fitted is not None and fitted != to_dict(cfg.clustering):
            raise ConfigError(f"assign.tree_run_id={want!r} was fitted with clustering={fitted}, not this config's "
                              f"{to_dict(cfg.clustering)}: the new rows must be assigned with the fit's settings")
    else:
        same = [r for r in rows if json.loads(r["config"] or "{}").get("clustering") == to_dict(cfg.clustering)]
        if not same:
            raise TableError(f"no run in {ctx.lake.root!r} committed a tree with this config's clustering section: run the "
                             "cluster stage first, or give assign.tree_run_id")
        row = max(same, key=lambda r: r["finished_at"])
    reused = json.loads(row["metrics"] or "{}").get("reused_from")
    return reused or row["run_id"]


def tree_lineage(ctx: StageContext, tree_run: str) -> list[str]:
    """The run ids under which ``duplicates`` holds the rows removed from the tree ``tree_run``'s
    pool: the dedup output of the run that fitted it (or reused its fit) and of every increment
    assigned into it. Those rows are in the input but are not new: they never join the tree."""
    rows = ctx.lake.read_small(RUNS, columns=["run_id", "stage", "status", "metrics"]) if ctx.lake.exists(RUNS) else []
    done = [(r["run_id"], r["stage"], json.loads(r["metrics"] or "{}")) for r in rows if r["status"] == "succeeded"]
    runs = {tree_run} | {run for run, stage, m in done if (stage == "assign" and m.get("tree_run_id") == tree_run)
                         or (stage == "cluster" and m.get("reused_from") == tree_run)}
    return sorted({m.get("reused_from", run) for run, stage, m in done if stage == "dedup" and run in runs})


#: the stages that may run before a lineage run's cluster or assign stage for it to have taken every
#: row of its input (dedup removes rows, but records them in ``duplicates``, which the lineage reads)
WHOLE_INPUT_BEFORE = frozenset({"dedup"})


def increment_read(ctx: StageContext, tree_run: str) -> tuple[Optional[dict], dict]:
    """``(snapshot, facts)``: what a nightly stage reads to find the rows new to the tree.

    Every row of the input that was live when a run of the tree's lineage read it is in the tree
    or among its lineage's duplicates: the run that fitted it, and every assign since, took all
    of its input's rows (only a dedup may run before them). So the rows new to the tree are in
    the files added to the input since the newest such read: for a Delta table, the live files a
    commit after that version added (its log says which); for a Parquet folder, the files not in
    such a run's listing with the same size and modification time. ``snapshot`` is the run's
    pinned input narrowed to those files (read as usual: :func:`lakecurate.inputs.read_run_input`);
    None, with ``facts["why"]``, when the whole input must be read (no such run recorded this
    input, another kind of input, a native-Delta lake, a Delta log cleaned up since). The rows
    read are anti-joined with the tree as before, so a file read again costs time, never rows.
    """
    from lakecurate.inputs import kept_listing
    from lakecurate.lake.delta import Snapshot

    cfg = ctx.config
    pinned = ctx.plan.inputs.get("input")

    def whole(why: str):
        log.info("%s: reading the whole input %s to find the rows new to the tree: %s", ctx.config.name, cfg.input.location, why)
        return None, {"read": "whole", "why": why}

    if not pinned:
        return whole("it has no fingerprint (a generated pool)")
    kind = pinned.get("kind")
    if kind not in ("delta", "parquet"):
        return whole(f"a {kind} input is read whole")
    if kind == "delta" and ctx.lake.native is not None:
        return whole("on a native-Delta lake the engine reads whole table versions")
    mine = to_dict(cfg.input)
    seen = []
    rows = ctx.lake.read_small(RUNS, columns=["run_id", "stage", "status", "finished_at", "config", "metrics"]) \
        if ctx.lake.exists(RUNS) else []
    for r in rows:
        if r["status"] != "succeeded" or r["stage"] not in ("cluster", "assign"):
            continue
        m = json.loads(r["metrics"] or "{}")
        if (r["stage"] == "cluster" and tree_run not in (r["run_id"], m.get("reused_from"))) or \
                (r["stage"] == "assign" and m.get("tree_run_id") != tree_run):
            continue
        c = json.loads(r["config"] or "{}")
        stages = list(c.get("stages") or ())
        if r["stage"] not in stages or set(stages[:stages.index(r["stage"])]) - WHOLE_INPUT_BEFORE or c.get("input") != mine:
            continue
        fp = (m.get("inputs") or {}).get("input")
        if fp and fp.get("kind") == kind and fp.get("path") == pinned.get("path"):
            seen.append((r["finished_at"], fp))
    seen = [fp for _, fp in sorted(seen, key=lambda t: t[0], reverse=True)]  # the latest first
    if not seen:
        return whole(f"no run of the tree of run {tree_run} recorded reading it with this input section")
    if kind == "delta":
        versions = [fp["version"] for fp in seen if fp.get("table_id") == pinned.get("table_id") and fp.get("version") is not None
                    and fp["version"] <= pinned["version"]]
        if not versions:
            return whole(f"the runs of the tree of run {tree_run} read another table at {pinned['path']} (a replaced table)")
        after = max(versions)
        try:
            files = Snapshot(pinned["path"], storage_options=ctx.lake.options, version=pinned["version"], added_after=after).files()
        except TableError as exc:
            return whole(str(exc))
        facts = {"read": "increment", "added_after_version": after, "version": pinned["version"], "files": len(files),
                 "rows": None if any(f.rows is None for f in files) else sum(f.rows for f in files)}
        log.info("%s: reading the %d file(s) of %s added after version %d (the tree's lineage read it to there) up to version %d",
                 ctx.config.name, len(files), cfg.input.location, after, pinned["version"])
        return {**pinned, "added_after": after}, facts
    # the latest read's listing (a folder grows, so it holds the earlier ones' files): files it
    # does not list are read, so an older listing would only read more, never miss a row
    known = next(filter(None, (kept_listing(ctx.lake, fp) for fp in seen)), None)
    if not known:
        return whole(f"the lake kept no file listing of the runs of the tree of run {tree_run} (runs before listings were kept)")
    listing, stats = pinned.get("listing") or [], pinned.get("listing_stats") or []
    new = [(rel, st) for rel, st in zip(listing, stats) if (rel, *st) not in known]
    facts = {"read": "increment", "files": len(new), "of_files": len(listing)}
    log.info("%s: reading the %d of %d file(s) of %s not read by the tree's lineage (new, or changed since)",
             ctx.config.name, len(new), len(listing), cfg.input.location)
    return {**pinned, "listing": [rel for rel, _ in new], "listing_stats": [st for _, st in new]}, facts


def old_duplicates(ctx: StageContext, tree_run: str):
    """The ids of :func:`tree_lineage`'s duplicates, or None when there are none."""
    from pyspark.sql import functions as F

    runs = tree_lineage(ctx, tree_run)
    if not runs or not ctx.lake.exists(DUPLICATES):
        return None
    return ctx.lake.read(DUPLICATES).where(F.col("run_id").isin(runs)).select(ctx.config.input.id_column)


def new_rows(ctx: StageContext, tree_run: str, frame, version: Optional[int] = None):
    """``frame``'s rows that are neither in the tree's assignments (at ``version``, default the
    latest) nor removed from its pool as duplicates."""
    id_col = ctx.config.input.id_column
    new = frame.join(ctx.lake.read(ASSIGNMENTS, tree_run, version=version).select(id_col), on=id_col, how="left_anti")
    gone = old_duplicates(ctx, tree_run)
    return new if gone is None else new.join(gone, on=id_col, how="left_anti")


def read_tree(ctx: StageContext, tree_run: str):
    """(level-1 centroids float32, parents per level above 1, the clusters table as pandas)."""
    pdf = read_clusters(ctx, tree_run)
    levels = sorted(pdf["level"].unique())
    first = pdf[pdf["level"] == 1]
    centroids = np.stack(first["centroid"].to_numpy()).astype(np.float32)
    parents = [pdf[pdf["level"] == t]["parent_id"].to_numpy(np.int64) for t in levels[:-1]]
    return routing(ctx, tree_run, centroids), parents, pdf


def routing(ctx: StageContext, tree_run: str, centroids: np.ndarray):
    """Level 1's centroids as the tree's rows were assigned: routed through the coarse clusters
    when level 1 was fitted in two steps (so a new row lands where an old one like it did)."""
    if not ctx.lake.exists(COARSE_CLUSTERS):
        return centroids
    coarse = ctx.lake.read(COARSE_CLUSTERS, tree_run).where("level = 1").toPandas()
    if coarse.empty:
        return centroids
    coarse = coarse.sort_values("coarse_id")
    offsets = np.r_[coarse["first_cluster"].to_numpy(np.int64), int(coarse["first_cluster"].iloc[-1] + coarse["n_clusters"].iloc[-1])]
    if offsets[-1] != centroids.shape[0]:
        raise TableError(f"table {COARSE_CLUSTERS!r} of run {tree_run!r} routes to {offsets[-1]} level-1 clusters; "
                         f"{CLUSTERS!r} has {centroids.shape[0]}")
    return RoutedCentroids(np.stack(coarse["centroid"].to_numpy()).astype(np.float32), offsets, centroids)


def fit_quantiles(ctx: StageContext, tree_run: str, k: int) -> np.ndarray:
    """Each level-1 cluster's 99th-percentile distance at fit time, kept with the tree (computed
    from the tree's assignments, which are the fit's rows, the first time a tree is extended)."""
    from pyspark.sql import functions as F

    rel = f"_trees/{tree_run}/distance_p{int(STALE_QUANTILE * 100)}.npy"
    data = ctx.lake.get_file(rel)
    if data is not None:
        return np.load(io.BytesIO(data))
    q = np.full(k, np.inf)
    rows = ctx.lake.read(ASSIGNMENTS, tree_run).groupBy("cluster").agg(
        F.percentile_approx("distance", STALE_QUANTILE, 10000).alias("q")).collect()
    for r in rows:
        q[int(r["cluster"])] = float(r["q"])
    buf = io.BytesIO()
    np.save(buf, q)
    ctx.lake.put_file(rel, buf.getvalue())
    return q


def level1_counts(ctx: StageContext, tree_run: str, k: int, version: Optional[int] = None) -> np.ndarray:
    """Rows per level-1 cluster in the tree's ``assignments`` (at ``version``, default the latest)."""
    size = np.zeros(k, np.int64)
    for cluster, n in cluster_counts(ctx.lake.read(ASSIGNMENTS, tree_run, version=version)).items():
        size[cluster] = n
    return size


def recount(ctx: StageContext, tree_run: str, parents) -> bool:
    """Make the tree's ``clusters`` rows count its assignments: when a level-1 ``size`` differs
    from the rows assigned to it (new rows, or a run killed between its two commits), the rows
    again as one version with ``size`` and level-1 ``n_children`` counted. The counts are taken
    at one version of ``assignments``; if it moved while they were written, they are taken
    again, so the last word is never an older count. Returns whether anything was written."""
    wrote = False
    for _ in range(APPEND_ATTEMPTS):
        version = ctx.lake.version(ASSIGNMENTS)
        pdf = read_clusters(ctx, tree_run)
        k = int((pdf["level"] == 1).sum())
        size = level1_counts(ctx, tree_run, k, version)
        if np.array_equal(pdf[pdf["level"] == 1]["size"].to_numpy(np.int64), size):
            return wrote
        write_counts(ctx, tree_run, pdf, parents, size)
        wrote = True
        if ctx.lake.version(ASSIGNMENTS) == version:
            return wrote
        log.info("assign: %r changed while the tree's sizes were counted: counting again", ASSIGNMENTS)
    raise TableError(f"assign: {ASSIGNMENTS!r} of run {tree_run!r} kept changing while its sizes were counted "
                     f"({APPEND_ATTEMPTS} times); rerun to count them again")


def read_clusters(ctx: StageContext, tree_run: str):
    """The tree's ``clusters`` rows as pandas, by level and cluster id."""
    pdf = ctx.lake.read(CLUSTERS, tree_run).toPandas()
    if pdf.empty:
        raise TableError(f"table {CLUSTERS!r} has no rows for run {tree_run!r}")
    return pdf.sort_values(["level", "cluster_id"]).reset_index(drop=True)


def write_counts(ctx: StageContext, tree_run: str, pdf, parents, size: np.ndarray) -> None:
    """The tree's ``clusters`` rows with level 1 sized ``size`` and every level above summed from it."""
    import pyarrow as pa

    pdf = pdf.copy()
    sizes = [size]
    for t, par in enumerate(parents, start=2):  # a cluster's size: the sum of its children's
        sizes.append(np.bincount(par, weights=sizes[-1], minlength=int((pdf["level"] == t).sum())).astype(np.int64))
    for t, s in enumerate(sizes, start=1):
        pdf.loc[pdf.index[pdf["level"] == t], "size"] = s
    pdf.loc[pdf.index[pdf["level"] == 1], "n_children"] = size
    parent = pdf["parent_id"]
    table = pa.table({
        "level": pa.array(pdf["level"].to_numpy(np.int32)),
        "cluster_id": pa.array(pdf["cluster_id"].to_numpy(np.int32)),
        "parent_id": pa.array([None if v != v else int(v) for v in parent.to_numpy(np.float64)], pa.int32()),
        "n_children": pa.array(pdf["n_children"].to_numpy(np.int64)),
        "size": pa.array(pdf["size"].to_numpy(np.int64)),
        "centroid": matrix_to_list_array(np.stack(pdf["centroid"].to_numpy()).astype(np.float32)),
        "inertia": pa.array(pdf["inertia"].to_numpy(np.float64)),
        "radius": pa.array(pdf["radius"].to_numpy(np.float64)),
    })
    ctx.lake.write_arrow(table, CLUSTERS, tree_run)


def run_assign(ctx: StageContext, metrics: dict) -> None:
    from pyspark.sql import functions as F

    cfg = ctx.config
    id_col = cfg.input.id_column
    t0 = time.perf_counter()
    tree_run = find_tree(ctx)
    centroids, parents, _ = read_tree(ctx, tree_run)
    k = centroids.shape[0]
    metrics.update(tree_run_id=tree_run, increment=ctx.run_id)
    quantiles = fit_quantiles(ctx, tree_run, k)
    keep_listing(ctx.lake, ctx.plan.inputs.get("input"))  # what the next nightly run compares its folder with
    snapshot, metrics["input_read"] = increment_read(ctx, tree_run)
    new, n_new, info = append_new_rows(ctx, tree_run, centroids, parents, snapshot)
    metrics["new_rows"] = n_new
    if recount(ctx, tree_run, parents) and n_new == 0:
        log.warning("assign: the sizes in %r of run %s did not count its assignments (an earlier attempt was stopped between "
                    "its two commits): counted again", CLUSTERS, tree_run)
        metrics["repaired_counts"] = True
    if n_new == 0:
        log.info("assign: every row of the input is already in the tree of run %s: nothing to add", tree_run)
        metrics.update(stale_share=0.0, seconds=round(time.perf_counter() - t0, 3))
        return
    added = ctx.lake.read(ASSIGNMENTS, tree_run).join(new.select(id_col), on=id_col, how="left_semi")
    limits = ctx.spark.createDataFrame([(int(c), float(v)) for c, v in enumerate(quantiles)], "cluster INT, fit_q DOUBLE")
    top = F.element_at("path", len(parents) + 1)
    stats = (added.join(F.broadcast(limits), on="cluster", how="left")
             .withColumn("stale", (F.col("distance") > F.col("fit_q")).cast("int")).withColumn("top", top)
             .groupBy("top").agg(F.count("*").alias("n"), F.sum("stale").alias("stale")).collect())
    n = sum(int(r["n"]) for r in stats)
    stale = sum(int(r["stale"]) for r in stats)
    share = stale / n if n else 0.0
    metrics.update(
        assigned=n, stale_rows=stale, stale_share=round(share, 6), refit_threshold=cfg.assign.refit_threshold,
        stale_share_by_top_cluster={str(int(r["top"])): round(int(r["stale"]) / int(r["n"]), 6) for r in sorted(stats, key=lambda r: r["top"])},
        assignments_version=info.version, seconds=round(time.perf_counter() - t0, 3),
    )
    if n != n_new:
        raise TableError(f"assign: {n} of the {n_new} new rows are in {ASSIGNMENTS!r} for run {tree_run!r} after the append")
    log.info("assign: %d new rows joined the tree of run %s; %.1f%% are beyond their cluster's fit-time p99 distance",
             n, tree_run, 100 * share)
    if share > cfg.assign.refit_threshold:
        warnings.warn(StaleTreeWarning(
            f"{100 * share:.1f}% of the {n} new rows are farther from their level-1 centroid than that cluster's 99th-percentile "
            f"distance at fit time, above assign.refit_threshold={cfg.assign.refit_threshold}: the tree of run {tree_run!r} "
            "no longer fits the pool; re-cluster (run the cluster stage on the grown pool)"), stacklevel=2)


def append_new_rows(ctx: StageContext, tree_run: str, centroids, parents, snapshot: Optional[dict] = None):
    """``(new rows, how many, TableInfo or None)``: the input's rows new to the tree, labelled and
    appended to its ``assignments`` as one version computed from one snapshot of it. When another
    run touched the tree's rows after that snapshot, nothing is committed and the new rows are
    computed again on the new one (bounded): an increment lands once. ``snapshot``: the input's
    files to look in (:func:`increment_read`; default all of them)."""
    from lakecurate.spark.blocks import EmbeddingBlocks

    cfg = ctx.config
    id_col = cfg.input.id_column
    for attempt in range(APPEND_ATTEMPTS):
        version = ctx.lake.version(ASSIGNMENTS)
        new = new_rows(ctx, tree_run, ctx.input_frame("assign", snapshot), version)
        n_new = new.count()
        if n_new == 0:
            return new, 0, None
        blocks = EmbeddingBlocks.from_dataframe(
            ctx.spark, new, id_column=id_col, embedding_column=cfg.input.embedding_column, partitions=cfg.spark.partitions,
            transform=normalize_rows if cfg.clustering.metric == "cosine" else None, where=f"assign input {cfg.input.location}",
            cache=cfg.spark.block_cache, lake=ctx.lake, metric=cfg.clustering.metric,
        )
        try:
            if blocks.d != centroids.shape[1]:
                raise TableError(f"the input {cfg.input.location} has dimension {blocks.d} but the tree of run {tree_run!r} has "
                                 f"dimension {centroids.shape[1]}")
            rows = assignment_rows(blocks, centroids, parents, id_column=id_col)
            info = ctx.lake.append_run(rows, ASSIGNMENTS, tree_run, commit_metadata={"lakecurate.increment": ctx.run_id},
                                       unchanged_since=-1 if version is None else version)
            fault_point("assign:appended")
            return new, n_new, info
        except RunChangedError as exc:
            log.info("assign: another run grew the tree of run %s first (%s): finding the new rows again (attempt %d of %d)",
                     tree_run, exc, attempt + 1, APPEND_ATTEMPTS)
        finally:
            blocks.release()
    raise TableError(f"assign: the tree of run {tree_run!r} was grown by other runs {APPEND_ATTEMPTS} times while this one "
                     "labelled its new rows; nothing was appended: rerun it")


def summarize(m: dict) -> list[str]:
    return [f"  assign: {m.get('new_rows')} new rows into the tree of run {m.get('tree_run_id')}; "
            f"{100 * (m.get('stale_share') or 0):.1f}% beyond their cluster's fit-time p99 distance "
            f"(re-cluster above {100 * (m.get('refit_threshold') or 0):.0f}%)"]


STAGE = Stage(
    name="assign",
    run=run_assign,
    help="rows of the input not yet in a tree's assignments join it (nearest centroid, same kernel); staleness in runs.metrics",
    writes=lambda cfg: (ASSIGNMENTS, CLUSTERS),
    summary=summarize,
    command=Command(),
    checks=Checks(config=check),
    reruns=Reruns(depends_on=("assign", "clustering"), extends="cluster"),
)
