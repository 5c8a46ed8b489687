"""Sample stage: balanced hierarchical sampling over ``clusters`` + ``assignments`` -> ``curated``.

The quotas come from the tree alone (O(k) rows, on the driver, the same function as the pure
API). The choice inside each level-1 cluster runs on the executors: every row gets the
strategy's sort key (a counter-based random key of its row key, or its distance), a window
ranks rows within their cluster, and the first ``quota`` rows are kept.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa

from lakecurate.core.sampling import ClusterTree, hierarchical_quotas, selection_keys
from lakecurate.errors import InputDataError, RunChangedError, TableError
from lakecurate.faults import fault_point
from lakecurate.stages.context import Checks, Reruns, Stage, StageContext
from lakecurate.tables import ASSIGNMENTS, CLUSTERS, CURATED

log = logging.getLogger(__name__)

#: times the earlier set is read again when another attempt of this run marked it first
MARK_ATTEMPTS = 12


def tree_stage(ctx: StageContext) -> str:
    """The stage of this run that gives it its tree: assign (an existing tree, grown) or cluster."""
    return "assign" if ctx.plan.has("assign") else "cluster"


def previous_curated(ctx: StageContext, tree_run: str):
    """``(run id, DataFrame of ids, curated version)`` of the latest other run's curated set of the
    tree ``tree_run``, read at that version of ``curated``, or None."""
    from lakecurate.tables import RUNS

    rows = [r for r in ctx.lake.read_small(RUNS, columns=["run_id", "stage", "status", "finished_at", "metrics"])
            if r["stage"] == "sample" and r["status"] == "succeeded" and r["run_id"] != ctx.run_id
            and json.loads(r["metrics"] or "{}").get("tree_run_id") == tree_run]
    if not rows:
        return None
    run = max(rows, key=lambda r: r["finished_at"])["run_id"]
    from pyspark.sql import functions as F

    version = ctx.lake.version(CURATED)
    earlier = ctx.lake.read(CURATED, run, version=version).where("copy = 0")
    added_in = F.coalesce("added_in", F.lit(run)) if "added_in" in earlier.columns else F.lit(run)  # rows of an older version
    return run, earlier.select(ctx.config.input.id_column, added_in.alias("earlier_added_in")), version


def read_tree(ctx: StageContext) -> ClusterTree:
    """The run's cluster tree (sizes and parents per level) from the ``clusters`` table."""
    ctx.runlog.require(tree_stage(ctx), by="sample")
    if not ctx.lake.exists(CLUSTERS):
        raise TableError(f"table {CLUSTERS!r} does not exist under {ctx.lake.root!r}: run the cluster stage first")
    tree_run = ctx.output_run("cluster")
    pdf = ctx.lake.read(CLUSTERS, tree_run).select("level", "cluster_id", "parent_id", "size").toPandas()
    if pdf.empty:
        raise TableError(f"table {CLUSTERS!r} has no rows for run {tree_run!r}: run the cluster stage first")
    sizes, parents = [], []
    for level in sorted(pdf["level"].unique()):
        rows = pdf[pdf["level"] == level].sort_values("cluster_id")
        sizes.append(rows["size"].to_numpy(np.int64))
        par = rows["parent_id"]
        parents.append(None if par.isna().all() else par.to_numpy(np.int64))
    return ClusterTree(sizes, parents)


def check_counts(ctx: StageContext, tree: ClusterTree) -> None:
    """TableError unless every level-1 ``size`` of the tree counts its rows in ``assignments``: the
    quotas are computed from the sizes, so stale ones would curate the wrong number of rows."""
    from lakecurate.spark.assignments import cluster_counts

    tree_run = ctx.output_run("cluster")
    counted = cluster_counts(ctx.lake.read(ASSIGNMENTS, tree_run))
    sizes = tree.sizes[0]
    total = sum(counted.values())
    wrong = [c for c in range(sizes.size) if counted.pop(c, 0) != int(sizes[c])] + sorted(counted)
    if wrong:
        raise TableError(
            f"table {CLUSTERS!r} of run {tree_run!r} sizes its tree at {int(sizes.sum())} rows but {ASSIGNMENTS!r} holds {total}, "
            f"{len(wrong)} level-1 cluster(s) differing (e.g. {wrong[:3]}): a run that grew the tree stopped between its two commits. "
            f"Run its assign stage again (lakecurate assign CONFIG): it counts them again; nothing was written")


