"""``lakecurate run``: the stages of one run, in order, resumable by run_id.

input -> [dedup] -> cluster -> sample -> [report]. Each stage reads and writes tables through the
lake; a stage whose success for this run and config is already in the ``runs`` table is skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pyarrow as pa

from lakecurate.config import RunConfig, SyntheticConfig, to_dict
from lakecurate.core.synthetic import long_tailed_pool, redundant_pool
from lakecurate.lake import Lake
from lakecurate.runlog import RunLog
from lakecurate.spark.arrow import matrix_to_list_array
from lakecurate.spark.session import get_spark
from lakecurate.stages.cluster import run_cluster
from lakecurate.stages.context import POOL, StageContext, synthetic_pool_id
from lakecurate.stages.dedup import run_dedup
from lakecurate.stages.embed import run_embed
from lakecurate.stages.report import run_report
from lakecurate.stages.sample import run_sample

log = logging.getLogger(__name__)

StageFn = Callable[[StageContext, dict], None]
STAGE_FUNCTIONS: dict[str, StageFn] = {"cluster": run_cluster, "sample": run_sample}


def register_stage(name: str, fn: StageFn) -> None:
    """Stages that live in their own packages (dedup, embed) plug in here."""
    STAGE_FUNCTIONS[name] = fn


register_stage("embed", run_embed)
register_stage("dedup", run_dedup)


@dataclass
class RunResult:
    run_id: str
    lake_root: str
    backend: str
    stages: dict[str, dict] = field(default_factory=dict)  # stage -> metrics
    skipped: list[str] = field(default_factory=list)
    report: Optional[dict] = None
    seconds: float = 0.0
    tables: dict[str, str] = field(default_factory=dict)


def ensure_synthetic_pool(lake: Lake, cfg: SyntheticConfig) -> None:
    """Generate the long-tailed demo pool into the ``pool`` table once per parameter set."""
    pool_id = synthetic_pool_id(cfg)
    if lake.exists(POOL) and lake.read(POOL, pool_id).limit(1).count() == 1:
        return
    log.info("generating the synthetic pool %s", pool_id)
    if cfg.n_items:
        pool = redundant_pool(
            cfg.n, cfg.dim, cfg.n_items, copies_alpha=cfg.copies_alpha, copy_noise=cfg.copy_noise,
            n_concepts=cfg.n_concepts, alpha=cfg.alpha, spread=cfg.spread, seed=cfg.seed,
        )
    else:
        pool = long_tailed_pool(cfg.n, cfg.dim, cfg.n_concepts, alpha=cfg.alpha, spread=cfg.spread, seed=cfg.seed)
    table = pa.table(
        {
            "id": pa.array(np.arange(cfg.n, dtype=np.int64)),
            "embedding": matrix_to_list_array(pool.x),
            "concept": pa.array(pool.concept.astype(np.int32)),
            **({"item": pa.array(pool.item.astype(np.int32))} if cfg.n_items else {}),
        }
    )
    lake.write_arrow(table, POOL, pool_id, description="generated long-tailed pool with known concepts")


def run(config: RunConfig, spark=None) -> RunResult:
    """Run every configured stage of ``config`` (validated) and return what was done."""
    t0 = time.perf_counter()
    spark = spark or get_spark(config.spark.master, config.spark.app_name, _spark_conf(config))
    lake = Lake(spark, config.lake)
    if config.input.format == "synthetic":
        ensure_synthetic_pool(lake, config.input.synthetic)
    runlog = RunLog(lake, config.run_id, to_dict(config), config.fingerprint())
    ctx = StageContext(spark, lake, config, runlog)
    result = RunResult(run_id=config.run_id, lake_root=lake.root, backend=lake.backend)
    log.info("run %s: stages %s, lake %s", config.run_id, config.stages, lake.root)
    for stage in config.stages:
        done = runlog.completed(stage)
        if done is not None:
            log.info("stage %s already succeeded for run %s: skipped", stage, config.run_id)
            result.skipped.append(stage)
            result.stages[stage] = done
            continue
        with runlog.track(stage) as metrics:
            STAGE_FUNCTIONS[stage](ctx, metrics)
        result.stages[stage] = metrics
    if config.report.label_column and "sample" in config.stages:
        with runlog.track("report") as metrics:
            run_report(ctx, metrics)
        result.report = metrics
    embed_tables = (config.embed.table, config.embed.rejects_table) if config.embed is not None else ()
    for name in (*embed_tables, "pool", "duplicates", "clusters", "assignments", "curated", "runs"):
        if lake.exists(name):
            lake.register(name)
            result.tables[name] = lake.path(name)
    result.seconds = time.perf_counter() - t0
    return result


def _spark_conf(config: RunConfig) -> dict:
    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(config.spark.arrow_batch_rows)}
    conf.update(config.spark.conf)
    return conf
