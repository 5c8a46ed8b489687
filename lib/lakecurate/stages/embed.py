"""Embed stage: raw texts or images -> ``embeddings`` (and ``rejects``), incrementally.

Plan, all on the driver and before any encoding job:

1. load the encoder once on the driver (CPU) to learn its name and dimension: a missing model
   path or a model that does not load is a ConfigError here, not a failed task an hour in;
2. read the source (a Delta/Parquet table with an id and a text or image-bytes column, or image
   files through Spark's ``binaryFile`` source), check its columns, and check that the planned
   output fits the existing ``embeddings`` / ``rejects`` tables (same columns, and the same
   dimension as the rows already there for this model);
3. anti-join the source ids against the ids the table already holds for this model (and, unless
   ``retry_rejects``, the ids this model already rejected): only new ids are embedded.

Then one ``mapInArrow`` pass: each Python worker gets its encoder from the per-process cache
(loaded once, on the task's GPU when Spark assigned one, else on CPU with the task's cores as
torch threads) and turns every Arrow batch into embedded rows and rejected rows (reason set). The
result is cached, counted, and committed as one append to each table under the run's ``run_id``.
Counts add up: inputs = embedded + rejected + already embedded + previously rejected.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from lakecurate.config import InputConfig, RunConfig, apply_overrides, from_dict, load_yaml
from lakecurate.embed.config import EmbedConfig, model_label
from lakecurate.embed.encoders import Encoder, find_text_rejects
from lakecurate.errors import ConfigError, InputDataError, LakecurateError
from lakecurate.spark.arrow import matrix_to_list_array
from lakecurate.stages.context import StageContext

log = logging.getLogger(__name__)

EMBEDDING = "embedding"
MODEL = "model"
DIM = "dim"
REASON = "reason"
OVERSIZED = "_oversized_bytes"
_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


# ------------------------------------------------------------------------------ config entry point
def load_embed_config(path: Optional[str], overrides: Sequence[str] = (), data: Optional[dict] = None) -> RunConfig:
    """The config of ``lakecurate embed``: the file's run config with ``stages: [embed]`` only.

    Without an explicit ``run_id`` every invocation is a new run (``<name>-embed-<UTC time>``):
    the stage is incremental, so re-running it on a grown source must not be skipped as
    "already done" the way a resumed ``lakecurate run`` skips committed stages.
    """
    raw = dict(data) if data is not None else load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides))
    raw["stages"] = ["embed"]
    if raw.get("run_id") is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        raw["run_id"] = f"{raw.get('name') or 'lakecurate'}-embed-{stamp}"
    cfg = from_dict(RunConfig, raw)
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------------ the cluster stage's input
def embedded_frame(ctx: StageContext):
    """The embeddings of the configured model as the run's input (id / embedding named per ``input.*``).

    The table is the pool: every id ever embedded with this model, across runs of the stage.
    """
    from pyspark.sql import functions as F

    ecfg: EmbedConfig = ctx.config.embed  # type: ignore[assignment]
    name = model_label(ecfg.encoder_spec)  # type: ignore[attr-defined]
    df = ctx.lake.read(ecfg.table).where(F.col(MODEL) == name).drop("run_id", MODEL, DIM)
    renames = {ecfg.source.id_column: ctx.config.input.id_column, EMBEDDING: ctx.config.input.embedding_column}
    for old, new in renames.items():
        if old != new:
            df = df.withColumnRenamed(old, new)
    return df


# ------------------------------------------------------------------------------ executor side (no Spark import)
def encode_record_batch(
    encoder: Encoder,
    batch: pa.RecordBatch,
    *,
    id_column: str,
    payload_column: str,
    passthrough: Sequence[str],
    oversized_column: Optional[str] = None,
) -> Iterator[pa.RecordBatch]:
    """One Arrow batch -> a batch of embedded rows and a batch of rejected rows (either may be absent).

    Output columns: id, embedding (null for a reject), reason (null when embedded), passthrough.
    Every input row comes out exactly once. ``oversized_column`` (files) holds the size of a file
    that was too large to read (its payload is null), else null.
    """
    n = batch.num_rows
    if n == 0:
        return
    ids = batch.column(id_column)
    payload = batch.column(payload_column).to_pylist()
    reasons: dict[int, str] = {}
    if oversized_column is not None:
        limit = encoder.spec.max_bytes
        for i, size in enumerate(batch.column(oversized_column).to_pylist()):
            if size is not None:
                reasons[i] = f"file is {size} bytes, over encoder.max_bytes={limit}"
    for i in np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False)):
        reasons[int(i)] = "null id"
    usable = [i for i in range(n) if i not in reasons]
    items = [payload[i] for i in usable]
    if encoder.modality == "text":
        for j, reason in find_text_rejects(items):
            reasons[usable[j]] = reason
        kept = [i for i in usable if i not in reasons]
        emb = encoder.encode_texts([payload[i] for i in kept])
    else:
        result = encoder.encode_images(items)
        for j, reason in result.rejects:
            reasons[usable[j]] = reason
        kept = [usable[j] for j in result.kept]
        emb = result.embeddings
    extra = [batch.column(c) for c in passthrough]
    names = [id_column, EMBEDDING, REASON, *passthrough]
    if kept:
        take = pa.array(kept, pa.int64())
        yield pa.RecordBatch.from_arrays(
            [ids.take(take), matrix_to_list_array(emb), pa.nulls(len(kept), pa.string())] + [c.take(take) for c in extra],
            names=names,
        )
    if reasons:
        order = sorted(reasons)
        take = pa.array(order, pa.int64())
        yield pa.RecordBatch.from_arrays(
            [ids.take(take), pa.nulls(len(order), pa.list_(pa.float32())), pa.array([reasons[i] for i in order], pa.string())]
            + [c.take(take) for c in extra],
            names=names,
        )


def _task_placement(threads_per_task: int) -> tuple[Optional[int], Optional[int]]:
    """(torch CPU threads, GPU index) for the running Spark task: its cores and its assigned GPU."""
    from pyspark import TaskContext

    tc = TaskContext.get()
    if tc is None:
        return (threads_per_task or None), None
    gpu = tc.resources().get("gpu")
    gpu_index = int(gpu.addresses[0]) if gpu is not None and gpu.addresses else None
    return (threads_per_task or max(1, int(tc.cpus()))), gpu_index


def _make_encode_fn(
    spec, expected_dim: int, *, id_column: str, payload_column: str, passthrough: list[str], oversized_column: Optional[str], threads_per_task: int
):
    """The mapInArrow function; everything it closes over is small and picklable."""

    def encode_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from lakecurate.embed import get_cached_encoder

        threads, gpu_index = _task_placement(threads_per_task)
        encoder = get_cached_encoder(spec, num_threads=threads, gpu_index=gpu_index)
        if encoder.dim != expected_dim:
            raise LakecurateError(
                f"encoder {encoder.name!r} has dimension {encoder.dim} on this executor but {expected_dim} on the driver: "
                "the model files differ between machines"
            )
        for batch in batches:
            yield from encode_record_batch(
                encoder, batch, id_column=id_column, payload_column=payload_column, passthrough=passthrough, oversized_column=oversized_column
            )

    return encode_partition


# ------------------------------------------------------------------------------ driver side
def _load_on_driver(spec) -> Encoder:
    """The encoder on the driver's CPU, only to learn name and dim (and fail early on a bad model)."""
    from lakecurate.embed import get_cached_encoder

    return get_cached_encoder(dataclasses.replace(spec, device="cpu", half_precision=False))


