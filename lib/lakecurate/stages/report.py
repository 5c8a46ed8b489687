"""Balance report: the curated subset against a uniform random subset of the same size.

Only runs when ``report.label_column`` names a column of the input with known labels (a
generated pool's concepts, or a labelled evaluation slice of a real lake). All counting happens
in Spark: it writes ``label_counts``, rows per (label, level-1 cluster) of the pool, a random
subset of the curated size, the de-duplicated pool and the curated subset, which the HTML report
(:mod:`lakecurate.report`) reads; only per-label totals reach the driver.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from lakecurate.core.keys import random_keys
from lakecurate.core.metrics import balance_from_counts
from lakecurate.errors import InputDataError, TableError
from lakecurate.faults import fault_point
from lakecurate.spark.arrow import row_keys
from lakecurate.stages.context import Checks, Reruns, Stage, StageContext
from lakecurate.tables import ASSIGNMENTS, CURATED, LABEL_COUNTS

log = logging.getLogger(__name__)
_REPORT_STREAM = 3


def preflight(cfg, facts) -> None:
    label = cfg.report.label_column
    if label not in facts.columns:
        raise InputDataError(f"report.label_column={label!r} is not a column of the input {facts.where} (columns: {sorted(facts.columns)})")


def run_report(ctx: StageContext, metrics: dict) -> None:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    cfg = ctx.config
    label = cfg.report.label_column
    id_col = cfg.input.id_column
    # the baseline is the pool as it came in: with a dedup stage in the run, "pool" and "random"
    # include the copies (what a random subset of the raw pool would hold), "deduplicated" does not
    source = ctx.input_frame("dedup")
    if label not in source.columns:
        raise InputDataError(f"report.label_column={label!r} is not a column of the input (columns: {source.columns})")
    labelled = source.select(id_col, F.col(label).cast("string").alias("label"))
    curated = ctx.lake.read(CURATED, ctx.run_id)
    n = curated.count()
    tree_runs = [r["tree_run_id"] for r in curated.select("tree_run_id").distinct().collect()]
    if len(tree_runs) != 1:
        raise TableError(f"table {CURATED!r} of run {ctx.run_id!r} points into {len(tree_runs)} trees ({tree_runs}): expected one")
    seed = cfg.report.seed

    def keyed(batches):
        for b in batches:
            key = (random_keys(row_keys(b.column(id_col)), seed, _REPORT_STREAM) >> np.uint64(1)).astype(np.int64)
            yield pa.RecordBatch.from_arrays(list(b.columns) + [pa.array(key)], names=list(b.schema.names) + ["_key"])

    schema = T.StructType(list(labelled.schema.fields) + [T.StructField("_key", T.LongType())])
    random_ids = labelled.mapInArrow(keyed, schema).orderBy("_key").limit(n).select(id_col, F.lit(1).alias("_random"))
    curated_ids = curated.groupBy(id_col).agg(F.count(F.lit(1)).alias("_curated"))  # a row drawn twice counts twice
    kept = ctx.input_frame("report").select(id_col, F.lit(1).alias("_kept")) if ctx.plan.has("dedup") else None
    assigned = ctx.lake.read(ASSIGNMENTS, tree_runs[0]).select(id_col, "cluster")
    rows = labelled.join(assigned, on=id_col, how="left").join(random_ids, on=id_col, how="left").join(curated_ids, on=id_col, how="left")
    if kept is not None:
        rows = rows.join(kept, on=id_col, how="left")
    counts = rows.groupBy("label", "cluster").agg(
        F.count(F.lit(1)).alias("pool"), F.coalesce(F.sum("_random"), F.lit(0)).cast("long").alias("random"),
        F.coalesce(F.sum("_curated"), F.lit(0)).cast("long").alias("curated"),
        *([F.coalesce(F.sum("_kept"), F.lit(0)).cast("long").alias("deduplicated")] if kept is not None else
          [F.lit(None).cast("long").alias("deduplicated")]))
    fault_point("report:counted")
    ctx.lake.write_run(counts, LABEL_COUNTS, ctx.run_id)
    # the balance figures from the written table (one small GROUP BY, nothing recomputed)
    names = ["pool", "random", "deduplicated", "curated"] if kept is not None else ["pool", "random", "curated"]
    totals = ctx.lake.read(LABEL_COUNTS, ctx.run_id).groupBy("label").agg(*[F.sum(c).alias(c) for c in names]).toPandas()
    n_concepts = int((totals["pool"] > 0).sum())
    metrics["label_column"] = label
    for name in names:
        metrics[name] = balance_from_counts(totals[name].to_numpy(np.int64), n_concepts)
        log.info("balance of %s: %s", name, metrics[name])


SUBSETS = ("pool", "random", "deduplicated", "curated")


def summarize(rep: dict) -> list[str]:
    """The balance table: rows, concepts covered, entropy, effective concepts, head share, KL."""
    if "label_column" not in rep or "pool" not in rep:  # a record without the balance (written by an older lakecurate)
        return []
    lines = ["", f"  balance over '{rep['label_column']}' ({rep['pool']['concepts_covered']} concepts in the pool):",
             f"    {'subset':<13}{'rows':>9}{'covered':>9}{'entropy':>9}{'eff. concepts':>15}{'largest share':>15}{'KL to uniform':>15}"]
    for name in SUBSETS:
        if name not in rep:  # "deduplicated": runs with a dedup stage only
            continue
        r = rep[name]
        lines.append(f"    {name:<13}{r['n']:>9}{r['concepts_covered']:>9}{r['entropy_bits']:>9.3f}"
                     f"{r['effective_concepts']:>15.1f}{r['largest_share']:>15.3f}{r['kl_to_uniform_bits']:>15.3f}")
    return lines


STAGE = Stage(
    name="report",
    run=run_report,
    help="balance of the curated subset against a random one, over a column of known labels",
    writes=lambda cfg: (LABEL_COUNTS,),
    summary=summarize,
    automatic=lambda cfg: cfg.report.label_column is not None and "sample" in cfg.stages,
    checks=Checks(input=preflight),
    reruns=Reruns(depends_on=("report",)),
)
