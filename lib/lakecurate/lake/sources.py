"""A run's inputs: Delta and Parquet tables by path or catalog name, files, ``.npy`` matrices staged as Parquet."""

from __future__ import annotations

import logging
import os
import time
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lakecurate.errors import InputDataError, TableError
from lakecurate.lake import layout
from lakecurate.lake.delta import Snapshot
from lakecurate.lake.layout import new_token
from lakecurate.lake.pieces import InputFiles, delta_input, parquet_input
from lakecurate.spark.errors import describe as describe_spark_error
from lakecurate.lake.paths import disk_error, first_line, hadoop_uri, is_uri, quietly

log = logging.getLogger(__name__)


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


class Sources:
    """Part of :class:`lakecurate.lake.Lake`: reading what a run starts from."""

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
                if not self._is_delta(hadoop_uri(path)):
                    raise TableError(f"{key}.path={path!r} is not a Delta table (no readable _delta_log); "
                                     f"for a folder of Parquet files use {key}.format=parquet")
                return self.read_delta_path(path, version, added_after=snapshot.get("added_after") if snapshot else None)
            if format == "parquet":
                listing = snapshot.get("listing") if snapshot else None
                if listing == []:  # an increment with no new file: the input's columns, no rows
                    return self.spark.read.parquet(hadoop_uri(path)).limit(0)
                if listing is not None and fs.get_file_info(p).type == pafs.FileType.Directory:
                    base = hadoop_uri(path).rstrip("/")
                    return self.spark.read.option("basePath", base).parquet(*[f"{base}/{rel}" for rel in listing])
                return self.spark.read.parquet(hadoop_uri(path))
        except TableError:
            raise
        except Exception as exc:
            raise TableError(f"{key}.path={path!r} cannot be read: {describe_spark_error(str(exc))}") from exc
        raise InputDataError(f"{key}.format={format!r} cannot be read as a table")

    def input_files(self, format: str, columns: Sequence[str], *, path: Optional[str] = None, table: Optional[str] = None,
                    key: str = "input", snapshot: Optional[dict] = None) -> tuple[Optional[InputFiles], str]:
        """``(files, "")`` for an input the tasks can read themselves (:mod:`lakecurate.lake.pieces`):
        a Delta table by path on an embedded lake, a Parquet folder or file; the same rows
        :meth:`read_source` reads, pinned to ``snapshot`` the same way. ``(None, why)`` for one
        that is read through Spark."""
        where = f"{key} {table or path}"
        if table:
            return None, f"{key}.table={table!r} is a catalog table"
        if format == "delta":
            if self.native is not None:
                return None, "on a native-Delta lake, Delta tables are read through the engine"
            try:
                snap = Snapshot(path, storage_options=self.options, version=snapshot.get("version") if snapshot else None,
                                added_after=snapshot.get("added_after") if snapshot else None)
            except Exception as exc:  # read_source says what is wrong, with its usual message
                return None, f"its Delta log could not be read here ({first_line(exc)})"
            parts = [c for c in columns if c in snap.partition_columns]
            if parts:
                return None, f"column(s) {parts} are partition columns"
            missing = [c for c in columns if c not in snap.schema.names]
            if missing:
                return None, f"column(s) {missing} are not in its schema"
            return delta_input(snap, columns, where), ""
        if format == "parquet":
            try:
                fs, base = self._fs(path)
                info = fs.get_file_info(base)
                pinned = snapshot.get("listing") if snapshot else None
                if info.type == pafs.FileType.File:
                    uris = [] if pinned == [] else [(path, info.size)]  # []: an increment with nothing new in it
                else:
                    listing = self.list_files(path)
                    if pinned is not None:
                        sizes = {rel: size for rel, size, _ in listing}
                        gone = [rel for rel in pinned if rel not in sizes]
                        if gone:
                            return None, f"file(s) of its pinned listing are gone ({gone[:3]})"
                        listing = [(rel, sizes[rel], 0) for rel in pinned]
                    uris = [(self._join(path, rel), size) for rel, size, _ in listing]
            except OSError as exc:
                return None, f"it could not be listed here ({first_line(exc)})"
            if not uris:
                return None, "it holds no Parquet files"
            try:
                return parquet_input(uris, columns, where, self.options), ""
            except InputDataError as exc:  # e.g. a column only in key=value folder names: Spark's discovery reads it
                return None, f"its first file lacks a column ({exc})"
            except (OSError, pa.ArrowException) as exc:  # Spark's reader reports an unreadable file by name
                return None, f"its first file's footer could not be read here ({first_line(exc)})"
        return None, f"{key}.format={format!r} is not files"

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
        out_dir = self.stage_npy(path, content_sha256=content_sha256, key=key)
        df = self.spark.read.parquet(hadoop_uri(out_dir))
        return df.withColumnRenamed("id", id_column).withColumnRenamed("embedding", embedding_column)

    def stage_npy(self, path: str, *, content_sha256: str, key: str = "input.path") -> str:
        """The folder under :attr:`staging` holding the .npy matrix at ``path`` as Parquet (id,
        embedding), staged now unless an earlier run staged it."""
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
        return out_dir

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
            for info in self._half_staged(layout.ORPHAN_AGE_SECONDS):
                fs.delete_dir(info.path)
                log.info("removed a half-staged input a killed job left: %s", info.path)
        except OSError as exc:
            log.warning("could not look for half-staged inputs in %s: %s", self.staging, exc)
