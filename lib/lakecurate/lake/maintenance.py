"""The lake's upkeep: files no table version references killed writes' leftovers and ``lakecurate vacuum``."""

from __future__ import annotations

import logging
import posixpath
import time
from urllib.parse import unquote

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lakecurate.lake.delta import commit_file_actions, deletion_vector_file
from lakecurate.lake import layout
from lakecurate.lake.layout import DATA_DIR, ORPHAN_AGE_SECONDS
from lakecurate.lake.paths import first_line, quietly

log = logging.getLogger(__name__)


class Maintenance:
    """Part of :class:`lakecurate.lake.Lake`: finding and removing what no committed version needs."""

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
            stale = self.unreferenced_files(name, older_than_seconds=layout.ORPHAN_AGE_SECONDS)
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
        if self.native is not None:
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