def read_source(ctx: StageContext, ecfg: EmbedConfig):
    """The source as (id, payload, passthrough...) plus the number of files skipped for size."""
    from pyspark.sql import functions as F

    src = ecfg.source
    spec = ecfg.encoder_spec  # type: ignore[attr-defined]
    if src.format == "files":
        reader = ctx.spark.read.format("binaryFile").option("recursiveFileLookup", str(src.recursive).lower())
        if src.glob:
            reader = reader.option("pathGlobFilter", src.glob)
        try:
            files = reader.load(src.path)
        except Exception as exc:
            raise InputDataError(f"embed.source.path={src.path!r} cannot be listed: {str(exc).splitlines()[0]}") from exc
        ident = (F.col("path") if src.file_id == "path" else F.xxhash64(F.col("path"))).alias(src.id_column)
        # binaryFile pushes filters on length into the scan and reads content only when selected, so
        # an oversized file is never read; it still goes through the encoder function (content null,
        # its size set) so that it becomes a reject and the counts add up
        limit = F.lit(spec.max_bytes)
        small = files.where(F.col("length") <= limit).select(
            ident, "content", F.lit(None).cast("long").alias(OVERSIZED), *src.passthrough_columns
        )
        big = files.where(F.col("length") > limit).select(
            ident, F.lit(None).cast("binary").alias("content"), F.col("length").alias(OVERSIZED), *src.passthrough_columns
        )
        return small.unionByName(big)
    df = ctx.lake.read_input(InputConfig(format=src.format, path=src.path, table=src.table))
    payload = ecfg.payload_column
    missing = [c for c in [src.id_column, payload, *src.passthrough_columns] if c not in df.columns]
    if missing:
        raise InputDataError(f"embed.source {src.path or src.table!r} has no column(s) {missing}; it has {df.columns}")
    want = "string" if spec.input_modality == "text" else "binary"
    got = df.schema[payload].dataType.simpleString()
    if got != want:
        raise InputDataError(f"embed.source column {payload!r} is {got}; a {spec.input_modality} encoder needs {want}")
    return df.select(src.id_column, payload, *src.passthrough_columns)


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


