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

import fnmatch
import json
import logging
import os
import posixpath
import random
import time
import uuid
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lakecurate.config import LakeConfig
# the package's public names, where callers have always found them
from lakecurate.lake.delta import (DeltaFile, Snapshot, arrow_schema_of, commit_file_actions, delta_files,  # noqa: F401
                                   deletion_vector_file, read_delta_files, scan_delta, table_schema)
from lakecurate.lake.native import NativeDelta, commit_lock
from lakecurate.lake.schemas import arrow_schema, check_same_schema, spark_schema
from lakecurate.lake.paths import (absolute, delta_rs_unreadable, disk_error, filesystem, first_line, get_bytes,  # noqa: F401
                                   hadoop_uri, is_uri, put_bytes, quietly, remove_path, rs_uri)
from lakecurate.errors import InputDataError, RunChangedError, TableError
from lakecurate.faults import fault_point
from lakecurate.spark.errors import as_lakecurate_error
from lakecurate.spark.errors import describe as describe_spark_error
from lakecurate.spark.session import has_native_delta
from lakecurate.tables import ADDED_COLUMNS, DESCRIPTIONS, OUTDATED_COLUMNS, PARTITIONS, ROW_GROUP_BYTES

log = logging.getLogger(__name__)

# delta-rs logs its own warnings (e.g. each credential provider it tried) straight to stderr; the
# failure itself reaches lakecurate as an exception and becomes one line
os.environ.setdefault("RUST_LOG", "error")

RUN_ID = "run_id"
#: where a table's data files live: ``_data/run_id=<id>/<token>/part-*.parquet`` (embedded backend)
DATA_DIR = "_data"
#: ``_data/run_id=<id>/write=<token>/<column>=<value>/part-*.parquet`` for tables with more partition columns
WRITE_DIR = "write"
#: attempts at one commit when concurrent writers keep committing first
COMMIT_ATTEMPTS = 12
#: an unreferenced file younger than this may belong to a write still in flight
ORPHAN_AGE_SECONDS = 3600.0


