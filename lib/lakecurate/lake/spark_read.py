"""A Delta snapshot's live rows as a Spark DataFrame where Spark has no Delta (the embedded backend).

delta-rs reads the log (:class:`lakecurate.lake.delta.Snapshot`); Spark reads the live files as
Parquet. What the protocol adds to plain Parquet is applied here, on the executors:

* column mapping: the files' physical columns are read and named by their logical names;
* partition values come from the log (a file's folder need not spell them, e.g. under column
  mapping), joined on each file's name and size (``_metadata``);
* deletion vectors: the deleted rows' positions (``_metadata.row_index``) are anti-joined away.

A table with none of these whose partition values need no escaping in a folder name (every table
lakecurate writes) is read as plain Parquet, no join: each partition's files with its values as
literal columns (one partition, usually: a run's rows), or with many partitions through Spark's
discovery of ``key=value`` folders (``basePath``).
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np
import pyarrow as pa

from lakecurate.errors import TableError
from lakecurate.lake.delta import Snapshot
from lakecurate.lake.paths import hadoop_uri

FILE_NAME, FILE_SIZE, ROW_INDEX = "_lc_file_name", "_lc_file_size", "_lc_row_index"
#: partition values Spark reads back from a ``key=value`` folder as they are (it decodes any
#: other escaped character byte by byte, so ``ü`` would come back as ``Ã¼``; null is a folder name)
_PLAIN = re.compile(r"^[A-Za-z0-9_.:+-]*$")
#: up to this many partitions (value tuples) in a read, each is read on its own with its values as
#: literals (Sail, for one, does not take partition values from folders); above, Spark's discovery
MAX_LITERAL_GROUPS = 64


def snapshot_frame(spark, snap: Snapshot, spark_schema, partition: Optional[dict] = None):
    """The live rows of ``snap`` (only the files whose partition values equal ``partition``), with
    the logical ``spark_schema`` (a StructType of the table's columns, in order)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructField, StructType

    files = snap.files(partition)
    if not files:
        return spark.createDataFrame([], spark_schema)
    parts = snap.partition_columns
    paths = [hadoop_uri(f.uri) for f in files]
    deleted = any(f.live is not None for f in files)
    plain = all(v is not None and _PLAIN.match(v) for f in files for v in f.partition.values())
    if not deleted and not snap.column_mapping and plain:
        if not parts:
            return spark.read.schema(spark_schema).parquet(*paths)
        groups: dict = {}
        for f, p in zip(files, paths):
            groups.setdefault(tuple(f.partition.get(c) for c in parts), []).append(p)
        if len(groups) > MAX_LITERAL_GROUPS:  # many partitions: Spark's own discovery of key=value folders
            df = spark.read.schema(spark_schema).option("basePath", hadoop_uri(snap.path)).parquet(*paths)
            return df.select(*[f.name for f in spark_schema.fields])
        by_name = {f.name: f for f in spark_schema.fields}
        data = StructType([f for f in spark_schema.fields if f.name not in parts])

        def one(values, group):
            fixed = dict(zip(parts, values))
            df = spark.read.schema(data).parquet(*group)
            return df.select(*[F.lit(fixed[c]).cast(by_name[c].dataType).alias(c) if c in fixed else F.col(f"`{c}`") for c in by_name])

        frames = [one(values, group) for values, group in groups.items()]
        df = frames[0]
        for more in frames[1:]:
            df = df.unionByName(more)
        return df

    names = [f.name for f in files]
    if len(set(zip(names, (f.bytes for f in files)))) != len(files):
        raise TableError(f"Delta table {snap.path!r}: two live files share a name and a size, so their partition values and "
                         "deleted rows cannot be told apart: nothing was read")
    by_name = {f.name: f for f in spark_schema.fields}
    stored = snap.data_columns
    physical = StructType([StructField(snap.physical[c], by_name[c].dataType, True) for c in stored])
    df = spark.read.schema(physical).parquet(*paths)
    df = df.select(*[F.col(f"`{snap.physical[c]}`").alias(c) for c in stored],
                   F.col("_metadata.file_name").alias(FILE_NAME), F.col("_metadata.file_size").alias(FILE_SIZE),
                   *([F.col("_metadata.row_index").alias(ROW_INDEX)] if deleted else []))
    keys = [FILE_NAME, FILE_SIZE]
    if parts:
        values = pa.table({FILE_NAME: names, FILE_SIZE: pa.array([f.bytes for f in files], pa.int64()),
                           **{c: [f.partition.get(c) for f in files] for c in parts}})
        frame = spark.createDataFrame(values.to_pandas())
        frame = frame.select(*keys, *[F.col(c).cast(by_name[c].dataType).alias(c) for c in parts])
        df = df.join(F.broadcast(frame), on=keys, how="inner")
    if deleted:
        gone = [(f.name, f.bytes, np.flatnonzero(~f.live)) for f in files if f.live is not None]
        rows = pa.table({FILE_NAME: pa.array(np.repeat([g[0] for g in gone], [len(g[2]) for g in gone]).tolist(), pa.string()),
                         FILE_SIZE: pa.array(np.repeat([g[1] for g in gone], [len(g[2]) for g in gone]), pa.int64()),
                         ROW_INDEX: pa.array(np.concatenate([g[2] for g in gone]).astype(np.int64))})
        if rows.num_rows:
            df = df.join(spark.createDataFrame(rows.to_pandas()), on=[*keys, ROW_INDEX], how="left_anti")
    return df.select(*[f.name for f in spark_schema.fields])
