"""The Spark Delta backend ("native"): every read and every commit through the session's own Delta.

It serves Databricks, EMR and open-source delta-spark (classic or Spark Connect) and Sail, a Spark
Connect server with Delta of its own. They differ in what SQL they accept; one probe per lake
chooses between two ways of asking a table's metadata:

* **SQL** (delta-spark, Databricks): ``DESCRIBE HISTORY`` / ``DESCRIBE DETAIL`` for a table's
  version and identity, ``input_file_name()`` for the files a run's rows live in.
* **log** (Sail 0.7, which parses neither statement): the same facts from the table's own Delta
  log, read by :mod:`lakecurate.lake.delta` (the log only: rows are always read by the engine).

What both engines do is used for everything else: ``format("delta")`` reads with ``versionAsOf``;
a table is created by its first append (Sail refuses ``overwrite`` + ``replaceWhere`` on a table
that does not exist yet); a run's rows are replaced with ``replaceWhere``. Before every write the
frame's schema is checked against the table's (Sail would append a mismatched frame as it is).

Commits on a lake whose root is a local folder are serialised across processes by a file lock
(:func:`commit_lock`), so the check that an append's input did not change and the append itself
are one step for every lakecurate writer; Delta's own conflict detection (and lakecurate's
bounded retry of real conflicts, :data:`CONFLICT_MARKERS`) covers writers on object stores. On an
engine of the log kind, whose appends after a read cannot be made conditional, a root on an
object store is refused (:meth:`NativeDelta.refuse_unserialisable`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterator, Optional

import pyarrow as pa

from lakecurate.errors import RunChangedError, TableError
from lakecurate.lake.delta import Snapshot
from lakecurate.lake.layout import COMMIT_ATTEMPTS, retry_wait
from lakecurate.lake.paths import first_line, is_uri
from lakecurate.lake.schemas import arrow_schema, check_same_schema

log = logging.getLogger(__name__)

#: what a Delta engine says when a concurrent writer committed first: only these are retried
CONFLICT_MARKERS = (
    # delta-spark and Databricks: the ConcurrentModificationException family, by class and by error class
    "ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException", "ProtocolChangedException",
    "DELTA_CONCURRENT_", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED",
    # Sail 0.7: the version its commit meant to write was taken by another writer
    "Failed to commit transaction",
)

#: what engines say when a path holds no Delta table (anything else from the probe is an error)
_NOT_A_TABLE = ("DELTA_MISSING_DELTA_TABLE", "is not a Delta table", "PATH_NOT_FOUND", "Path does not exist",
                "No commit files found", "DELTA_TABLE_NOT_FOUND", "doesn't exist", "does not exist")

#: what engines say when they do not know a statement (the probe for DESCRIBE HISTORY)
_UNKNOWN_STATEMENT = ("PARSE_SYNTAX_ERROR", "ParseException", "found HISTORY", "mismatched input", "UNSUPPORTED")

def is_conflict(exc: BaseException) -> bool:
    """Whether a write failed because another writer's commit came first (worth writing again)."""
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in CONFLICT_MARKERS)