def new_token() -> str:
    """A unique, time-ordered name for one write's files (UTC time first, so age is visible)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:12]


@dataclass
class TableInfo:
    name: str
    path: str
    version: Optional[int]
    backend: str


class Lake:
    """Tables under one root (a folder or URI), optionally registered in a catalog database."""

    def __init__(self, spark, config: LakeConfig):
        """``spark`` may be None for file-level work on an embedded lake (``lakecurate vacuum``)."""
        self.spark = spark
        #: ``lake.storage_options``: credentials and endpoints for delta-rs and pyarrow (Spark uses its own settings)
        self.options = {str(k): str(v) for k, v in (config.storage_options or {}).items()}
        self.root = absolute(config.root)
        self.database = config.database
        #: where inputs that must be rewritten are staged (``lake.staging``; default ``<root>/_staging``)
        self.staging = absolute(config.staging) if config.staging else self._join(self.root, "_staging")
        native = spark is not None and config.backend != "embedded" and has_native_delta(spark)
        self.backend = ("native" if native else "embedded") if config.backend == "auto" else config.backend
        if self.backend == "native" and not native:
            raise TableError("lake.backend='native' but this Spark session has no Delta Lake (io.delta jars missing)")
        why = delta_rs_unreadable(self.root) if self.backend == "embedded" else None
        if why:
            raise TableError(f"lake.root={self.root!r}: {why}")
        #: the Spark Delta backend (:mod:`lakecurate.lake.native`); None on embedded lakes
        self.native = NativeDelta(spark, options=self.options) if self.backend == "native" else None
        if self.native is not None:
            self.native.refuse_unserialisable(self.root)
        self._check_reachable()
        log.info("lake at %s (%s Delta)", self.root, self.backend)

    def _check_reachable(self) -> None:
        """One line naming ``lake.root`` when it cannot be reached (no credentials, no permission,
        no network, a missing bucket), before any Spark work."""
        try:
            fs, root = self._fs(self.root)
            fs.get_file_info(root)
        except OSError as exc:
            hint = ""
            if is_uri(self.root):
                hint = ("; give credentials in the environment (AWS_*, AZURE_STORAGE_*, GOOGLE_APPLICATION_CREDENTIALS), "
                        "an instance role, or lake.storage_options")
            raise TableError(f"lake.root={self.root!r} cannot be reached: {first_line(exc)}{hint}") from exc

    # ------------------------------------------------------------------ storage

    def _fs(self, path: str) -> tuple[pafs.FileSystem, str]:
        return filesystem(path, self.options)

    def _delta(self, uri: str, version: Optional[int] = None):
        """delta-rs's table at ``uri`` with the lake's storage options (the embedded backend only)."""
        if self.backend == "native":  # native lakes go through Spark only: a call here is a bug
            raise TableError(f"internal error: delta-rs asked for {uri!r} on a native-Delta lake")
        from deltalake import DeltaTable

        return DeltaTable(rs_uri(uri), version=version, storage_options=self.options or None)

    def _is_delta(self, uri: str) -> bool:
        if self.native is not None:
            return self.native.exists(uri)
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(rs_uri(uri), storage_options=self.options or None)

    # ------------------------------------------------------------------ naming

    def path(self, name: str) -> str:
        return self._join(self.root, name)

    def qualified(self, name: str) -> str:
        return f"{self.database}.{name}" if self.database else name

    # ------------------------------------------------------------------ reading

    def exists(self, name: str) -> bool:
        return self._is_delta(hadoop_uri(self.path(name)))

    def read(self, name: str, run_id: Optional[str] = None, *, version: Optional[int] = None):
        """A table of this lake as a DataFrame (optionally one run's rows; at ``version``, default the latest)."""
        df = self.read_delta_path(self.path(name), version=version, partition=None if run_id is None else {RUN_ID: run_id})
        if run_id is not None:
            from pyspark.sql import functions as F

            df = df.where(F.col(RUN_ID) == run_id)
        return df

    def read_delta_path(self, path: str, version: Optional[int] = None, partition: Optional[dict] = None):
        """Any Delta table by path (at ``version``, default the latest), with this lake's backend:
        the rows the Delta protocol says are live (:mod:`lakecurate.lake.spark_read` on embedded
        lakes). ``partition`` (``{column: value}``) limits an embedded read to those files; callers
        still filter."""
        uri = hadoop_uri(path)
        if self.native is not None:
            return self.native.read(uri, version)
        from lakecurate.lake.spark_read import snapshot_frame

        snap = Snapshot(path, storage_options=self.options, version=version)
        return snapshot_frame(self.spark, snap, spark_schema(snap.schema), partition)

    def partition_sizes(self, name: str, run_id: str, column: str) -> dict:
        """``{value: {"rows", "files", "bytes"}}`` of one run's rows of a table partitioned by
        ``column`` (an integer column): from the Delta log on embedded lakes (no Spark job); on
        native ones the rows from Spark, files and bytes as None."""
        if self.backend == "native":
            from pyspark.sql import functions as F

            counts = self.read(name, run_id).groupBy(column).agg(F.count("*").alias("n")).collect()
            return {int(r[column]): {"rows": int(r["n"]), "files": None, "bytes": None} for r in counts}
        _, files = delta_files(self.path(name), storage_options=self.options, partition={RUN_ID: run_id})
        out: dict = {}
        for f in files:
            value = f.partition.get(column)
            entry = out.setdefault(None if value is None else int(value), {"rows": 0, "files": 0, "bytes": 0})
            entry["rows"] += int(f.rows or 0)
            entry["files"] += 1
            entry["bytes"] += int(f.bytes)
        return out

    def read_small(self, name: str, columns: Optional[list[str]] = None) -> list[dict]:
        """All rows of a small table of this lake (e.g. ``runs``) as dicts on the driver: delta-rs
        on embedded lakes (no Spark job), Spark on native ones."""
        if self.backend == "native":
            df = self.read(name)
            return [r.asDict() for r in (df.select(*columns) if columns else df).collect()]
        return read_delta_files(self.path(name), storage_options=self.options, columns=columns).to_pylist()

    def scan(self, name: str, run_id: Optional[str] = None, columns: Optional[list[str]] = None,
             batch_rows: int = 65536) -> Iterator[pa.Table]:
        """A table of this lake (one run's partition, or all of it) a piece at a time on this
        process, for the report and other readers that aggregate as they go: on embedded lakes
        through the Delta reader and pyarrow, with or without Spark (:func:`scan_delta`); on native
        ones through the engine."""
        if self.native is not None:
            frame = self.read(name, run_id)
            return self.native.scan(frame.select(*columns) if columns else frame, batch_rows)
        return scan_delta(self.path(name), storage_options=self.options, columns=columns,
                          partition=None if run_id is None else {"run_id": run_id}, batch_rows=batch_rows)

    def delta_snapshot(self, path: str) -> dict:
        """The identity of a Delta table's latest version: ``{"table_id", "version"}``."""
        if self.native is not None:
            return self.native.identity(hadoop_uri(path))
        snap = Snapshot(path, storage_options=self.options)
        return {"table_id": snap.table_id, "version": snap.version}

    def row_count(self, format: str, path: str, snapshot: Optional[dict] = None, *, max_files: int = 2000) -> Optional[int]:
        """Rows of a Delta or Parquet input from metadata alone (the Delta log's per-file record
        counts; the Parquet footers of at most ``max_files`` files), or None when unknown."""
        try:
            if format == "delta":
                if self.backend == "native":
                    return None  # no delta-rs on native lakes; counted by the stages' first job
                version = snapshot.get("version") if snapshot else None
                return Snapshot(path, storage_options=self.options, version=version).live_rows()
            if format == "parquet":
                fs, base = self._fs(path)
                listing = snapshot.get("listing") if snapshot else None
                if listing is None:
                    listing = [rel for rel, _, _ in self.list_files(path)]
                if len(listing) > max_files:
                    return None
                single = fs.get_file_info(base).type == pafs.FileType.File
                return int(sum(pq.read_metadata(base if single else f"{base}/{rel}", filesystem=fs).num_rows for rel in listing))
        except Exception as exc:  # metadata we cannot read is the stages' to report, with their messages
            log.debug("no row count for %s from metadata: %s", path, exc)
        return None

    def list_files(self, path: str, *, glob: Optional[str] = None, recursive: bool = True) -> list[tuple[str, int, int]]:
        """(path relative to ``path``, bytes, mtime in ns) of the data files under a folder, sorted;
        hidden files (``_``/``.`` prefixed, e.g. ``_SUCCESS``) are left out, as Spark's readers do."""
        fs, base = self._fs(path)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File:
            return [(posixpath.basename(base), info.size, info.mtime_ns or 0)]
        out = []
        for f in fs.get_file_info(pafs.FileSelector(base, recursive=recursive)):
            rel = posixpath.relpath(f.path, base)
            if not f.is_file or any(part.startswith(("_", ".")) for part in rel.split("/")):
                continue
            if glob is not None and not fnmatch.fnmatch(f.base_name, glob):
                continue
            out.append((rel, f.size, f.mtime_ns or 0))
        return sorted(out)

    def columns(self, name: str) -> Optional[list[str]]:
        """The column names of table ``name`` (reading only its log), or None when it does not exist."""
        if self.backend == "native":
            try:
                return list(self.read(name).columns)
            except Exception:
                return None
        uri = hadoop_uri(self.path(name))
        return list(arrow_schema_of(self._delta(uri)).names) if self._is_delta(uri) else None

    def refuse_outdated(self, name: str) -> None:
        """TableError, saying what to do, when table ``name`` was written by an older lakecurate
        with columns this version no longer writes (:data:`lakecurate.tables.OUTDATED_COLUMNS`)."""
        marker = OUTDATED_COLUMNS.get(name)
        columns = self.columns(name) if marker else None
        if columns and marker[0] in columns:
            path = self.path(name)
            raise TableError(
                f"table {name!r} at {path!r} was written by lakecurate 0.1 ({marker[1]}); this version writes the cluster path "
                f"as one array<int> column 'path' (element_at(path, t) is the level-t cluster), so runs of any depth share "
                f"the table. Its rows stay readable as they are; to write new runs, move the folder aside "
                f"(e.g. rename it to {name}_v0_1) or set lake.root to a new place"
            )

    def gain_columns(self, name: str, schema) -> list[str]:
        """Add to table ``name`` the columns of :data:`lakecurate.tables.ADDED_COLUMNS` that ``schema``
        (a Spark StructType about to be written) has and the table, written by an older version,
        lacks: one Delta schema change (delta-rs ``alter.add_columns``, Spark ``ALTER TABLE ... ADD
        COLUMNS``). Returns the columns added; any other difference is left to the write to refuse."""
        added = ADDED_COLUMNS.get(name, ())
        have = self.columns(name) if added else None
        if not have:
            return []
        fields = {f.name: f for f in schema.fields}
        missing = [c for c in added if c in fields and c not in have]
        if not missing:
            return []
        if self.native is not None:
            target = self.qualified(name) if self.database else f"delta.`{hadoop_uri(self.path(name))}`"
            self.native.add_columns(target, name, [(c, fields[c].dataType.simpleString()) for c in missing])
        else:
            from deltalake.schema import Schema

            arrow = pa.schema([pa.field(c, arrow_schema(schema).field(c).type, nullable=True) for c in missing])
            self._delta(hadoop_uri(self.path(name))).alter.add_columns(list(Schema.from_arrow(arrow).fields))
        log.info("table %s gained the column(s) %s (an older lakecurate wrote it; its earlier rows read them as null)",
                 name, missing)
        return missing

    def version(self, name: str) -> Optional[int]:
        uri = hadoop_uri(self.path(name))
        if not self._is_delta(uri):
            return None
        if self.native is not None:
            return self.native.version(uri)
        return self._delta(uri).version()

    def register(self, name: str) -> None:
        """Make ``name`` queryable with spark.sql in this session (a temp view of the latest version)."""
        if not self.exists(name):
            return
        if self.backend == "native" and self.database:
            return  # saveAsTable already put it in the catalog
        self.read(name).createOrReplaceTempView(name)

    def register_all(self) -> list[str]:
        """Register every Delta table under the root as a temp view; returns their names."""
        fs, root = self._fs(self.root)
        names = []
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            return names
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
            if info.type == pafs.FileType.Directory and not info.base_name.startswith(("_", ".")) and self.exists(info.base_name):
                self.register(info.base_name)
                names.append(info.base_name)
        return names

    # ------------------------------------------------------------------ writing

    def write_run(self, df, name: str, run_id: str, *, description: str = "", max_rows_per_file: Optional[int] = None,
                  unchanged_since: Optional[int] = None) -> TableInfo:
        """Replace ``run_id``'s rows of table ``name`` with ``df``, atomically (one table version);
        ``unchanged_since`` as in :meth:`append_run` (a rewrite of rows read at that version)."""
        return self._write(df, name, run_id=run_id, mode="replace_run", description=description, max_rows_per_file=max_rows_per_file,
                           unchanged_since=unchanged_since)

    def append_run(self, df, name: str, run_id: str, *, description: str = "", commit_metadata: Optional[dict] = None,
                   unchanged_since: Optional[int] = None) -> TableInfo:
        """Append ``df`` as rows of ``run_id`` (the ``runs`` log, incremental tables); ``commit_metadata``
        tags the commit (Delta ``commitInfo``: delta-rs custom metadata, Spark's ``userMetadata``).

        ``unchanged_since``: the table version ``df`` was computed from (e.g. an anti-join against
        the run's rows). The append commits only if no later version added or removed files of
        ``run_id``'s partition; otherwise nothing is committed and :class:`RunChangedError` is
        raised, so the caller recomputes on the new snapshot (two increments computed from one
        snapshot never both land). -1: computed when the table did not exist.
        """
        return self._write(df, name, run_id=run_id, mode="append", description=description, commit_metadata=commit_metadata,
                           unchanged_since=unchanged_since)

    def write_arrow(self, table: pa.Table, name: str, run_id: str, *, append: bool = False, description: str = "") -> TableInfo:
        """A small driver-side Arrow table (runs, clusters) written like a DataFrame."""
        df = self.spark.createDataFrame(table)
        return self._write(df, name, run_id=run_id, mode="append" if append else "replace_run", description=description)

    def _write(self, df, name: str, *, run_id: str, mode: str, description: str, max_rows_per_file: Optional[int] = None,
               commit_metadata: Optional[dict] = None, unchanged_since: Optional[int] = None) -> TableInfo:
        from pyspark.sql import functions as F

        description = description or DESCRIPTIONS.get(name, "")
        if RUN_ID in df.columns:
            df = df.drop(RUN_ID)
        df = df.withColumn(RUN_ID, F.lit(run_id))
        t0 = time.perf_counter()
        from lakecurate.spark.progress import progress

        with progress(self.spark, f"writing table {name} (run {run_id})"):
            if self.native is not None:
                with commit_lock(self.root):  # the checks and the commit as one step for lakecurate's writers
                    self.gain_columns(name, df.schema)
                    info = self._write_native(df, name, run_id, mode, max_rows_per_file, commit_metadata, unchanged_since)
            else:
                self.gain_columns(name, df.schema)
                info = self._write_embedded(df, name, run_id, mode, description, max_rows_per_file, commit_metadata, unchanged_since)
        log.info("committed %s version %s (%s, run %s) in %.2fs", name, info.version, mode, run_id, time.perf_counter() - t0)
        try:  # a convenience for SQL in this session: the commit above stands whatever happens here
            self.register(name)
        except Exception as exc:  # noqa: BLE001
            log.warning("committed %s version %s, but could not register it as a view in this session: %s", name, info.version,
                        first_line(exc))
        return info

    def _write_native(self, df, name: str, run_id: str, mode: str, max_rows_per_file: Optional[int],
                      commit_metadata: Optional[dict] = None, unchanged_since: Optional[int] = None) -> TableInfo:
        path = self.path(name)
        fault_point("commit:ready", table=name)
        self.native.write(df, uri=hadoop_uri(path), name=name, partition_by=[RUN_ID, *PARTITIONS.get(name, ())], run_column=RUN_ID,
                          run_id=run_id, mode=mode, layout=lambda w: _with_layout(w, name, max_rows_per_file),
                          commit_metadata=commit_metadata, unchanged_since=unchanged_since,
                          table=self.qualified(name) if self.database else None)
        fault_point("commit:committed", table=name)
        return TableInfo(name, path, self.version(name), "native")

    def _write_embedded(self, df, name: str, run_id: str, mode: str, description: str, max_rows_per_file: Optional[int],
                        commit_metadata: Optional[dict] = None, unchanged_since: Optional[int] = None) -> TableInfo:
        """Spark writes Parquet into a fresh folder ``_data/run_id=<id>/<token>/`` of the table
        (never inside a live partition folder, never moved), then delta-rs commits those files.

        A failed write deletes its folder; a killed one leaves it unreferenced, and the next
        write to the table (or ``lakecurate vacuum``) removes it once it is older than
        :data:`ORPHAN_AGE_SECONDS`.
        """
        from deltalake.transaction import AddAction

        path = self.path(name)
        fs, table_dir = self._fs(path)
        token = new_token()
        parts = PARTITIONS.get(name, ())
        # under more partition columns the write's own folder is a key=value folder too, so that
        # Spark reads run_id, the write and the partition values alike from every file's path
        files_rel = f"{DATA_DIR}/{RUN_ID}={_escape(run_id)}/" + (f"{WRITE_DIR}={token}" if parts else token)
        files_dir = f"{table_dir}/{files_rel}"
        schema = arrow_schema(df.schema)
        uri = hadoop_uri(path)
        if self._is_delta(uri):
            check_same_schema(arrow_schema_of(self._delta(uri)), schema, name)
        self._remove_stale_files(name)  # also when a killed first write left files but no table
        committed = False
        try:
            _with_layout(df.drop(RUN_ID).write.mode("error").partitionBy(*parts), name, max_rows_per_file).parquet(hadoop_uri(files_dir))
            adds = []
            for info in fs.get_file_info(pafs.FileSelector(files_dir, recursive=True)):
                if not info.is_file or not info.base_name.endswith(".parquet") or info.base_name.startswith((".", "_")):
                    if info.is_file:  # Spark's _SUCCESS and .crc files: no version would reference them
                        fs.delete_file(info.path)
                    continue
                relpath = posixpath.relpath(info.path, files_dir)
                adds.append(
                    AddAction(
                        path=f"{files_rel}/{relpath}",
                        size=info.size,
                        partition_values={RUN_ID: run_id, **_partition_values(relpath, parts)},
                        modification_time=int(time.time() * 1000),
                        data_change=True,
                        stats=json.dumps({"numRecords": pq.read_metadata(info.path, filesystem=fs).num_rows}),
                    )
                )
            fault_point("commit:files_written", table=name)
            version = self._commit_embedded(uri, name, adds, schema, run_id, mode, description, [RUN_ID, *parts],
                                            commit_metadata, unchanged_since)
            committed = True
            fault_point("commit:committed", table=name)
        except BaseException as exc:
            if not committed:
                quietly(fs.delete_dir, files_dir)
            doing = f"writing table {name!r} at {path!r} for run {run_id!r}"
            if isinstance(exc, OSError):
                raise disk_error(exc, doing) from exc
            if isinstance(exc, Exception) and not isinstance(exc, TableError):
                converted = as_lakecurate_error(exc, doing)
                if isinstance(converted, TableError):  # a disk error on the executors
                    raise converted from exc
                raise TableError(f"{doing} failed: {describe_spark_error(str(exc)) if converted else first_line(exc)}") from exc
            raise
        return TableInfo(name, path, version, "embedded")

    def _commit_embedded(self, uri: str, name: str, adds: list, schema: pa.Schema, run_id: str, mode: str, description: str,
                         partition_by: list, commit_metadata: Optional[dict] = None, unchanged_since: Optional[int] = None) -> int:
        """Commit ``adds`` on a fresh snapshot, retrying (bounded) when another writer committed first.

        delta-rs may not retry on its own (``max_commit_retries=0``): a replace of the run's rows
        must remove the files of whatever version it commits on, so a concurrent writer of the
        same run can never leave the run's rows twice; on a conflict the removes are recomputed
        from the new snapshot (the last writer's rows win, whole). Creating the table races the
        same way: the loser commits to the table the winner created.

        With ``unchanged_since`` every attempt reads the commits between that version and its fresh
        snapshot: one that touched ``run_id``'s partition raises :class:`RunChangedError` (the rows
        were computed from a snapshot that no longer holds). The commit goes on exactly the
        snapshot checked, without retries, so a commit that slips in between fails it and the next
        attempt checks again.
        """
        from deltalake import CommitProperties, Schema
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import create_table_with_add_actions

        no_retry = CommitProperties(max_commit_retries=0, custom_metadata={str(k): str(v) for k, v in (commit_metadata or {}).items()} or None)
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                if not self._is_delta(uri):
                    fault_point("commit:ready", table=name, attempt=attempt)
                    try:
                        create_table_with_add_actions(
                            rs_uri(uri), Schema.from_arrow(schema), adds, mode="error", partition_by=partition_by,
                            name=name, description=description or None, commit_properties=no_retry,
                            storage_options=self.options or None,
                        )
                        return self._delta(uri).version()
                    except Exception:
                        if not self._is_delta(uri):
                            raise
                        log.info("table %s was created by a concurrent writer: committing to it instead", name)
                dt = self._delta(uri)  # a fresh snapshot for every attempt
                if unchanged_since is not None:
                    self._refuse_if_run_changed(name, run_id, unchanged_since, dt.version())
                check_same_schema(arrow_schema_of(dt), schema, name)
                _check_same_partitions(dt.metadata().partition_columns, partition_by, name)
                fault_point("commit:ready", table=name, attempt=attempt)
                if mode == "replace_run":
                    dt.create_write_transaction(adds, mode="overwrite", schema=schema, partition_by=partition_by,
                                                partition_filters=[(RUN_ID, "=", run_id)], commit_properties=no_retry)
                else:
                    dt.create_write_transaction(adds, mode="append", schema=schema, partition_by=partition_by, commit_properties=no_retry)
                return self._delta(uri).version()
            except CommitFailedError as exc:
                wait = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
                log.info("commit to %s conflicted with a concurrent commit (attempt %d of %d: %s); retrying on a fresh snapshot in %.2fs",
                         name, attempt + 1, COMMIT_ATTEMPTS, first_line(exc), wait)
                time.sleep(wait)
        raise TableError(f"table {name!r}: {COMMIT_ATTEMPTS} commits for run {run_id!r} in a row lost to concurrent writers; nothing was committed")

    def _refuse_if_run_changed(self, name: str, run_id: str, since: int, latest: int) -> None:
        """RunChangedError when a version of the table in (``since``, ``latest``] added or removed
        files of ``run_id``'s partition (its log entry's own actions; a version whose entry is gone,
        e.g. cleaned up after a checkpoint, counts as touching it)."""
        fs, table_dir = self._fs(self.path(name))
        touched = []
        for version in range(since + 1, latest + 1):
            try:
                actions = commit_file_actions(fs, f"{table_dir}/_delta_log/{version:020d}.json")
                runs = {(a.get("partitionValues") or {}).get(RUN_ID) for a in actions}
            except OSError:
                runs = {run_id}
            if run_id in runs:
                touched.append(version)
        if touched:
            raise RunChangedError(f"table {name!r}: version(s) {touched} changed run {run_id!r}'s rows after version {since}, "
                                  "which this write was computed from: nothing was committed")

    # ------------------------------------------------------------------ files no version references

    def referenced_files(self, name: str) -> set[str]:
        """Every file path (relative to the table) that any version in the table's log adds or removes: data
        files and the deletion vector files that mark their deleted rows."""
        fs, table_dir = self._fs(self.path(name))
        log_dir = f"{table_dir}/_delta_log"
        paths: set[str] = set()
        for info in fs.get_file_info(pafs.FileSelector(log_dir, recursive=False, allow_not_found=True)):
            if info.base_name.endswith(".json"):
                actions = commit_file_actions(fs, info.path)
            elif info.base_name.endswith(".parquet") and ".checkpoint" in info.base_name:
                cp = pq.read_table(info.path, filesystem=fs, columns=["add", "remove"])
                actions = [item for column in ("add", "remove") for item in cp.column(column).to_pylist() if item and item.get("path")]
            else:
                continue
            for action in actions:
                paths |= {action["path"], unquote(action["path"])}
                dv = deletion_vector_file(action.get("deletionVector"))
                if dv:  # a deletion vector's file is part of the table as much as the data file it marks
                    paths |= {dv, unquote(dv)}
        return paths

    def unreferenced_files(self, name: str, *, older_than_seconds: float) -> list[str]:
        """Data files of the table that no version of its log references (a killed or failed
        write's leftovers), at least ``older_than_seconds`` old: a concurrent writer's files are
        unreferenced too until it commits, so young files are left alone."""
        fs, table_dir = self._fs(self.path(name))
        if fs.get_file_info(table_dir).type != pafs.FileType.Directory:
            return []
        known = self.referenced_files(name)
        cutoff = time.time() - older_than_seconds
        out = []
        for info in fs.get_file_info(pafs.FileSelector(table_dir, recursive=True)):
            rel = posixpath.relpath(info.path, table_dir)
            if not info.is_file or rel.startswith("_delta_log/") or rel in known:
                continue
            if info.mtime is not None and info.mtime.timestamp() > cutoff:
                continue
            out.append(rel)
        return sorted(out)

    def _remove_stale_files(self, name: str) -> None:
        """Best effort, before a write: the table's leftovers of killed writes (see ``unreferenced_files``)."""
        try:
            stale = self.unreferenced_files(name, older_than_seconds=ORPHAN_AGE_SECONDS)
            if stale:
                self.delete_table_files(name, stale)
                log.info("removed %d file(s) of %s that no version references (leftovers of killed writes)", len(stale), name)
        except Exception as exc:  # cleaning is never worth failing a write for
            log.warning("could not look for leftover files in %s: %s", name, first_line(exc))

    def table_names(self, *, with_leftovers: bool = False) -> list[str]:
        """The Delta tables directly under the root; with ``with_leftovers`` also the folders where a
        killed first write left data files but no table yet."""
        fs, root = self._fs(self.root)
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            return []
        names = []
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
            if info.type != pafs.FileType.Directory or info.base_name.startswith(("_", ".")):
                continue
            if self.exists(info.base_name) or (with_leftovers and fs.get_file_info(f"{info.path}/{DATA_DIR}").type == pafs.FileType.Directory):
                names.append(info.base_name)
        return sorted(names)

    def vacuum(self, *, apply: bool = False, older_than_seconds: float = ORPHAN_AGE_SECONDS) -> list[dict]:
        """Files no committed version references (killed or failed writes) and half-staged inputs,
        older than ``older_than_seconds``; deleted when ``apply``. Committed files, including those
        of older versions (time travel), are never touched. One dict per place: what, files, bytes."""
        found = []
        for name in self.table_names(with_leftovers=True):
            stale = self.unreferenced_files(name, older_than_seconds=older_than_seconds)
            if stale:
                fs, table_dir = self._fs(self.path(name))
                size = sum(fs.get_file_info(f"{table_dir}/{rel}").size or 0 for rel in stale)
                found.append({"place": f"table {name}", "path": self.path(name), "files": len(stale), "bytes": size})
                if apply:
                    self.delete_table_files(name, stale)
        fs, _ = self._fs(self.staging)
        for info in self._half_staged(older_than_seconds):
            files = [f for f in fs.get_file_info(pafs.FileSelector(info.path, recursive=True)) if f.is_file]
            found.append({"place": "staged input (unfinished)", "path": info.path, "files": len(files), "bytes": sum(f.size or 0 for f in files)})
            if apply:
                fs.delete_dir(info.path)
        for path, n_files, size in self.stale_scratch(older_than_seconds):
            found.append({"place": "scratch of a run that did not finish", "path": path, "files": n_files, "bytes": size})
            if apply:
                fs.delete_dir(path)
        if self.backend == "native":
            log.info("lake.backend is native: Spark's Delta writer leaves no unreferenced files of lakecurate's; "
                     "use Delta's own VACUUM for files of old versions")
        return found

    def delete_table_files(self, name: str, relpaths: list[str]) -> None:
        """Delete files of a table (relative paths), then the folders they leave empty."""
        fs, table_dir = self._fs(self.path(name))
        folders = set()
        for rel in relpaths:
            fs.delete_file(f"{table_dir}/{rel}")
            folders.add(posixpath.dirname(rel))
        for folder in sorted(folders, key=len, reverse=True):
            while folder and folder != ".":
                full = f"{table_dir}/{folder}"
                if fs.get_file_info(pafs.FileSelector(full, allow_not_found=True)):
                    break
                quietly(fs.delete_dir, full)
                folder = posixpath.dirname(folder)

    # ------------------------------------------------------------------ inputs

    def read_source(self, format: str, *, path: Optional[str] = None, table: Optional[str] = None, key: str = "input",
                    snapshot: Optional[dict] = None):
        """A Delta or Parquet input by storage path or catalog name (``key`` names it in errors).

        ``snapshot`` (what :func:`lakecurate.inputs.fingerprint_source` recorded) pins the read to
        exactly what was fingerprinted: a Delta version, or a Parquet folder's file listing.
        """
        version = snapshot.get("version") if snapshot else None
        if table:
            try:
                reader = self.spark.read
                return (reader.option("versionAsOf", version) if version is not None else reader).table(table)
            except Exception as exc:
                raise TableError(f"{key}.table={table!r} cannot be read: {describe_spark_error(str(exc))}") from exc
        fs, p = self._fs(path)
        try:
            kind = fs.get_file_info(p).type
        except OSError as exc:  # credentials, permissions, network: one line naming the path
            raise TableError(f"{key}.path={path!r} cannot be read: {first_line(exc)}") from exc
        if kind == pafs.FileType.NotFound:
            raise TableError(f"{key}.path={path!r} does not exist")
        try:
            if format == "delta":
                return self.read_delta_path(path, version)
            if format == "parquet":
                listing = snapshot.get("listing") if snapshot else None
                if listing and fs.get_file_info(p).type == pafs.FileType.Directory:
                    base = hadoop_uri(path).rstrip("/")
                    return self.spark.read.option("basePath", base).parquet(*[f"{base}/{rel}" for rel in listing])
                return self.spark.read.parquet(hadoop_uri(path))
        except TableError:
            raise
        except Exception as exc:
            raise TableError(f"{key}.path={path!r} cannot be read: {describe_spark_error(str(exc))}") from exc
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

    def file_uri(self, folder: str, relpath: str) -> str:
        """The path Spark's file sources give a file ``relpath`` under ``folder`` (``file:/...`` locally)."""
        if is_uri(folder):
            return folder.rstrip("/") + "/" + relpath
        return "file:" + os.path.join(os.path.abspath(folder), relpath)

    def read_npy(self, path: str, *, id_column: str, embedding_column: str, content_sha256: str, key: str = "input.path"):
        """A local .npy matrix as (id = row number, embedding), staged once as Parquet under
        :attr:`staging`, keyed by its content hash (two files never share a staged copy)."""
        arr = open_npy(path, key)
        out_dir = self._join(self.staging, "inputs", f"{os.path.basename(path)}-{content_sha256[:32]}")
        fs, base = self._fs(out_dir)
        if fs.get_file_info(f"{base}/_SUCCESS").type != pafs.FileType.File:
            self._remove_stale_staging()
            tmp = f"{base}.{new_token()}.tmp"  # staged whole, then renamed: a reader never sees half a copy
            try:
                fs.create_dir(tmp, recursive=True)
                chunk = 65536
                for i, start in enumerate(range(0, arr.shape[0], chunk)):
                    block = np.ascontiguousarray(arr[start : start + chunk], dtype=np.float32)
                    ids = pa.array(np.arange(start, start + block.shape[0], dtype=np.int64))
                    emb = pa.ListArray.from_arrays(
                        pa.array(np.arange(0, block.size + 1, block.shape[1], dtype=np.int32)), pa.array(block.ravel())
                    )
                    pq.write_table(pa.table({"id": ids, "embedding": emb}), f"{tmp}/part-{i:05d}.parquet", filesystem=fs)
                with fs.open_output_stream(f"{tmp}/_SUCCESS"):
                    pass
                if fs.get_file_info(base).type == pafs.FileType.NotFound:
                    fs.move(tmp, base)
            except OSError as exc:
                raise disk_error(exc, f"staging {path!r} as Parquet under {self.staging!r}") from exc
            finally:
                quietly(fs.delete_dir, tmp)
        df = self.spark.read.parquet(hadoop_uri(out_dir))
        return df.withColumnRenamed("id", id_column).withColumnRenamed("embedding", embedding_column)

    def _half_staged(self, older_than_seconds: float) -> list:
        """Half-staged input copies (``*.tmp``) that killed jobs left, at least that old."""
        fs, folder = self._fs(self._join(self.staging, "inputs"))
        cutoff = time.time() - older_than_seconds
        return [info for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                if info.type == pafs.FileType.Directory and info.base_name.endswith(".tmp")
                and (info.mtime is None or info.mtime.timestamp() <= cutoff)]

    def _remove_stale_staging(self) -> None:
        try:
            fs, _ = self._fs(self.staging)
            for info in self._half_staged(ORPHAN_AGE_SECONDS):
                fs.delete_dir(info.path)
                log.info("removed a half-staged input a killed job left: %s", info.path)
        except OSError as exc:
            log.warning("could not look for half-staged inputs in %s: %s", self.staging, exc)

    # ------------------------------------------------------------------ scratch

    def scratch(self, what: str) -> Scratch:
        """A new scratch folder for ``what`` (e.g. ``blocks``, ``payloads``); old ones a killed
        run left are removed first."""
        self._remove_stale_scratch(SCRATCH_AGE_SECONDS)
        slug = "".join(c if c.isalnum() else "-" for c in what)
        return Scratch(self._join(self.staging, "scratch", f"{new_token()}-{slug}"), self.options)

    def stage_frame(self, df, what: str):
        """``df`` written once as Parquet into a scratch folder and read back: a DataFrame that
        can be read many times without Spark's cache (sessions that cannot cache, e.g.
        serverless). Returns ``(frame, scratch)``; ``scratch.remove()`` when done."""
        scratch = self.scratch(what)
        try:
            # uncompressed: float32 bytes do not compress, and a pass reads them again and again
            df.write.mode("error").option("compression", "uncompressed").parquet(hadoop_uri(f"{scratch.path}/data"))
        except BaseException as exc:
            scratch.remove()
            if isinstance(exc, OSError):
                raise disk_error(exc, f"staging {what} under {scratch.path!r}") from exc
            converted = as_lakecurate_error(exc, f"staging {what} under {scratch.path!r}") if isinstance(exc, Exception) else None
            if converted is not None:
                raise converted from exc
            raise
        return self.spark.read.parquet(hadoop_uri(f"{scratch.path}/data")), scratch

    def write_scratch_parquet(self, scratch: Scratch, relpath: str, table: pa.Table) -> None:
        """A driver-side Arrow table as one Parquet file in a scratch folder."""
        fs, path = self._fs(f"{scratch.path}/{relpath}")
        try:
            fs.create_dir(posixpath.dirname(path), recursive=True)
            pq.write_table(table, path, filesystem=fs)
        except OSError as exc:
            raise disk_error(exc, f"writing {path!r}") from exc

    @staticmethod
    def spark_path(path: str) -> str:
        """``path`` as Spark's readers and writers want it (``file://`` for local paths)."""
        return hadoop_uri(path)

    def stale_scratch(self, older_than_seconds: float) -> list[tuple[str, int, int]]:
        """(path, files, bytes) of scratch folders idle for at least ``older_than_seconds``."""
        fs, folder = self._fs(self._join(self.staging, "scratch"))
        cutoff = time.time() - older_than_seconds
        out = []
        for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            if info.type != pafs.FileType.Directory:
                continue
            files = [f for f in fs.get_file_info(pafs.FileSelector(info.path, recursive=True)) if f.is_file]
            newest = max([f.mtime.timestamp() for f in files if f.mtime is not None]
                         + [info.mtime.timestamp() if info.mtime is not None else 0.0])
            if newest <= cutoff:
                out.append((info.path, len(files), sum(f.size or 0 for f in files)))
        return out

    def _remove_stale_scratch(self, older_than_seconds: float) -> None:
        try:
            fs, _ = self._fs(self.staging)
            for path, _, _ in self.stale_scratch(older_than_seconds):
                fs.delete_dir(path)
                log.info("removed a scratch folder a killed run left: %s", path)
        except OSError as exc:
            log.warning("could not look for old scratch folders in %s: %s", self.staging, exc)

    # ------------------------------------------------------------------ files of the lake's own

    def _join(self, *parts: str) -> str:
        return posixpath.join(*parts) if is_uri(parts[0]) else os.path.join(*parts)

    def file_path(self, relpath: str) -> str:
        """Where ``<root>/<relpath>`` is (a local path or a URI)."""
        return self._join(self.root, relpath)

    def put_file(self, relpath: str, data: bytes) -> None:
        """Write ``<root>/<relpath>`` atomically (a temporary name, then a rename)."""
        put_bytes(self._join(self.root, relpath), data, self.options)

    def get_file(self, relpath: str) -> Optional[bytes]:
        """The bytes of ``<root>/<relpath>``, or None when it does not exist."""
        fs, path = self._fs(self._join(self.root, relpath))
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_file(path) as f:
            return f.read()

    def remove_tree(self, relpath: str) -> None:
        """Delete ``<root>/<relpath>`` and everything under it, if it exists."""
        fs, path = self._fs(self._join(self.root, relpath))
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)