def check_target(scfg, rows: int, what: str) -> None:
    """InputDataError when ``sampling.target_size`` cannot be drawn from ``rows`` rows."""
    if scfg.target_size > rows * scfg.max_repeats:
        hint = "" if scfg.max_repeats > 1 else "; set sampling.max_repeats > 1 to draw rows more than once"
        raise InputDataError(
            f"sampling.target_size={scfg.target_size} is larger than {what} of {rows} rows x sampling.max_repeats={scfg.max_repeats}{hint}"
        )


def preflight(cfg, facts) -> None:
    if facts.rows is not None:  # the input before de-duplication: an upper bound on the pool
        check_target(cfg.sampling, facts.rows, f"the input {facts.where}")


def _keyed(assignments, strategy: str, seed: int):
    """Assignments plus the strategy's per-row sort key ``sel_key``, computed on executors."""
    from pyspark.sql import types as T

    key_type = T.LongType() if strategy == "random" else T.FloatType()
    schema = T.StructType(list(assignments.schema.fields) + [T.StructField("sel_key", key_type)])

    def add_key(batches):
        for b in batches:
            rows = b.column("row_key").to_numpy(zero_copy_only=False)
            dist = b.column("distance").to_numpy(zero_copy_only=False)
            key = selection_keys(rows, dist, strategy, seed)
            yield pa.RecordBatch.from_arrays(list(b.columns) + [pa.array(key)], names=list(b.schema.names) + ["sel_key"])

    return assignments.mapInArrow(add_key, schema)


