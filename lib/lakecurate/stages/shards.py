"""Shards stage: the run's rows joined back to their payload, one Delta partition per cluster -> ``shards``.

What a training job reads (:mod:`lakecurate.torch`, no Spark): the curated rows (or every row
the tree assigned, ``shards.rows: assigned``) with the source's payload columns (the text, the
image bytes or path, any column named in ``shards.payload_columns``), and ``shard``, the row's
cluster at ``shards.level`` (the top level by default: Divide and Contrast's K experts). The
table is partitioned by (``run_id``, ``shard``): reading one shard opens only that shard's files.

1. the rows: ``curated`` (or ``assignments``) of the run, ``shard = path[level]``;
2. the payload: the run's input as this stage sees it (e.g. the embeddings) or the embed stage's
   raw source, by id. Before anything is written, an id-only join checks that every row finds
   exactly one source row (a missing or repeated id is an error naming it, never a short or
   doubled table);
3. one write: rows shuffled by shard, so each shard is one file (split past
   ``shards.max_rows_per_file``) of 4 MiB row groups; a rerun replaces the run's rows;
4. ``runs.metrics``: rows and bytes per shard.
"""

from __future__ import annotations

import logging
import time

from lakecurate.config import RunConfig
from lakecurate.errors import ConfigError, InputDataError, TableError
from lakecurate.faults import fault_point
from lakecurate.stages.context import Checks, Command, Reruns, Stage, StageContext
from lakecurate.tables import ASSIGNMENTS, CLUSTERS, CURATED, SHARDS

log = logging.getLogger(__name__)


def shard_level(cfg: RunConfig) -> int:
    """The tree level whose clusters are the shards (``shards.level``; default the top)."""
    return cfg.shards.level or len(cfg.clustering.n_clusters)


def source_kind(cfg: RunConfig) -> str:
    """``input`` or ``embed_source``: where the payload is joined from."""
    if cfg.shards.source != "auto":
        return cfg.shards.source
    return "embed_source" if cfg.embed is not None else "input"


def check(cfg: RunConfig) -> None:
    """What spans sections, before any work: the level against the tree, the stage the rows come from."""
    scfg = cfg.shards
    levels = len(cfg.clustering.n_clusters)
    if scfg.level is not None and scfg.level > levels:
        raise ConfigError(f"shards.level={scfg.level} but the tree has {levels} level(s) (clustering.n_clusters="
                          f"{list(cfg.clustering.n_clusters)}): give a level in 1..{levels}")
    needs = "sample" if scfg.rows == "curated" else "cluster"
    if needs not in cfg.stages and not (needs == "cluster" and "assign" in cfg.stages):
        hint = " (or shards.rows=assigned for every row of the tree)" if needs == "sample" else ""
        raise ConfigError(f"shards.rows={scfg.rows!r} reads the tables of the {needs} stage: list {needs!r} in stages{hint}")
    if scfg.source == "embed_source" and cfg.embed is None:
        raise ConfigError("shards.source='embed_source' joins the embed stage's source: the config needs an embed section")


def preflight(cfg: RunConfig, facts) -> None:
    if source_kind(cfg) == "input" and cfg.shards.payload_columns:
        names = cfg.shards.payload_columns
        facts.require_columns({c: "any" for c in names}, {c: f"shards.payload_columns[{i}]" for i, c in enumerate(names)})


def payload_frame(ctx: StageContext):
    """(DataFrame of id + payload columns, payload columns, where) from the configured source."""
    from pyspark.sql import functions as F

    cfg = ctx.config
    id_col = cfg.input.id_column
    chosen = cfg.shards.payload_columns
    if source_kind(cfg) == "input":
        df = ctx.input_frame("shards")
        where = f"input {cfg.input.location}"
        default = list(cfg.input.passthrough_columns)
        source_id = id_col
    else:
        src = cfg.embed.source
        where = f"embed.source {src.path or src.table}"
        snapshot = ctx.plan.inputs.get("embed.source")
        if src.format == "files":
            files = ctx.lake.read_files(src.path, glob=src.glob, recursive=src.recursive, key="embed.source.path")
            ident = F.col("path") if src.file_id == "path" else F.xxhash64(F.col("path"))
            df = files.withColumn(src.id_column, ident) if src.id_column != "path" else files.withColumn("_id", ident)
            source_id = src.id_column if src.id_column != "path" else "_id"
            default = ["path"] + [c for c in src.passthrough_columns if c != "path"]
        else:
            df = ctx.lake.read_source(src.format, path=src.path, table=src.table, key="embed.source", snapshot=snapshot)
            source_id = src.id_column
            default = [cfg.embed.payload_column(ctx.plan.encoder)] + list(src.passthrough_columns)
    columns = list(chosen) if chosen is not None else [c for c in default if c != source_id]
    missing = [c for c in [source_id, *columns] if c not in df.columns]
    if missing:
        named = "shards.payload_columns" if chosen is not None else "the default payload"
        raise InputDataError(f"{named} names column(s) {missing} that {where} does not have; it has {sorted(df.columns)}")
    frame = df.select(F.col(source_id).alias(id_col), *columns)
    return frame, columns, where