# ---------------------------------------------------------------------- scratch: a run's temporary files

#: scratch folders (staged block frames, large task payloads) a killed run left are removed by
#: the next run once this old; ``lakecurate vacuum`` takes its own ``--older-than-hours``
SCRATCH_AGE_SECONDS = 24 * 3600.0
#: a live run touches this file in its scratch folder on every pass, so age means idle time
HEARTBEAT = "_alive"


class Scratch:
    """One folder of a run's temporary files under ``<staging>/scratch/`` (removed when done)."""

    def __init__(self, path: str, options: Optional[dict] = None):
        self.path = path
        self.options = options or {}
        self.touch()

    def touch(self) -> None:
        """Say the run using this folder is alive (its age is counted from here)."""
        put_bytes(f"{self.path}/{HEARTBEAT}", str(time.time()).encode(), self.options)

    def remove(self) -> None:
        try:
            remove_path(self.path, self.options)
        except OSError as exc:
            log.warning("could not remove scratch folder %s (lakecurate vacuum will): %s", self.path, exc)


# ---------------------------------------------------------------------- helpers


def open_npy(path: str, key: str = "input.path") -> np.ndarray:
    """A local .npy embeddings matrix, memory-mapped and checked (2-D, real numbers, not empty)."""
    if not os.path.isfile(path):
        raise TableError(f"{key}={path!r} does not exist")
    try:
        arr = np.load(path, mmap_mode="r")
    except Exception as exc:
        raise TableError(f"{key}={path!r} is not a readable .npy file: {exc}") from exc
    if arr.ndim != 2:
        raise InputDataError(f"{key}={path!r}: expected a 2-D array (rows, dim); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputDataError(f"{key}={path!r}: embeddings must be real numbers; the array holds dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputDataError(f"{key}={path!r} is empty: shape {arr.shape}")
    return arr


def _with_layout(writer, name: str, max_rows_per_file: Optional[int] = None):
    """A DataFrameWriter with the table's Parquet layout (:data:`lakecurate.tables.ROW_GROUP_BYTES`)."""
    if name in ROW_GROUP_BYTES:
        writer = writer.option("parquet.block.size", str(ROW_GROUP_BYTES[name]))
    if max_rows_per_file:
        writer = writer.option("maxRecordsPerFile", str(int(max_rows_per_file)))
    return writer


#: how Spark names the folder of a null partition value
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def _partition_values(relpath: str, columns: Sequence[str]) -> dict:
    """``{column: value}`` from the ``column=value/`` folders Spark's ``partitionBy`` wrote (integer columns)."""
    folders = dict(part.split("=", 1) for part in relpath.split("/")[:-1] if "=" in part)
    out = {}
    for col in columns:
        if col not in folders:
            raise TableError(f"internal error: file {relpath!r} has no {col}= folder")
        value = unquote(folders[col])
        out[col] = None if value == _NULL_PARTITION else value
    return out


def _check_same_partitions(existing: Sequence[str], new: Sequence[str], name: str) -> None:
    if list(existing) != list(new):
        raise TableError(f"table {name!r} is partitioned by {list(existing)} but this lakecurate writes it partitioned by "
                         f"{list(new)}: write to another lake.root, or move the old table away")


def _escape(value: str) -> str:
    return value.replace("/", "%2F").replace("=", "%3D")
