"""All table I/O goes through this package: the only place that knows which Delta backend is in use.

Two backends write the same Delta tables:

* **native** (:mod:`lakecurate.lake.native`): ``format("delta")`` when the session has Delta
  (Databricks, EMR, ``--packages``, Sail); a run's rows are replaced atomically with ``replaceWhere``.
* **embedded**: where Spark has no Delta jars (a laptop, CI). Spark writes Parquet into a fresh
  folder of the table (``_data/run_id=<id>/<token>/``), then delta-rs commits those files in one
  conditional Delta transaction (add actions for the new files, remove actions for the run's old
  ones). Until that commit nothing is visible; on failure the files are deleted.

Every read of a Delta table goes through the protocol reader (:mod:`lakecurate.lake.delta`), or on
native lakes through the engine. The modules: ``delta`` (the reader), ``spark_read`` (its rows on
Spark, embedded lakes), ``native``, ``schemas``, ``paths``; :class:`Lake` here holds what both
backends share and dispatches the rest.

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
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
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
from lakecurate.errors import RunChangedError, TableError
from lakecurate.faults import fault_point
from lakecurate.spark.errors import as_lakecurate_error
from lakecurate.spark.errors import describe as describe_spark_error
from lakecurate.spark.session import has_native_delta
from lakecurate.tables import ADDED_COLUMNS, DESCRIPTIONS, OUTDATED_COLUMNS, PARTITIONS, ROW_GROUP_BYTES

log = logging.getLogger(__name__)

# delta-rs logs its own warnings (e.g. each credential provider it tried) straight to stderr; the
# failure itself reaches lakecurate as an exception and becomes one line
os.environ.setdefault("RUST_LOG", "error")

from lakecurate.lake.layout import (COMMIT_ATTEMPTS, DATA_DIR, ORPHAN_AGE_SECONDS, RUN_ID, WRITE_DIR, new_token,  # noqa: E402,F401
                                    retry_wait)
from lakecurate.lake.maintenance import Maintenance  # noqa: E402
from lakecurate.lake.scratch import HEARTBEAT, SCRATCH_AGE_SECONDS, Scratch, ScratchSpace  # noqa: E402,F401
from lakecurate.lake.sources import Sources, open_npy  # noqa: E402,F401


@dataclass
class TableInfo:
    name: str
    path: str
    version: Optional[int]
    backend: str


class Lake(Sources, ScratchSpace, Maintenance):
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
        if self.native is not None:  # native lakes go through Spark only: a call here is a bug
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

    def read_delta_path(self, path: str, version: Optional[int] = None, partition: Optional[dict] = None,
                        added_after: Optional[int] = None):
        """Any Delta table by path (at ``version``, default the latest), with this lake's backend:
        the rows the Delta protocol says are live (:mod:`lakecurate.lake.spark_read` on embedded
        lakes). ``partition`` (``{column: value}``) limits an embedded read to those files; callers
        still filter. ``added_after``: only the live files added after that version (embedded lakes)."""
        uri = hadoop_uri(path)
        if self.native is not None:
            if added_after is not None:
                raise TableError(f"{path!r}: a native-Delta lake reads whole versions through its engine, not the files "
                                 f"added after version {added_after}")
            return self.native.read(uri, version)
        from lakecurate.lake.spark_read import snapshot_frame

        snap = Snapshot(path, storage_options=self.options, version=version, added_after=added_after)
        return snapshot_frame(self.spark, snap, spark_schema(snap.schema), partition)

    def delta_schema(self, path: str) -> pa.Schema:
        """Any Delta table's logical schema as Arrow: through the engine on native lakes, else the protocol reader."""
        if self.native is not None:
            return arrow_schema(self.read_delta_path(path).schema)
        return Snapshot(path, storage_options=self.options).schema

    def delta_rows_with_ids(self, path: str, columns: list[str], id_column: str, ids: list,
                            partition: Optional[dict] = None) -> Iterator[pa.Table]:
        """Pieces of any Delta table's rows (``columns``), at least those whose ``id_column`` is in
        ``ids`` (callers filter again): on native lakes one filtered read through the engine, else
        a scan with the protocol reader (``partition`` limits both)."""
        if self.native is None:
            return scan_delta(path, storage_options=self.options, columns=columns, partition=partition)
        from pyspark.sql import functions as F

        frame = self.read_delta_path(path)
        for column, value in (partition or {}).items():
            frame = frame.where(F.col(column) == value)
        wanted = [i.item() if hasattr(i, "item") else i for i in ids]  # numpy scalars as plain values for the plan
        return iter([frame.where(F.col(id_column).isin(wanted)).select(*columns).toArrow()])

    def partition_sizes(self, name: str, run_id: str, column: str) -> dict:
        """``{value: {"rows", "files", "bytes"}}`` of one run's rows of a table partitioned by
        ``column`` (an integer column): from the Delta log on embedded lakes (no Spark job); on
        native ones the rows from Spark, files and bytes as None."""
        if self.native is not None:
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
        if self.native is not None:
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

    def column_values(self, name: str, run_id: str, column: str, *, limit: Optional[int] = None) -> Optional[pa.Array]:
        """One column of one run's rows of a table of this lake, on this process (e.g. the ids a stage
        hands on); None when it has more than ``limit`` values."""
        pieces, n = [], 0
        for t in self.scan(name, run_id, [column]):
            n += t.num_rows
            if limit is not None and n > limit:
                return None
            pieces.append(t.column(column))
        if not pieces:
            return pa.array([], self.delta_schema(self.path(name)).field(column).type)
        return pa.chunked_array(pieces).combine_chunks()

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
                if self.native is not None:
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

    def embedding_width(self, format: str, path: str, column: str) -> Optional[int]:
        """The width of a Delta or Parquet input's embedding column, read from its schema (a fixed
        size list) or its first non-empty row (a file's first batch: no Spark, a few KB read); None
        when the input has no rows or the column is missing (the run's own checks report those)."""
        try:
            if format == "delta":
                if self.native is not None:
                    return None
                pieces = Snapshot(path, storage_options=self.options).scan(columns=[column], batch_rows=64)
            elif format == "parquet":
                fs, base = self._fs(path)
                single = fs.get_file_info(base).type == pafs.FileType.File
                files = [base] if single else [f"{base}/{rel}" for rel, _, _ in self.list_files(path)]

                def pieces_of():
                    for f in files:
                        with fs.open_input_file(f) as handle:
                            for batch in pq.ParquetFile(handle).iter_batches(batch_size=64, columns=[column]):
                                yield pa.Table.from_batches([batch])

                pieces = pieces_of()
            else:
                return None
            for t in pieces:
                col = t.column(column)
                if pa.types.is_fixed_size_list(col.type):
                    return int(col.type.list_size)
                lengths = pc.list_value_length(col).drop_null()
                if len(lengths):
                    return int(lengths[0].as_py())
        except Exception as exc:  # the run reads the data and reports what is wrong with it
            log.debug("no embedding width for %s from its first rows: %s", path, exc)
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
        if self.native is not None:
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
        if self.native is not None and self.database:
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
                wait = retry_wait(attempt)
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


# ---------------------------------------------------------------------- helpers


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
