"""All table I/O goes through here: the only module that knows which Delta backend is in use.

Two backends write the same Delta tables:

* **native**: ``format("delta")`` when the session has Delta (Databricks, EMR, ``--packages``);
  a run's rows are replaced atomically with ``replaceWhere``.
* **embedded**: where Spark has no Delta jars (a laptop, CI). Spark writes Parquet into a staging
  folder inside the table; the files are moved under ``run_id=<id>/`` and committed in one Delta
  transaction by delta-rs (add actions for the new files, remove actions for the run's old ones).
  Until that commit nothing is visible; on failure the files are deleted.

Every output table is partitioned by ``run_id`` and every write replaces exactly that run's rows,
so a rerun of a stage is idempotent and a killed stage leaves no partial table version behind.

The lake also reads the inputs (Delta/Parquet tables, files through ``binaryFile``, ``.npy``
matrices staged once as Parquet under ``lake.staging``) and keeps its own files under the root
(the cluster stage's per-level checkpoints in ``_checkpoints/``), written atomically.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lakecurate.config import LakeConfig
from lakecurate.errors import InputDataError, TableError
from lakecurate.spark.session import has_native_delta
from lakecurate.tables import DESCRIPTIONS

log = logging.getLogger(__name__)

RUN_ID = "run_id"


def _is_uri(path: str) -> bool:
    return "://" in path


def _abs(path: str) -> str:
    return path if _is_uri(path) else os.path.abspath(path)


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if _is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _uri(path: str) -> str:
    """A URI Spark and delta-rs both accept (file:// for local paths)."""
    return path if _is_uri(path) else "file://" + os.path.abspath(path)


@dataclass
class TableInfo:
    name: str
    path: str
    version: Optional[int]
    backend: str


class Lake:
    """Tables under one root (a folder or URI), optionally registered in a catalog database."""

    def __init__(self, spark, config: LakeConfig):
        self.spark = spark
        self.root = _abs(config.root)
        self.database = config.database
        #: where inputs that must be rewritten are staged (``lake.staging``; default ``<root>/_staging``)
        self.staging = _abs(config.staging) if config.staging else self._join(self.root, "_staging")
        if config.backend == "auto":
            self.backend = "native" if has_native_delta(spark) else "embedded"
        else:
            self.backend = config.backend
        if self.backend == "native" and not has_native_delta(spark):
            raise TableError("lake.backend='native' but this Spark session has no Delta Lake (io.delta jars missing)")
        log.info("lake at %s (%s Delta)", self.root, self.backend)

    # ------------------------------------------------------------------ naming

    def path(self, name: str) -> str:
        return self._join(self.root, name)

    def qualified(self, name: str) -> str:
        return f"{self.database}.{name}" if self.database else name

    # ------------------------------------------------------------------ reading

    def exists(self, name: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(_uri(self.path(name)))

    def read(self, name: str, run_id: Optional[str] = None):
        """A table of this lake as a DataFrame (optionally one run's rows)."""
        df = self.read_delta_path(self.path(name))
        if run_id is not None:
            from pyspark.sql import functions as F

            df = df.where(F.col(RUN_ID) == run_id)
        return df

    def read_delta_path(self, path: str):
        """Any Delta table by path, with whichever backend this lake uses."""
        from deltalake import DeltaTable

        uri = _uri(path)
        if self.backend == "native":
            return self.spark.read.format("delta").load(uri)
        if not DeltaTable.is_deltatable(uri):
            raise TableError(f"{path!r} is not a Delta table (no readable _delta_log)")
        dt = DeltaTable(uri)
        files = dt.file_uris()
        spark_schema = _spark_schema(_table_arrow_schema(dt))
        if not files:
            return self.spark.createDataFrame([], spark_schema)
        partition_cols = dt.metadata().partition_columns
        reader = self.spark.read.schema(spark_schema).option("basePath", uri)
        df = reader.parquet(*files)
        return df.select(*[f.name for f in spark_schema.fields]) if partition_cols else df

    def version(self, name: str) -> Optional[int]:
        from deltalake import DeltaTable

        uri = _uri(self.path(name))
        return DeltaTable(uri).version() if DeltaTable.is_deltatable(uri) else None

    def register(self, name: str) -> None:
        """Make ``name`` queryable with spark.sql in this session (a temp view of the latest version)."""
        if not self.exists(name):
            return
        if self.backend == "native" and self.database:
            return  # saveAsTable already put it in the catalog
        self.read(name).createOrReplaceTempView(name)

    def register_all(self) -> list[str]:
        """Register every Delta table under the root as a temp view; returns their names."""
        fs, root = _fs(self.root)
        names = []
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            return names
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
            if info.type == pafs.FileType.Directory and not info.base_name.startswith(("_", ".")) and self.exists(info.base_name):
                self.register(info.base_name)
                names.append(info.base_name)
        return names

    # ------------------------------------------------------------------ writing

    def write_run(self, df, name: str, run_id: str, *, description: str = "") -> TableInfo:
        """Replace ``run_id``'s rows of table ``name`` with ``df``, atomically (one table version)."""
        return self._write(df, name, run_id=run_id, mode="replace_run", description=description)

    def append_run(self, df, name: str, run_id: str, *, description: str = "") -> TableInfo:
        """Append ``df`` as rows of ``run_id`` (the ``runs`` log, incremental tables)."""
        return self._write(df, name, run_id=run_id, mode="append", description=description)

    def write_arrow(self, table: pa.Table, name: str, run_id: str, *, append: bool = False, description: str = "") -> TableInfo:
        """A small driver-side Arrow table (runs, clusters) written like a DataFrame."""
        df = self.spark.createDataFrame(table)
        return self._write(df, name, run_id=run_id, mode="append" if append else "replace_run", description=description)

    def _write(self, df, name: str, *, run_id: str, mode: str, description: str) -> TableInfo:
        from pyspark.sql import functions as F

        description = description or DESCRIPTIONS.get(name, "")
        if RUN_ID in df.columns:
            df = df.drop(RUN_ID)
        df = df.withColumn(RUN_ID, F.lit(run_id))
        t0 = time.perf_counter()
        if self.backend == "native":
            info = self._write_native(df, name, run_id, mode)
        else:
            info = self._write_embedded(df, name, run_id, mode, description)
        log.info("committed %s version %s (%s, run %s) in %.2fs", name, info.version, mode, run_id, time.perf_counter() - t0)
        self.register(name)
        return info

    def _write_native(self, df, name: str, run_id: str, mode: str) -> TableInfo:
        writer = df.write.format("delta").partitionBy(RUN_ID)
        if mode == "replace_run":
            writer = writer.mode("overwrite").option("replaceWhere", f"{RUN_ID} = '{run_id}'")
        else:
            writer = writer.mode("append")
        path = self.path(name)
        if self.database:
            writer.option("path", _uri(path)).saveAsTable(self.qualified(name))
        else:
            writer.save(_uri(path))
        return TableInfo(name, path, self.version(name), "native")

    def _write_embedded(self, df, name: str, run_id: str, mode: str, description: str) -> TableInfo:
        from deltalake import DeltaTable, Schema
        from deltalake.transaction import AddAction, create_table_with_add_actions

        path = self.path(name)
        uri = _uri(path)
        fs, table_dir = _fs(path)
        token = uuid.uuid4().hex[:12]
        staging = f"{table_dir}/_staging/{token}"
        partition_dir = f"{table_dir}/{RUN_ID}={_escape(run_id)}"
        arrow_schema = _arrow_schema(df.schema)
        exists = DeltaTable.is_deltatable(uri)
        if exists:
            _check_same_schema(_table_arrow_schema(DeltaTable(uri)), arrow_schema, name)
        moved: list[str] = []
        try:
            df.drop(RUN_ID).write.mode("errorifexists").parquet(_uri(staging))
            fs.create_dir(partition_dir, recursive=True)
            adds = []
            for info in fs.get_file_info(pafs.FileSelector(staging, recursive=False)):
                if not info.is_file or not info.base_name.endswith(".parquet"):
                    continue
                target = f"{partition_dir}/{token}-{info.base_name}"
                fs.move(info.path, target)
                moved.append(target)
                n_rows = pq.read_metadata(target, filesystem=fs).num_rows
                adds.append(
                    AddAction(
                        path=posixpath.relpath(target, table_dir),
                        size=fs.get_file_info(target).size,
                        partition_values={RUN_ID: run_id},
                        modification_time=int(time.time() * 1000),
                        data_change=True,
                        stats=json.dumps({"numRecords": n_rows}),
                    )
                )
            if not exists:
                create_table_with_add_actions(
                    uri, Schema.from_arrow(arrow_schema), adds, mode="error", partition_by=[RUN_ID],
                    name=name, description=description or None,
                )
            elif mode == "replace_run":
                DeltaTable(uri).create_write_transaction(
                    adds, mode="overwrite", schema=arrow_schema, partition_by=[RUN_ID],
                    partition_filters=[(RUN_ID, "=", run_id)],
                )
            else:
                DeltaTable(uri).create_write_transaction(adds, mode="append", schema=arrow_schema, partition_by=[RUN_ID])
        except BaseException as exc:
            for target in moved:
                _quiet(fs.delete_file, target)
            if isinstance(exc, Exception) and not isinstance(exc, TableError):
                raise TableError(f"writing table {name!r} at {path!r} for run {run_id!r} failed: {exc}") from exc
            raise
        finally:
            _quiet(fs.delete_dir, staging)
        return TableInfo(name, path, DeltaTable(uri).version(), "embedded")

    # ------------------------------------------------------------------ inputs

    def read_source(self, format: str, *, path: Optional[str] = None, table: Optional[str] = None, key: str = "input"):
        """A Delta or Parquet input by storage path or catalog name (``key`` names it in errors)."""
        if table:
            try:
                return self.spark.table(table)
            except Exception as exc:
                raise TableError(f"{key}.table={table!r} cannot be read: {str(exc).splitlines()[0]}") from exc
        fs, p = _fs(path)
        if fs.get_file_info(p).type == pafs.FileType.NotFound:
            raise TableError(f"{key}.path={path!r} does not exist")
        try:
            if format == "delta":
                return self.read_delta_path(path)
            if format == "parquet":
                return self.spark.read.parquet(_uri(path))
        except TableError:
            raise
        except Exception as exc:
            raise TableError(f"{key}.path={path!r} cannot be read: {str(exc).splitlines()[0]}") from exc
        raise InputDataError(f"{key}.format={format!r} cannot be read as a table")

    def read_files(self, path: str, *, glob: Optional[str] = None, recursive: bool = True, key: str = "path"):
        """Files under ``path`` through Spark's ``binaryFile`` source (path, modificationTime, length, content)."""
        reader = self.spark.read.format("binaryFile").option("recursiveFileLookup", str(recursive).lower())
        if glob:
            reader = reader.option("pathGlobFilter", glob)
        try:
            return reader.load(path)
        except Exception as exc:
            raise InputDataError(f"{key}={path!r} cannot be listed: {str(exc).splitlines()[0]}") from exc

    def read_npy(self, path: str, *, id_column: str, embedding_column: str, key: str = "input.path"):
        """A local .npy matrix as (id = row number, embedding), staged once as Parquet under :attr:`staging`."""
        if not os.path.isfile(path):
            raise TableError(f"{key}={path!r} does not exist")
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception as exc:
            raise TableError(f"{key}={path!r} is not a readable .npy file: {exc}") from exc
        if arr.ndim != 2:
            raise InputDataError(f"{key}={path!r}: expected a 2-D array (rows, dim); got shape {arr.shape}")
        stat = os.stat(path)
        out_dir = self._join(self.staging, "inputs", f"{os.path.basename(path)}-{stat.st_size}-{int(stat.st_mtime)}")
        fs, base = _fs(out_dir)
        done = f"{base}/_SUCCESS"
        if fs.get_file_info(done).type != pafs.FileType.File:
            fs.create_dir(base, recursive=True)
            chunk = 65536
            for i, start in enumerate(range(0, arr.shape[0], chunk)):
                block = np.ascontiguousarray(arr[start : start + chunk], dtype=np.float32)
                ids = pa.array(np.arange(start, start + block.shape[0], dtype=np.int64))
                emb = pa.ListArray.from_arrays(
                    pa.array(np.arange(0, block.size + 1, block.shape[1], dtype=np.int32)), pa.array(block.ravel())
                )
                pq.write_table(pa.table({id_column: ids, embedding_column: emb}), f"{base}/part-{i:05d}.parquet", filesystem=fs)
            with fs.open_output_stream(done):
                pass
        return self.spark.read.parquet(_uri(out_dir))

    # ------------------------------------------------------------------ files of the lake's own

    def _join(self, *parts: str) -> str:
        return posixpath.join(*parts) if _is_uri(parts[0]) else os.path.join(*parts)

    def put_file(self, relpath: str, data: bytes) -> None:
        """Write ``<root>/<relpath>`` atomically (a temporary name, then a rename)."""
        fs, path = _fs(self._join(self.root, relpath))
        fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)

    def get_file(self, relpath: str) -> Optional[bytes]:
        """The bytes of ``<root>/<relpath>``, or None when it does not exist."""
        fs, path = _fs(self._join(self.root, relpath))
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_file(path) as f:
            return f.read()

    def remove_tree(self, relpath: str) -> None:
        """Delete ``<root>/<relpath>`` and everything under it, if it exists."""
        fs, path = _fs(self._join(self.root, relpath))
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)


