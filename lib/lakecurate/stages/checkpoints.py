"""Per-level checkpoints of the cluster stage, so a killed job resumes at the next level.

A checkpoint is one .npz per fitted level under ``<lake root>/_checkpoints/<run_id>/``, written
to a temporary name and renamed, so a level is either saved whole or not at all. It carries the
config fingerprint: a checkpoint from another config is ignored.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath

import numpy as np
import pyarrow.fs as pafs

from lakecurate.core.hierarchy import Level

log = logging.getLogger(__name__)


class LevelCheckpoints:
    def __init__(self, root: str, run_id: str, fingerprint: str):
        if "://" in root:
            self.fs, base = pafs.FileSystem.from_uri(root)
        else:
            self.fs, base = pafs.LocalFileSystem(), root
        self.dir = posixpath.join(base, "_checkpoints", run_id)
        self.fingerprint = fingerprint

    def _path(self, level: int) -> str:
        return posixpath.join(self.dir, f"level-{level}.npz")

    def save(self, level: Level) -> None:
        arrays = {
            "centroids": level.centroids,
            "counts": level.counts,
            "sizes": level.sizes,
            "cluster_inertia": level.cluster_inertia,
        }
        if level.labels is not None:
            arrays["labels"] = level.labels
            arrays["distances"] = level.distances
        meta = {
            "fingerprint": self.fingerprint,
            "level": level.level,
            "objective": level.objective,
            "n_reseeded": level.n_reseeded,
            "n_empty": level.n_empty,
            "seconds": level.seconds,
            "steps": level.steps,
        }
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
        self.fs.create_dir(self.dir, recursive=True)
        tmp = self._path(level.level) + ".tmp"
        with self.fs.open_output_stream(tmp) as out:
            out.write(buf.getvalue())
        self.fs.move(tmp, self._path(level.level))

    def load(self, n_levels: int) -> list[Level]:
        """The consecutive levels 1..t already fitted for this fingerprint."""
        levels: list[Level] = []
        for t in range(1, n_levels + 1):
            path = self._path(t)
            if self.fs.get_file_info(path).type != pafs.FileType.File:
                break
            with self.fs.open_input_file(path) as f:
                data = np.load(io.BytesIO(f.read()), allow_pickle=False)
            meta = json.loads(str(data["meta"]))
            if meta["fingerprint"] != self.fingerprint:
                log.info("checkpoint %s is from another config; refitting from level %d", path, t)
                break
            levels.append(
                Level(
                    level=t,
                    centroids=data["centroids"],
                    counts=data["counts"],
                    sizes=data["sizes"],
                    objective=meta["objective"],
                    cluster_inertia=data["cluster_inertia"],
                    labels=data["labels"] if "labels" in data else None,
                    distances=data["distances"] if "distances" in data else None,
                    n_reseeded=meta["n_reseeded"],
                    n_empty=meta["n_empty"],
                    seconds=meta["seconds"],
                    steps=meta["steps"],
                )
            )
        if levels:
            log.info("resuming from %d checkpointed level(s) in %s", len(levels), self.dir)
        return levels

    def clear(self) -> None:
        try:
            self.fs.delete_dir(self.dir)
        except (FileNotFoundError, OSError):
            pass
