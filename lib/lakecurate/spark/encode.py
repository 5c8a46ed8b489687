"""The Spark side of the embed stage: encoders in an Arrow UDF on the executors.

One ``mapInArrow`` pass: each Python worker gets its encoder from the per-process cache (loaded
once, on the task's GPU when Spark assigned one, else on CPU with the task's cores as torch
threads) and turns every Arrow batch into embedded rows and rejected rows
(:func:`lakecurate.embed.batches.encode_record_batch`).
"""

from __future__ import annotations

from typing import Iterator, Optional

import pyarrow as pa

from lakecurate.embed.batches import EMBEDDING, REASON, encode_record_batch
from lakecurate.errors import LakecurateError
from lakecurate.spark.progress import TaskCounters
from lakecurate.spark.tasks import task_cpus, task_gpu

MODEL = "model"
DIM = "dim"


def encoded_schema(source, id_column: str, passthrough: list[str]):
    """The schema of the encoded rows: id, embedding (null for a reject), reason (null when embedded), pass-through."""
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField(id_column, source.schema[id_column].dataType, True),
            T.StructField(EMBEDDING, T.ArrayType(T.FloatType(), True), True),
            T.StructField(REASON, T.StringType(), True),
            *[source.schema[c] for c in passthrough],
        ]
    )


def encode_rows(
    source, spec, expected_dim: int, *, id_column: str, payload_column: str, passthrough: list[str],
    oversized_column: Optional[str], threads_per_task: int, counters: Optional[TaskCounters] = None,
):
    """Every row of ``source`` encoded on the executors (lazy): the rows of :func:`encoded_schema`.
    ``counters``: each task reports the rows it has encoded there (the stage's progress line)."""

    def encode_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from lakecurate.embed import get_cached_encoder

        counter = counters.counter() if counters is not None else None
        if counter is not None:
            counter.flush()  # 0 rows: this task has started (and is loading its model)
        encoder = get_cached_encoder(spec, num_threads=threads_per_task or task_cpus(), gpu_index=task_gpu())
        if encoder.dim != expected_dim:
            raise LakecurateError(
                f"encoder {encoder.name!r} has dimension {encoder.dim} on this executor but {expected_dim} on the driver: "
                "the model files differ between machines"
            )
        for batch in batches:
            yield from encode_record_batch(
                encoder, batch, id_column=id_column, payload_column=payload_column, passthrough=passthrough,
                oversized_column=oversized_column, progress=counter.add if counter is not None else None,
            )
        if counter is not None:
            counter.flush()

    return source.mapInArrow(encode_partition, encoded_schema(source, id_column, passthrough))


def embeddings_rows(df, id_column: str, model: str, dim: int, passthrough: list[str]):
    """Encoded rows as rows of the embeddings table."""
    from pyspark.sql import functions as F

    return df.select(id_column, EMBEDDING, F.lit(model).alias(MODEL), F.lit(dim).cast("int").alias(DIM), *passthrough)


def reject_rows(df, id_column: str, model: str, passthrough: list[str]):
    """Rejected rows as rows of the rejects table."""
    from pyspark.sql import functions as F

    return df.select(id_column, REASON, F.lit(model).alias(MODEL), *passthrough)