def run_embed(ctx: StageContext, metrics: dict) -> None:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    ecfg: EmbedConfig = ctx.config.embed  # type: ignore[assignment]
    src = ecfg.source
    spec = ecfg.encoder_spec  # type: ignore[attr-defined]
    t0 = time.perf_counter()

    encoder = _load_on_driver(spec)
    name = model_label(spec)
    if encoder.name != name:  # the cluster stage finds the rows by model_label
        raise LakecurateError(f"encoder loaded as {encoder.name!r} but model_label gives {name!r}")
    dim = encoder.dim
    metrics.update(model=name, dim=dim, encoder=encoder.describe())
    metrics["encoder"]["device"] = "auto" if spec.device == "auto" else spec.device  # the driver probe ran on CPU

    source = read_source(ctx, ecfg)
    id_col, payload = src.id_column, ("content" if src.format == "files" else ecfg.payload_column)
    passthrough = list(src.passthrough_columns)
    id_field = source.schema[id_col]
    out_schema = T.StructType(
        [
            T.StructField(id_col, id_field.dataType, True),
            T.StructField(EMBEDDING, T.ArrayType(T.FloatType(), True), True),
            T.StructField(REASON, T.StringType(), True),
            *[source.schema[c] for c in passthrough],
        ]
    )
    empty = ctx.spark.createDataFrame([], out_schema)
    planned_emb = _embeddings_rows(empty, id_col, name, dim, passthrough)
    planned_rej = _reject_rows(empty, id_col, name, passthrough)
    emb_exists = _check_existing(ctx, ecfg.table, planned_emb, name, dim)
    rej_exists = _check_existing(ctx, ecfg.rejects_table, planned_rej, name, None)

    n_partitions = ecfg.partitions or max(ctx.spark.sparkContext.defaultParallelism, source.rdd.getNumPartitions())
    todo = source
    already = 0
    n_inputs = source.count()
    if emb_exists:
        done_ids = ctx.lake.read(ecfg.table).where(F.col(MODEL) == name).select(id_col)
        already = source.select(id_col).join(done_ids, id_col, "left_semi").count()
        todo = todo.join(done_ids, id_col, "left_anti")
    if rej_exists and not ecfg.retry_rejects:
        rejected_ids = ctx.lake.read(ecfg.rejects_table).where((F.col(MODEL) == name) & F.col(id_col).isNotNull()).select(id_col)
        todo = todo.join(rejected_ids.distinct(), id_col, "left_anti")
    # a join's output partitioning is the shuffle's (and AQE may coalesce it to one task); an explicit
    # count keeps every core busy on the expensive part
    todo = todo.repartition(n_partitions)

    encode_fn = _make_encode_fn(
        spec,
        dim,
        id_column=id_col,
        payload_column=payload,
        passthrough=passthrough,
        oversized_column=OVERSIZED if OVERSIZED in source.columns else None,
        threads_per_task=ecfg.threads_per_task,
    )
    encoded = todo.mapInArrow(encode_fn, out_schema).persist(StorageLevel.MEMORY_AND_DISK)

    old_batch = ctx.spark.conf.get(_BATCH_CONF, None)
    ctx.spark.conf.set(_BATCH_CONF, str(ecfg.batch_rows))
    try:
        t_encode = time.perf_counter()
        counts = {bool(r["ok"]): int(r["count"]) for r in encoded.groupBy(F.col(REASON).isNull().alias("ok")).count().collect()}
        encode_seconds = time.perf_counter() - t_encode
        n_embedded, n_rejected = counts.get(True, 0), counts.get(False, 0)
        previously_rejected = n_inputs - already - n_embedded - n_rejected
        metrics.update(
            inputs=n_inputs,
            embedded=n_embedded,
            rejected=n_rejected,
            already_embedded=already,
            previously_rejected=previously_rejected,
            partitions=n_partitions,
            batch_rows=ecfg.batch_rows,
            encode_seconds=round(encode_seconds, 3),
            rows_per_second=round((n_embedded + n_rejected) / encode_seconds, 1) if encode_seconds > 0 else None,
        )
        if previously_rejected < 0:  # duplicate ids in the source make the semi-join count rows twice
            log.warning("embed counts do not add up (%s): does the source repeat ids?", metrics)
        if n_embedded + n_rejected == 0:
            log.info(
                "nothing new to embed: all %d input rows already have rows in %s (%d) or %s (%d) for model %s",
                n_inputs, ecfg.table, already, ecfg.rejects_table, previously_rejected, name,
            )
            metrics["nothing_new"] = True
        else:
            metrics["nothing_new"] = False
            if n_embedded:
                ctx.lake.append_run(
                    _embeddings_rows(encoded.where(F.col(REASON).isNull()), id_col, name, dim, passthrough),
                    ecfg.table, ctx.run_id, description="embeddings keyed by (model, id); appended incrementally per run",
                )
            if n_rejected:
                ctx.lake.append_run(
                    _reject_rows(encoded.where(F.col(REASON).isNotNull()), id_col, name, passthrough),
                    ecfg.rejects_table, ctx.run_id, description="rows the embed stage could not embed, with the reason",
                )
                top = encoded.where(F.col(REASON).isNotNull()).groupBy(REASON).count().orderBy(F.desc("count")).limit(5).collect()
                metrics["reject_reasons"] = {r[REASON][:200]: int(r["count"]) for r in top}
                log.warning("embed: %d of %d new rows rejected (see table %s), e.g. %s", n_rejected, n_embedded + n_rejected, ecfg.rejects_table, metrics["reject_reasons"])
            log.info(
                "embedded %d rows with %s (dim %d) in %.1fs (%.0f rows/s); %d rejected, %d already embedded, %d previously rejected",
                n_embedded, name, dim, encode_seconds, metrics["rows_per_second"] or 0, n_rejected, already, previously_rejected,
            )
    finally:
        encoded.unpersist()
        if old_batch is None:
            ctx.spark.conf.unset(_BATCH_CONF)
        else:
            ctx.spark.conf.set(_BATCH_CONF, old_batch)
    metrics["seconds"] = round(time.perf_counter() - t0, 3)


def _embeddings_rows(df, id_col: str, model: str, dim: int, passthrough: list[str]):
    from pyspark.sql import functions as F

    return df.select(id_col, EMBEDDING, F.lit(model).alias(MODEL), F.lit(dim).cast("int").alias(DIM), *passthrough)


def _reject_rows(df, id_col: str, model: str, passthrough: list[str]):
    from pyspark.sql import functions as F

    return df.select(id_col, REASON, F.lit(model).alias(MODEL), *passthrough)


__all__ = ["run_embed", "load_embed_config", "embedded_frame", "encode_record_batch", "read_source"]
