"""Balance report: the curated subset against a uniform random subset of the same size.

Only runs when ``report.label_column`` names a column of the input with known labels (a
generated pool's concepts, or a labelled evaluation slice of a real lake). All counting happens
in Spark; only per-label counts reach the driver.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from lakecurate.core.keys import random_keys
from lakecurate.core.metrics import balance_from_counts
from lakecurate.errors import InputDataError
from lakecurate.faults import fault_point
from lakecurate.spark.arrow import row_keys
from lakecurate.stages.context import Stage, StageContext
from lakecurate.tables import CURATED

log = logging.getLogger(__name__)
_REPORT_STREAM = 3


def _label_counts(df, label: str) -> np.ndarray:
    return np.array([r["count"] for r in df.groupBy(label).count().collect()], dtype=np.int64)


def preflight(cfg, facts) -> None:
    label = cfg.report.label_column
    if label not in facts.columns:
        raise InputDataError(f"report.label_column={label!r} is not a column of the input {facts.where} (columns: {sorted(facts.columns)})")


def run_report(ctx: StageContext, metrics: dict) -> None:
    from pyspark.sql import types as T

    cfg = ctx.config
    label = cfg.report.label_column
    id_col = cfg.input.id_column
    # the baseline is the pool as it came in: with a dedup stage in the run, "pool" and "random"
    # include the copies (what a random subset of the raw pool would hold), "deduplicated" does not
    source = ctx.input_frame("dedup")
    if label not in source.columns:
        raise InputDataError(f"report.label_column={label!r} is not a column of the input (columns: {source.columns})")
    labelled = source.select(id_col, label)
    curated = ctx.lake.read(CURATED, ctx.run_id).select(id_col)
    n = curated.count()
    seed = cfg.report.seed

    def keyed(batches):
        for b in batches:
            key = (random_keys(row_keys(b.column(id_col)), seed, _REPORT_STREAM) >> np.uint64(1)).astype(np.int64)
            yield pa.RecordBatch.from_arrays(list(b.columns) + [pa.array(key)], names=list(b.schema.names) + ["_key"])

    schema = T.StructType(list(labelled.schema.fields) + [T.StructField("_key", T.LongType())])
    random_subset = labelled.mapInArrow(keyed, schema).orderBy("_key").limit(n)
    pool_counts = _label_counts(labelled, label)
    n_concepts = int(pool_counts.size)
    metrics["label_column"] = label
    metrics["pool"] = balance_from_counts(pool_counts, n_concepts)
    metrics["random"] = balance_from_counts(_label_counts(random_subset, label), n_concepts)
    fault_point("report:counted")
    metrics["curated"] = balance_from_counts(_label_counts(curated.join(labelled, on=id_col), label), n_concepts)
    names = ["pool", "random", "curated"]
    if ctx.plan.has("dedup"):
        kept = ctx.input_frame("report").select(id_col, label)
        metrics["deduplicated"] = balance_from_counts(_label_counts(kept, label), n_concepts)
        names.insert(2, "deduplicated")
    for name in names:
        log.info("balance of %s: %s", name, metrics[name])


SUBSETS = ("pool", "random", "deduplicated", "curated")


def summarize(rep: dict) -> list[str]:
    """The balance table: rows, concepts covered, entropy, effective concepts, head share, KL."""
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
    config_sections=("report",),
    run=run_report,
    help="balance of the curated subset against a random one, over a column of known labels",
    writes=lambda cfg: (),
    summary=summarize,
    automatic=lambda cfg: cfg.report.label_column is not None and "sample" in cfg.stages,
    preflight=preflight,
)