def shard_rows(ctx: StageContext):
    """(DataFrame of id, cluster, path, copy, tree_run_id, the tree's run) for ``shards.rows``."""
    from pyspark.sql import functions as F

    cfg = ctx.config
    id_col = cfg.input.id_column
    tree_run = ctx.output_run("cluster")
    if cfg.shards.rows == "curated":
        ctx.runlog.require("sample", by="shards")
        rows = ctx.lake.read(CURATED, ctx.run_id).select(id_col, "cluster", "path", "copy", "tree_run_id")
    else:
        if ctx.plan.has("assign"):
            ctx.runlog.require("assign", by="shards")
        elif ctx.output_run("cluster") == ctx.run_id:
            ctx.runlog.require("cluster", by="shards")
        rows = ctx.lake.read(ASSIGNMENTS, tree_run).select(id_col, "cluster", "path", F.lit(0).alias("copy"),
                                                           F.lit(tree_run).alias("tree_run_id"))
    return rows, tree_run


def tree_levels(ctx: StageContext, tree_run: str) -> int:
    from pyspark.sql import functions as F

    if not ctx.lake.exists(CLUSTERS):
        raise TableError(f"table {CLUSTERS!r} does not exist under {ctx.lake.root!r}: run the cluster stage first")
    top = ctx.lake.read(CLUSTERS, tree_run).agg(F.max("level")).first()[0]
    if top is None:
        raise TableError(f"table {CLUSTERS!r} has no rows for run {tree_run!r}: run the cluster stage first")
    return int(top)


def check_join(rows, payload, id_col: str, where: str, what: str) -> int:
    """The rows' count, after checking (on ids alone) that every row finds exactly one payload row."""
    from pyspark.sql import functions as F

    n_rows = rows.count()
    counts = payload.select(id_col).groupBy(id_col).count()
    found = rows.select(id_col).distinct().join(counts, on=id_col, how="left")
    bad = found.where(F.col("count").isNull() | (F.col("count") > 1)).limit(3).collect()
    if bad:
        missing = [r[id_col] for r in bad if r["count"] is None]
        repeated = [r[id_col] for r in bad if r["count"] is not None]
        if missing:
            raise InputDataError(f"{what} row(s) with {id_col}={missing} have no row in {where}: the source changed since the run "
                                 "read it, or shards.source names another source")
        raise InputDataError(f"{where} holds {id_col}={repeated} more than once: its payload cannot be joined to one row")
    return n_rows


def run_shards(ctx: StageContext, metrics: dict) -> None:
    from pyspark.sql import functions as F

    cfg = ctx.config
    scfg = cfg.shards
    id_col = cfg.input.id_column
    level = shard_level(cfg)
    t0 = time.perf_counter()
    rows, tree_run = shard_rows(ctx)
    depth = tree_levels(ctx, tree_run)
    if level > depth:
        raise TableError(f"shards.level={level} but the tree of run {tree_run!r} has {depth} level(s)")
    payload, columns, where = payload_frame(ctx)
    what = "curated" if scfg.rows == "curated" else "assigned"
    n_rows = check_join(rows, payload, id_col, where, what)
    log.info("shards: %d %s rows of run %s by their level-%d cluster, with %s from %s", n_rows, what, ctx.run_id, level, columns, where)
    table = (
        rows.join(payload, on=id_col, how="inner")
        .withColumn("shard", F.element_at("path", level))
        .select(id_col, "shard", F.lit(level).alias("level"), "cluster", "path", "copy", "tree_run_id", *columns)
        .repartition("shard")  # each shard's rows in one task: one file per shard (split past max_rows_per_file)
    )
    fault_point("shards:write")
    info = ctx.lake.write_run(table, SHARDS, ctx.run_id, max_rows_per_file=scfg.max_rows_per_file)
    per_shard = ctx.lake.partition_sizes(SHARDS, ctx.run_id, "shard")
    written = sum(v["rows"] for v in per_shard.values())
    if written != n_rows:
        raise TableError(f"table {SHARDS!r} holds {written} rows for run {ctx.run_id!r}, expected {n_rows}")
    sizes = sorted(v["rows"] for v in per_shard.values())
    metrics.update(
        rows=n_rows, source_rows=what, level=level, tree_run_id=tree_run, payload_columns=columns, payload_source=where,
        n_shards=len(per_shard), largest_shard=sizes[-1] if sizes else 0, smallest_shard=sizes[0] if sizes else 0,
        shards={str(k): v for k, v in sorted(per_shard.items())}, table_version=info.version,
        seconds=round(time.perf_counter() - t0, 3),
    )


def summarize(m: dict) -> list[str]:
    total = sum((v.get("bytes") or 0) for v in (m.get("shards") or {}).values())
    size = f", {total / 2**20:.1f} MiB" if total else ""
    return [f"  shards: {m.get('rows')} {m.get('source_rows')} rows in {m.get('n_shards')} shards (level {m.get('level')}; "
            f"{m.get('smallest_shard')} to {m.get('largest_shard')} rows{size}) with {m.get('payload_columns')}"]


STAGE = Stage(
    name="shards",
    run=run_shards,
    help="the run's curated (or all assigned) rows with their payload, one Delta partition per cluster -> the shards table",
    writes=lambda cfg: (SHARDS,),
    summary=summarize,
    command=Command(adds=True),
    checks=Checks(config=check, input=preflight),
    reruns=Reruns(depends_on=("shards",)),
)