# ---------------------------------------------------------------------- helpers


def _table_arrow_schema(dt) -> pa.Schema:
    """A Delta table's schema as a pyarrow schema (delta-rs returns an arro3 one)."""
    return pa.schema(dt.schema().to_arrow())


def _escape(value: str) -> str:
    return value.replace("/", "%2F").replace("=", "%3D")


def _quiet(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:
        pass


def _arrow_schema(spark_schema) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(spark_schema, timezone="UTC")


def _spark_schema(arrow_schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    # delta-rs may hand back string_view / large types; Spark knows the plain ones
    fields = []
    for f in arrow_schema:
        t = f.type
        if pa.types.is_string_view(t) or pa.types.is_large_string(t):
            t = pa.string()
        elif pa.types.is_large_list(t) or pa.types.is_list_view(t):
            t = pa.list_(t.value_type)
        fields.append(pa.field(f.name, t, f.nullable))
    return from_arrow_schema(pa.schema(fields), prefer_timestamp_ntz=False)


def _normalise_type(t: pa.DataType) -> str:
    s = str(t)
    for a, b in (("large_string", "string"), ("string_view", "string"), ("large_list", "list"), ("item: ", "element: ")):
        s = s.replace(a, b)
    # nullability is not part of the comparison: Spark marks it per plan, not per table
    return s.replace("element: ", "").replace("item", "").replace(" not null", "")


def _check_same_schema(existing: pa.Schema, new: pa.Schema, name: str) -> None:
    old = {f.name: _normalise_type(f.type) for f in existing}
    cur = {f.name: _normalise_type(f.type) for f in new}
    if old != cur:
        missing = sorted(set(old) - set(cur))
        extra = sorted(set(cur) - set(old))
        changed = sorted(k for k in set(old) & set(cur) if old[k] != cur[k])
        raise TableError(
            f"table {name!r} has a different schema: missing columns {missing}, new columns {extra}, "
            f"changed types {[(k, old[k], cur[k]) for k in changed]}"
        )