def run_sample(ctx: StageContext, metrics: dict) -> None:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cfg = ctx.config
    scfg = cfg.sampling
    tree = read_tree(ctx)
    check_counts(ctx, tree)
    pool = tree.n_points
    check_target(scfg, pool, "the pool")
    quotas = hierarchical_quotas(tree, scfg.target_size, np.random.default_rng(scfg.seed), max_repeats=scfg.max_repeats)
    fault_point("sample:quotas")
    quota_df = ctx.spark.createDataFrame(
        [(int(c), int(q), int(s)) for c, (q, s) in enumerate(zip(quotas, tree.sizes[0])) if q > 0],
        "cluster INT, quota LONG, cluster_size LONG",
    )
    rows = assignments = ctx.lake.read(ASSIGNMENTS, ctx.output_run("cluster"))
    order = [F.col("sel_key"), F.col("row_key")]
    added_in = F.lit(ctx.run_id)
    previous = previous_curated(ctx, ctx.output_run("cluster")) if scfg.mode == "top_up" else None
    id_col = cfg.input.id_column
    if scfg.mode == "top_up" and previous is None:
        log.info("sample: no earlier curated set of the tree of run %s: sampling it afresh", ctx.output_run("cluster"))
    if previous is not None:
        # the earlier set's rows first in every cluster: a cluster keeps min(quota, its earlier rows)
        # of them (the best by the strategy) and adds rows only where its quota grew. Ranked first,
        # an earlier row's rank is its rank among its cluster's earlier rows, and a row not in the
        # earlier set can only be chosen in a cluster whose quota exceeds its earlier rows: only
        # those clusters' other rows are ranked again (the same ranks, far fewer rows to sort)
        flagged = assignments.join(previous[1].withColumn("earlier", F.lit(1)), on=id_col, how="left").fillna(0, ["earlier"])
        # the earlier set's rows per cluster, from that set (its rows keep their cluster: a tree only grows)
        earlier_n = (ctx.lake.read(CURATED, previous[0], version=previous[2]).where("copy = 0")
                     .groupBy("cluster").agg(F.count("*").alias("earlier_n")))
        grown = (quota_df.join(earlier_n, on="cluster", how="left").fillna(0, ["earlier_n"])
                 .where(F.col("quota") > F.col("earlier_n")).select("cluster", F.lit(1).alias("grown")))
        metrics["reranked_clusters"] = grown.count()
        rows = (flagged.join(grown, on="cluster", how="left")
                .where((F.col("earlier") == 1) | F.col("grown").isNotNull()).drop("grown"))
        added_in = F.coalesce("earlier_added_in", F.lit(ctx.run_id))  # a kept row keeps the run it came in
        order = [F.col("earlier").desc()] + order
    keyed = _keyed(rows, scfg.strategy, scfg.seed)
    ranked = keyed.withColumn("rank", F.row_number().over(Window.partitionBy("cluster").orderBy(*order)) - 1)
    chosen = ranked.join(F.broadcast(quota_df), on="cluster", how="inner")
    times = (F.col("quota") / F.col("cluster_size")).cast("long") + F.when(
        F.col("rank") < F.col("quota") % F.col("cluster_size"), 1
    ).otherwise(0)
    chosen = chosen.withColumn("times", times).where(F.col("times") > 0)
    if scfg.max_repeats > 1:
        chosen = chosen.withColumn("copy", F.explode(F.sequence(F.lit(0), F.col("times").cast("int") - 1)))
    else:
        chosen = chosen.withColumn("copy", F.lit(0))
    curated = chosen.select(
        id_col, "cluster", "path", F.col("rank").cast("int").alias("rank"), F.col("copy").cast("int").alias("copy"),
        F.lit(scfg.strategy).alias("strategy"), F.lit(ctx.output_run("cluster")).alias("tree_run_id"),
        added_in.alias("added_in"), F.lit(None).cast("string").alias("dropped_in"),
    )
    if cfg.input.passthrough_columns:
        source = ctx.input_frame("sample").select(id_col, *cfg.input.passthrough_columns)
        curated = curated.join(source, on=id_col, how="left")
    info = ctx.lake.write_run(curated, CURATED, ctx.run_id)
    n_written = ctx.lake.read(CURATED, ctx.run_id).count()
    if n_written != scfg.target_size:
        raise TableError(f"curated table holds {n_written} rows for run {ctx.run_id!r}, expected {scfg.target_size}")
    if previous is not None:
        metrics.update(top_up_churn(ctx, previous, quota_df))
        mark_dropped(ctx, previous[0], previous[2])
    metrics.update(
        {
            "mode": scfg.mode,
            "pool": pool,
            "target_size": scfg.target_size,
            "selected": n_written,
            "strategy": scfg.strategy,
            "tree_run_id": ctx.output_run("cluster"),
            "level1_clusters_used": int((quotas > 0).sum()),
            "largest_quota": int(quotas.max()),
            "table_version": info.version,
        }
    )


def top_up_churn(ctx: StageContext, previous, quota_df) -> dict:
    """Rows kept, added and dropped against the earlier set, and the least the quotas force
    (per cluster: what its earlier rows exceed its quota by, what its quota exceeds them by)."""
    from pyspark.sql import functions as F

    id_col = ctx.config.input.id_column
    run, earlier, _ = previous
    now = ctx.lake.read(CURATED, ctx.run_id).select(id_col)
    n_earlier = earlier.count()
    kept = now.join(earlier, on=id_col, how="left_semi").count()
    n_now = now.count()
    per_cluster = (ctx.lake.read(ASSIGNMENTS, ctx.output_run("cluster")).join(earlier, on=id_col, how="left_semi")
                   .groupBy("cluster").agg(F.count("*").alias("earlier"))
                   .join(quota_df.select("cluster", "quota"), on="cluster", how="full").fillna(0, ["earlier", "quota"]))
    least = per_cluster.agg(F.sum(F.greatest(F.col("earlier") - F.col("quota"), F.lit(0))).alias("drop"),
                            F.sum(F.greatest(F.col("quota") - F.col("earlier"), F.lit(0))).alias("add")).first()
    out = {"previous_run_id": run, "kept": kept, "added": n_now - kept, "dropped": n_earlier - kept,
           "dropped_least": int(least["drop"] or 0), "added_least": int(least["add"] or 0)}
    if out["dropped"] != out["dropped_least"] or out["added"] != out["added_least"]:
        raise TableError(f"top-up of run {ctx.run_id!r} changed more rows than its quotas force: {out}")
    log.info("sample (top-up of run %s's %d rows): kept %d, added %d, dropped %d", run, n_earlier, kept, out["added"], out["dropped"])
    return out