@contextlib.contextmanager
def commit_lock(root: str) -> Iterator[None]:
    """An exclusive lock, across processes on this machine, on commits to the lake at ``root`` (a
    local folder; a no-op for object-store roots). The operating system lets go of it when the
    process ends, killed or not, so a killed run never leaves the lake locked."""
    if is_uri(root):
        yield
        return
    import fcntl

    folder = os.path.join(root, "_locks")
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, "commits.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another lakecurate process's commit to the lake at %s", root)
            t0 = time.perf_counter()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("the other commit finished after %.1fs; committing", time.perf_counter() - t0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class NativeDelta:
    """Tables read and written with the session's Delta (``format("delta")``)."""

    def __init__(self, spark, *, options: Optional[dict] = None):
        self.spark = spark
        self.options = options or {}
        self._sql_metadata: Optional[bool] = None

    # ------------------------------------------------------------------ what the engine speaks

    @property
    def sql_metadata(self) -> bool:
        """Whether the engine answers ``DESCRIBE HISTORY`` (probed once, on a path that holds no
        table: an engine that knows the statement says the table is missing; one that does not,
        that it cannot parse it)."""
        if self._sql_metadata is None:
            try:
                self.spark.sql("DESCRIBE HISTORY delta.`file:///nonexistent-lakecurate-history-probe` LIMIT 1").collect()
                self._sql_metadata = True
            except Exception as exc:  # noqa: BLE001
                text = f"{type(exc).__name__}: {exc}"
                self._sql_metadata = not any(m in text for m in _UNKNOWN_STATEMENT)
            log.info("native Delta: table versions from %s", "DESCRIBE HISTORY" if self._sql_metadata else "the tables' Delta logs")
        return self._sql_metadata

    def refuse_unserialisable(self, root: str) -> None:
        """TableError when commits to ``root`` could not be made safe on this engine: an engine
        of the log kind (no conditional appends) with a root that a file lock cannot guard."""
        if is_uri(root) and not self.sql_metadata:
            raise TableError(
                f"lake.root={root!r}: this Spark engine's Delta (no DESCRIBE HISTORY: Sail) cannot make an append conditional "
                "on what it was computed from, and lakecurate serialises commits with a file lock only on a local lake.root; "
                "use lake.backend=embedded for an object-store root (delta-rs commits each version conditionally), or a local root")

    # ------------------------------------------------------------------ reading

    def read(self, uri: str, version: Optional[int] = None):
        reader = self.spark.read.format("delta")
        return (reader.option("versionAsOf", version) if version is not None else reader).load(uri)

    def schema_or_none(self, uri: str):
        """The table's Spark schema as the engine reads it, or None when ``uri`` holds no Delta table."""
        try:
            return self.read(uri).schema
        except Exception as exc:  # noqa: BLE001
            if any(m in str(exc) for m in _NOT_A_TABLE):
                return None
            raise

    def exists(self, uri: str) -> bool:
        """Whether ``uri`` holds a Delta table, asked by reading its schema through the engine."""
        return self.schema_or_none(uri) is not None

    def version(self, uri: str) -> int:
        if self.sql_metadata:
            return int(self.spark.sql(f"DESCRIBE HISTORY delta.`{uri}` LIMIT 1").first()["version"])
        return Snapshot(uri, storage_options=self.options).version

    def identity(self, uri: str) -> dict:
        """``{"table_id", "version"}`` of the table's latest version."""
        if self.sql_metadata:
            detail = self.spark.sql(f"DESCRIBE DETAIL delta.`{uri}`").first()
            return {"table_id": detail["id"], "version": self.version(uri)}
        snap = Snapshot(uri, storage_options=self.options)
        return {"table_id": snap.table_id, "version": snap.version}

    def run_files(self, uri: str, run_column: str, run_id: str, version: Optional[int]) -> set:
        """The files ``run_id``'s rows live in at ``version`` (default: the latest)."""
        if not self.sql_metadata:
            return {f.uri for f in Snapshot(uri, storage_options=self.options, version=version).files({run_column: run_id})}
        from pyspark.sql import functions as F

        frame = self.read(uri, version).where(F.col(run_column) == run_id).select(F.input_file_name().alias("f")).distinct()
        return {r["f"] for r in frame.collect()}

    def scan(self, frame, batch_rows: int) -> Iterator[pa.Table]:
        """A frame's rows on this process, ``batch_rows`` at a time (read by the engine, sent as Arrow)."""
        table = frame.toArrow()
        for batch in table.to_batches(max_chunksize=batch_rows):
            yield pa.Table.from_batches([batch], schema=table.schema)

    # ------------------------------------------------------------------ writing

    def add_columns(self, target: str, name: str, columns: list[tuple[str, str]]) -> None:
        """``ALTER TABLE ... ADD COLUMNS``; one line naming the table and columns where the engine has no such statement."""
        cols = ", ".join(f"{c} {t}" for c, t in columns)
        try:
            self.spark.sql(f"ALTER TABLE {target} ADD COLUMNS ({cols})")
        except Exception as exc:  # noqa: BLE001
            raise TableError(
                f"table {name!r} ({target}) was written by an older lakecurate without the column(s) {[c for c, _ in columns]}, "
                f"and this engine cannot add them ({first_line(exc)}): add them with an engine that runs ALTER TABLE ... ADD "
                "COLUMNS (delta-spark, Databricks, or lake.backend=embedded), or write to a new lake.root") from exc

    def write(self, df, *, uri: str, name: str, partition_by: list, run_column: str, run_id: str, mode: str,
              layout, commit_metadata: Optional[dict], unchanged_since: Optional[int], table: Optional[str]) -> None:
        """Commit ``df`` as ``run_id``'s rows of the table at ``uri`` (``mode``: ``replace_run`` or
        ``append``); ``table``, a catalog name to register it under. Checks the schema first; writes
        again, bounded, only when a concurrent commit came first."""
        import json

        for attempt in range(COMMIT_ATTEMPTS):
            current = self.schema_or_none(uri)  # one read of the table's schema per attempt
            exists = current is not None
            if exists:
                check_same_schema(arrow_schema(current), arrow_schema(df.schema), name)
            if unchanged_since is not None:
                then = set() if unchanged_since < 0 else self.run_files(uri, run_column, run_id, unchanged_since)
                if then != (self.run_files(uri, run_column, run_id, None) if exists else set()):
                    raise RunChangedError(f"table {name!r}: run {run_id!r}'s rows changed after version {unchanged_since}, "
                                          "which this write was computed from: nothing was written")
            writer = layout(df.write.format("delta").partitionBy(*partition_by))
            if commit_metadata:
                writer = writer.option("userMetadata", json.dumps(commit_metadata, sort_keys=True))
            if mode == "replace_run" and exists:
                writer = writer.mode("overwrite").option("replaceWhere", f"{run_column} = '{run_id}'")
            else:  # a new table is created by its first append (what every engine does)
                writer = writer.mode("append")
            try:
                if table:
                    writer.option("path", uri).saveAsTable(table)
                else:
                    writer.save(uri)
                return
            except Exception as exc:  # noqa: BLE001
                if attempt + 1 == COMMIT_ATTEMPTS or not is_conflict(exc):
                    raise
                wait = retry_wait(attempt)
                log.info("commit to %s lost a race (attempt %d of %d: %s); writing again in %.2fs",
                         name, attempt + 1, COMMIT_ATTEMPTS, first_line(exc), wait)
                time.sleep(wait)
