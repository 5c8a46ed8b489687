"""Embed stage: raw texts or images -> ``embeddings`` (and ``rejects``), incrementally.

Plan, all on the driver and before any encoding job:

1. load the encoder once on the driver (CPU) to learn its name and dimension: a missing model
   path or a model that does not load is a ConfigError here, not a failed task an hour in;
2. read the source (:func:`lakecurate.inputs.read_embed_source`) and check that the planned
   output fits the existing ``embeddings`` / ``rejects`` tables (same columns, and the same
   dimension as the rows already there for this model);
3. anti-join the source ids against the ids the table already holds for this model (and, unless
   ``retry_rejects``, the ids this model already rejected): only new ids are embedded.

Then one encoding pass on the executors (:mod:`lakecurate.spark.encode`); the result is kept
(:func:`lakecurate.spark.cache.keep`: cached, or staged in the lake), counted, and committed as one append to each table under the run's ``run_id``. Counts add up:
inputs = embedded + rejected + already embedded + previously rejected. The stage hands the
model's rows of ``embeddings`` (every id ever embedded with it) on as the run's input.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

from lakecurate.embed.batches import REASON
from lakecurate.embed.encoders import Encoder, get_cached_encoder, model_label
from lakecurate.errors import ConfigError, LakecurateError
from lakecurate.inputs import OVERSIZED, read_embed_source
from lakecurate.spark.cache import keep
from lakecurate.spark.progress import TaskCounters, progress
from lakecurate.spark.encode import DIM, MODEL, embeddings_rows, encode_rows, encoded_schema, reject_rows
from lakecurate.spark.session import default_parallelism
from lakecurate.stages.context import Command, HandsOn, Reruns, Stage, StageContext
from lakecurate.tables import DESCRIPTIONS, EMBEDDINGS, REJECTS

log = logging.getLogger(__name__)

_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
#: encoding tasks get at most about this many rows (more partitions than cores on a big source,
#: so a lost task costs minutes, not hours), unless ``embed.partitions`` says otherwise
ROWS_PER_PARTITION = 100_000


def load_on_driver(spec) -> Encoder:
    """The encoder on the driver's CPU, only to learn name and dim (and fail early on a bad model)."""
    return get_cached_encoder(dataclasses.replace(spec, device="cpu", half_precision=False))


def _check_existing(ctx: StageContext, name: str, planned, model: str, dim: Optional[int]) -> bool:
    """Whether table ``name`` exists; ConfigError if it cannot take the planned rows."""
    from pyspark.sql import functions as F

    if not ctx.lake.exists(name):
        return False
    existing = ctx.lake.read(name).drop("run_id")
    old = {f.name: f.dataType.simpleString() for f in existing.schema.fields}
    new = {f.name: f.dataType.simpleString() for f in planned.schema.fields}
    if old != new:
        raise ConfigError(
            f"table {name!r} under {ctx.lake.root!r} has columns {old}; this embed config would write {new} "
            "(another id type or other passthrough columns): set embed.table / embed.rejects_table to a new table"
        )
    if dim is not None:
        dims = [r[DIM] for r in existing.where(F.col(MODEL) == model).select(DIM).distinct().limit(5).collect()]
        if dims and dims != [dim]:
            raise ConfigError(
                f"encoder {model!r} embeds to dimension {dim} but table {name!r} already holds {model!r} rows of "
                f"dimension {dims}: the model behind this name changed; set embed.encoder.name or embed.table"
            )
    return True


def _not_yet_rejected(ctx: StageContext, rejects, model: str, table_exists: bool):
    """The rejects not already in the table for this model: an id rejected again (``retry_rejects``)
    keeps its first row; rows without an id cannot be told apart, so they are written once."""
    from pyspark.sql import functions as F

    if not table_exists:
        return rejects
    id_col = ctx.config.embed.source.id_column
    old = ctx.lake.read(ctx.config.embed.rejects_table).where(F.col(MODEL) == model)
    fresh = rejects.join(old.where(F.col(id_col).isNotNull()).select(id_col).distinct(), id_col, "left_anti")
    if old.where(F.col(id_col).isNull()).limit(1).count():
        fresh = fresh.where(F.col(id_col).isNotNull())
    return fresh