def mark_dropped(ctx: StageContext, previous_run: str, version: int) -> None:
    """``dropped_in`` = this run on the rows of the earlier run's set that this one dropped (its
    rows again, as one table version; a mark this run left in an earlier attempt is redone).

    The earlier set is read at ``version``, the one this top-up was computed from, and rewritten
    only if no run changed it since (:meth:`~lakecurate.lake.Lake.write_run` ``unchanged_since``):
    two top-ups of one set at once would otherwise leave only the last one's marks. When the set
    changed, it is read again: marks of this run only (another attempt of it) are redone on it;
    another run's marks refuse this top-up in one line, and its rerun tops up that run's set.
    """
    from pyspark.sql import functions as F

    id_col = ctx.config.input.id_column
    now = ctx.lake.read(CURATED, ctx.run_id).select(id_col).distinct().withColumn("still", F.lit(1))
    columns = [c for c in ctx.lake.read(CURATED).columns if c != "run_id"]
    for attempt in range(MARK_ATTEMPTS):
        earlier = ctx.lake.read(CURATED, previous_run, version=version)
        has_marks = "dropped_in" in earlier.columns
        if attempt > 0 and has_marks:
            other = earlier.where(F.col("dropped_in").isNotNull() & (F.col("dropped_in") != ctx.run_id)).select("dropped_in").first()
            if other is not None:
                raise TableError(
                    f"top-up of run {previous_run!r}'s curated set: run {other['dropped_in']!r} topped up the same set while this one "
                    f"ran, so this run's marks were not written and it is not succeeded; run it again: it tops up the latest "
                    f"curated set of the tree")
        mine = F.col("dropped_in") == ctx.run_id if has_marks else F.lit(False)
        before = F.col("dropped_in") if has_marks else F.lit(None).cast("string")
        marked = (earlier.join(now, on=id_col, how="left")
                  .withColumn("dropped_in", F.when(F.col("still").isNull(), F.lit(ctx.run_id))
                              .otherwise(F.when(mine, F.lit(None).cast("string")).otherwise(before)))
                  .drop("still"))
        if "added_in" not in earlier.columns:
            marked = marked.withColumn("added_in", F.lit(None).cast("string"))
        try:
            ctx.lake.write_run(marked.select(*columns), CURATED, previous_run, unchanged_since=version)
            return
        except RunChangedError as exc:
            log.info("sample: run %s's curated set changed while this top-up ran (%s): reading it again", previous_run, exc)
            version = ctx.lake.version(CURATED)
    raise TableError(f"top-up of run {previous_run!r}'s curated set: it kept changing under other writers ({MARK_ATTEMPTS} "
                     "attempts); nothing was marked: rerun")


def summarize(m: dict) -> list[str]:
    lines = [f"  curated {m.get('selected')} of {m.get('pool')} rows ({m.get('strategy')}), "
             f"from {m.get('level1_clusters_used')} level-1 clusters"]
    if "kept" in m:
        lines.append(f"  top-up of run {m.get('previous_run_id')}: kept {m['kept']}, added {m['added']}, dropped {m['dropped']} "
                     "(the least the new quotas force)")
    return lines


STAGE = Stage(
    name="sample",
    run=run_sample,
    help="balanced sampling down the cluster tree: clusters + assignments -> the curated table",
    writes=lambda cfg: (CURATED,),
    summary=summarize,
    checks=Checks(input=preflight),
    reruns=Reruns(depends_on=("sampling",)),
)
