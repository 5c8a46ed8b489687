"""Sample stage: balanced hierarchical sampling over ``clusters`` + ``assignments`` -> ``curated``.

The quotas come from the tree alone (O(k) rows, on the driver, the same function as the pure
API). The choice inside each level-1 cluster runs on the executors: every row gets the
strategy's sort key (a counter-based random key of its row key, or its distance), a window
ranks rows within their cluster, and the first ``quota`` rows are kept.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from lakecurate.core.sampling import ClusterTree, hierarchical_quotas, selection_keys
from lakecurate.errors import InputDataError, TableError
from lakecurate.faults import fault_point
from lakecurate.stages.context import Stage, StageContext
from lakecurate.tables import ASSIGNMENTS, CLUSTERS, CURATED

log = logging.getLogger(__name__)


def read_tree(ctx: StageContext) -> ClusterTree:
    """The run's cluster tree (sizes and parents per level) from the ``clusters`` table."""
    ctx.runlog.require("cluster", by="sample")
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
    pool = tree.n_points
    check_target(scfg, pool, "the pool")
    quotas = hierarchical_quotas(tree, scfg.target_size, np.random.default_rng(scfg.seed), max_repeats=scfg.max_repeats)
    fault_point("sample:quotas")
    quota_df = ctx.spark.createDataFrame(
        [(int(c), int(q), int(s)) for c, (q, s) in enumerate(zip(quotas, tree.sizes[0])) if q > 0],
        "cluster INT, quota LONG, cluster_size LONG",
    )
    assignments = ctx.lake.read(ASSIGNMENTS, ctx.output_run("cluster"))
    ranked = _keyed(assignments, scfg.strategy, scfg.seed).withColumn(
        "rank", F.row_number().over(Window.partitionBy("cluster").orderBy("sel_key", "row_key")) - 1
    )
    chosen = ranked.join(F.broadcast(quota_df), on="cluster", how="inner")
    times = (F.col("quota") / F.col("cluster_size")).cast("long") + F.when(
        F.col("rank") < F.col("quota") % F.col("cluster_size"), 1
    ).otherwise(0)
    chosen = chosen.withColumn("times", times).where(F.col("times") > 0)
    if scfg.max_repeats > 1:
        chosen = chosen.withColumn("copy", F.explode(F.sequence(F.lit(0), F.col("times").cast("int") - 1)))
    else:
        chosen = chosen.withColumn("copy", F.lit(0))
    id_col = cfg.input.id_column
    curated = chosen.select(
        id_col, "cluster", "path", F.col("rank").cast("int").alias("rank"), F.col("copy").cast("int").alias("copy"),
        F.lit(scfg.strategy).alias("strategy"), F.lit(ctx.output_run("cluster")).alias("tree_run_id"),
    )
    if cfg.input.passthrough_columns:
        source = ctx.input_frame("sample").select(id_col, *cfg.input.passthrough_columns)
        curated = curated.join(source, on=id_col, how="left")
    info = ctx.lake.write_run(curated, CURATED, ctx.run_id)
    n_written = ctx.lake.read(CURATED, ctx.run_id).count()
    if n_written != scfg.target_size:
        raise TableError(f"curated table holds {n_written} rows for run {ctx.run_id!r}, expected {scfg.target_size}")
    metrics.update(
        {
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


def summarize(m: dict) -> list[str]:
    return [f"  curated {m.get('selected')} of {m.get('pool')} rows ({m.get('strategy')}), "
            f"from {m.get('level1_clusters_used')} level-1 clusters"]


STAGE = Stage(
    name="sample",
    config_sections=("sampling",),
    run=run_sample,
    help="balanced sampling down the cluster tree: clusters + assignments -> the curated table",
    writes=lambda cfg: (CURATED,),
    summary=summarize,
    preflight=preflight,
)
