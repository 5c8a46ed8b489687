"""Per-level checkpoints of the cluster stage, so a killed job resumes at the next level.

A checkpoint is one .npz per fitted level under ``<lake root>/_checkpoints/<run_id>/``, written
through the lake (:meth:`lakecurate.lake.Lake.put_file`: a temporary name, then a rename), so a
level is either saved whole or not at all. It carries the config fingerprint: a checkpoint from
another config is ignored.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath

import numpy as np

from lakecurate.core.assign import RoutedCentroids
from lakecurate.core.hierarchy import Level
from lakecurate.lake import Lake

log = logging.getLogger(__name__)


class LevelCheckpoints:
    def __init__(self, lake: Lake, run_id: str, fingerprint: str):
        self.lake = lake
        self.dir = posixpath.join("_checkpoints", run_id)  # relative to the lake root
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
        if level.routing is not None:
            arrays["coarse"] = level.routing.coarse
            arrays["offsets"] = level.routing.offsets
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
        self.lake.put_file(self._path(level.level), buf.getvalue())

    def load(self, n_levels: int) -> list[Level]:
        """The consecutive levels 1..t already fitted for this fingerprint."""
        levels: list[Level] = []
        for t in range(1, n_levels + 1):
            path = self._path(t)
            saved = self.lake.get_file(path)
            if saved is None:
                break
            data = np.load(io.BytesIO(saved), allow_pickle=False)
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
                    routing=RoutedCentroids(data["coarse"], data["offsets"], data["centroids"]) if "coarse" in data else None,
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
            self.lake.remove_tree(self.dir)
        except OSError as exc:  # leftovers cost disk space only: a fresh fingerprint ignores them
            log.warning("could not remove the checkpoints %s: %s", self.dir, exc)
