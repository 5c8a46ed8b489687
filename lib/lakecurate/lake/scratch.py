"""A run's temporary files ``<staging>/scratch/`` and the lake's own files checkpoints."""

from __future__ import annotations

import logging
import os
import posixpath
import time
from typing import Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lakecurate.lake.layout import new_token
from lakecurate.spark.errors import as_lakecurate_error
from lakecurate.lake.paths import disk_error, hadoop_uri, is_uri, put_bytes, remove_path

log = logging.getLogger(__name__)



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


class ScratchSpace:
    """Part of :class:`lakecurate.lake.Lake`: scratch folders and the lake's own files, written atomically."""

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