def run_embed(ctx: StageContext, metrics: dict) -> None:
    from pyspark.sql import functions as F

    ecfg = ctx.config.embed
    src = ecfg.source
    spec = ctx.plan.encoder
    t0 = time.perf_counter()

    encoder = load_on_driver(spec)
    name = model_label(spec)
    if encoder.name != name:  # the cluster stage finds the rows by model_label
        raise LakecurateError(f"encoder loaded as {encoder.name!r} but model_label gives {name!r}")
    dim = encoder.dim
    metrics.update(model=name, dim=dim, encoder=encoder.describe())
    metrics["encoder"]["device"] = "auto" if spec.device == "auto" else spec.device  # the driver probe ran on CPU

    source = read_embed_source(ctx.lake, ecfg, spec, ctx.plan.inputs.get("embed.source"))
    id_col, passthrough = src.id_column, list(src.passthrough_columns)
    planned = ctx.spark.createDataFrame([], encoded_schema(source, id_col, passthrough))
    emb_exists = _check_existing(ctx, ecfg.table, embeddings_rows(planned, id_col, name, dim, passthrough), name, dim)
    rej_exists = _check_existing(ctx, ecfg.rejects_table, reject_rows(planned, id_col, name, passthrough), name, None)

    log.info("embed: counting the source rows and those already embedded or rejected (ids only)")
    n_inputs, already, before = _id_counts(ctx, source, id_col, name, emb_exists, rej_exists and not ecfg.retry_rejects)
    metrics.update(source_rows=n_inputs, already_embedded=already)
    if n_inputs == already + before:  # nothing new: no encoding job at all, the cost of reading the ids
        metrics.update(embedded=0, rejected=0, previously_rejected=before, nothing_new=True, rows_per_second=None)
        log.info("nothing new to embed: all %d input rows already have rows in %s (%d) or %s (%d) for model %s",
                 n_inputs, ecfg.table, already, ecfg.rejects_table, before, name)
        metrics["seconds"] = round(time.perf_counter() - t0, 3)
        return
    n_partitions = ecfg.partitions or max(default_parallelism(ctx.spark), -(-n_inputs // ROWS_PER_PARTITION))
    todo = source
    if emb_exists:
        todo = todo.join(ctx.lake.read(ecfg.table).where(F.col(MODEL) == name).select(id_col), id_col, "left_anti")
    if rej_exists and not ecfg.retry_rejects:
        rejected_ids = ctx.lake.read(ecfg.rejects_table).where((F.col(MODEL) == name) & F.col(id_col).isNotNull()).select(id_col)
        todo = todo.join(rejected_ids.distinct(), id_col, "left_anti")
    # a join's output partitioning is the shuffle's (and AQE may coalesce it to one task); an explicit
    # count keeps every core busy on the expensive part
    todo = todo.repartition(n_partitions)
    scratch = ctx.lake.scratch("embed-progress")
    counters = TaskCounters(scratch.path, scratch.options, before_rows="loading the model")
    encoded = encode_rows(
        todo, spec, dim, id_column=id_col, payload_column=ecfg.payload_column(spec), passthrough=passthrough,
        oversized_column=OVERSIZED if OVERSIZED in source.columns else None, threads_per_task=ecfg.threads_per_task,
        counters=counters,
    )

    old_batch = ctx.spark.conf.get(_BATCH_CONF, None)
    ctx.spark.conf.set(_BATCH_CONF, str(ecfg.batch_rows))
    kept = None
    try:
        t_encode = time.perf_counter()
        n_new = n_inputs - already - before
        with progress(ctx.spark, f"embed: encoding {n_new:,} new rows with {name}", rows=n_new, counters=counters):
            kept = keep(encoded, spark=ctx.spark, lake=ctx.lake, mode=ctx.config.spark.block_cache, what="encoded rows")
            encoded = kept.frame
            counts = {bool(r["ok"]): int(r["count"]) for r in encoded.groupBy(F.col(REASON).isNull().alias("ok")).count().collect()}
        encode_seconds = time.perf_counter() - t_encode
        n_embedded, n_rejected = counts.get(True, 0), counts.get(False, 0)
        previously_rejected = n_inputs - already - n_embedded - n_rejected
        metrics.update(
            source_rows=n_inputs, embedded=n_embedded, rejected=n_rejected, already_embedded=already,
            previously_rejected=previously_rejected, partitions=n_partitions, batch_rows=ecfg.batch_rows,
            encode_seconds=round(encode_seconds, 3),
            rows_per_second=round((n_embedded + n_rejected) / encode_seconds, 1) if encode_seconds > 0 else None,
            nothing_new=n_embedded + n_rejected == 0,
        )
        if previously_rejected < 0:  # duplicate ids in the source make the semi-join count rows twice
            log.warning("embed counts do not add up (%s): does the source repeat ids?", metrics)
        if metrics["nothing_new"]:
            log.info(
                "nothing new to embed: all %d input rows already have rows in %s (%d) or %s (%d) for model %s",
                n_inputs, ecfg.table, already, ecfg.rejects_table, previously_rejected, name,
            )
            return
        if n_embedded:
            ctx.lake.append_run(embeddings_rows(encoded.where(F.col(REASON).isNull()), id_col, name, dim, passthrough),
                                ecfg.table, ctx.run_id, description=DESCRIPTIONS[EMBEDDINGS])
        if n_rejected:
            fresh = _not_yet_rejected(ctx, reject_rows(encoded.where(F.col(REASON).isNotNull()), id_col, name, passthrough), name, rej_exists)
            metrics["rejects_written"] = fresh.count()
            if metrics["rejects_written"]:
                ctx.lake.append_run(fresh, ecfg.rejects_table, ctx.run_id, description=DESCRIPTIONS[REJECTS])
            top = encoded.where(F.col(REASON).isNotNull()).groupBy(REASON).count().orderBy(F.desc("count")).limit(5).collect()
            metrics["reject_reasons"] = {r[REASON][:200]: int(r["count"]) for r in top}
            log.warning("embed: %d of %d new rows rejected (see table %s), e.g. %s", n_rejected, n_embedded + n_rejected, ecfg.rejects_table, metrics["reject_reasons"])
        log.info(
            "embedded %d rows with %s (dim %d) in %.1fs (%.0f rows/s); %d rejected, %d already embedded, %d previously rejected",
            n_embedded, name, dim, encode_seconds, metrics["rows_per_second"] or 0, n_rejected, already, previously_rejected,
        )
    finally:
        scratch.remove()
        if kept is not None:
            kept.release()
        if old_batch is None:
            ctx.spark.conf.unset(_BATCH_CONF)
        else:
            ctx.spark.conf.set(_BATCH_CONF, old_batch)
        metrics["seconds"] = round(time.perf_counter() - t0, 3)


def _id_counts(ctx: StageContext, source, id_col: str, model: str, emb_exists: bool, skip_rejected: bool) -> tuple[int, int, int]:
    """(source rows, of them already embedded with ``model``, of the rest already rejected by it
    and not retried) in one pass over the ids: the source's ids left-joined with each table's
    distinct ids for the model (a distinct right side never multiplies a row)."""
    from pyspark.sql import functions as F

    ecfg = ctx.config.embed
    ids = source.select(id_col)
    done = F.lit(False)
    rejected = F.lit(False)
    if emb_exists:
        held = ctx.lake.read(ecfg.table).where(F.col(MODEL) == model).select(id_col).distinct().withColumn("_lc_done", F.lit(True))
        ids = ids.join(held, id_col, "left")
        done = F.coalesce(F.col("_lc_done"), F.lit(False))
    if skip_rejected:
        rej = (ctx.lake.read(ecfg.rejects_table).where((F.col(MODEL) == model) & F.col(id_col).isNotNull())
               .select(id_col).distinct().withColumn("_lc_rej", F.lit(True)))
        ids = ids.join(rej, id_col, "left")
        rejected = F.coalesce(F.col("_lc_rej"), F.lit(False)) & ~done
    row = ids.agg(F.count(F.lit(1)).alias("n"), F.sum(done.cast("long")).alias("done"), F.sum(rejected.cast("long")).alias("rej")).first()
    return int(row["n"]), int(row["done"] or 0), int(row["rej"] or 0)


def embedded_rows(ctx: StageContext, upstream):
    """What the stages after embed read: the configured model's embeddings (id / embedding named per
    ``input.*``), every id ever embedded with it across runs of the stage."""
    from pyspark.sql import functions as F

    ecfg = ctx.config.embed
    df = ctx.lake.read(ecfg.table).where(F.col(MODEL) == model_label(ctx.plan.encoder)).drop("run_id", MODEL, DIM)
    for old, new in {ecfg.source.id_column: ctx.config.input.id_column, "embedding": ctx.config.input.embedding_column}.items():
        if old != new:
            df = df.withColumnRenamed(old, new)
    return df


def embedded_files(ctx: StageContext, upstream):
    """:func:`embedded_rows` as files: the embeddings table's files, read for the configured model's rows."""
    from lakecurate.inputs import lake_table_files

    ecfg, icfg = ctx.config.embed, ctx.config.input
    return lake_table_files(ctx.lake, ecfg.table, {icfg.id_column: ecfg.source.id_column, icfg.embedding_column: "embedding"},
                            f"the {ecfg.table} table", equal={MODEL: model_label(ctx.plan.encoder)})


def summarize(m: dict) -> list[str]:
    rate = f" at {m['rows_per_second']} rows/s" if m.get("rows_per_second") is not None else ""
    return [f"  embedded {m.get('embedded')} new rows with {m.get('model')} ({m.get('dim')}-d)"
            f"{rate}; rejected {m.get('rejected')}; already embedded "
            f"{m.get('already_embedded')}, previously rejected {m.get('previously_rejected')}; "
            f"{m.get('source_rows')} source rows" + (" (nothing new to embed)" if m.get("nothing_new") else "")]


STAGE = Stage(
    name="embed",
    run=run_embed,
    help="embed new source rows (text or images) on the executors -> the embeddings table",
    writes=lambda cfg: (cfg.embed.table, cfg.embed.rejects_table) if cfg.embed is not None else (),
    summary=summarize,
    section="embed",
    hands_on=HandsOn(embedded_rows, replaces_input=True, files=embedded_files),
    command=Command(fresh_run=True),
    reruns=Reruns(depends_on=("embed",)),
)
