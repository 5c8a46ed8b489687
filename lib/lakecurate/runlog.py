"""The ``runs`` table: one row per finished stage attempt (config, status, timings, metrics).

A stage whose latest attempt for this run_id succeeded with the same fingerprint (the stage's
fingerprint: the config sections it and the stages before it read, and the fingerprints of the
inputs, :attr:`lakecurate.plan.RunPlan.stage_fingerprints`) is skipped on rerun, so a killed or
failed job resumes where it stopped; a stage committed for another config or input is run again,
and the log says so. A reusable stage committed with the same fingerprint by *another* run is not
computed again (:meth:`RunLog.committed_elsewhere`). A stage's ``succeeded`` row is written after all its tables are committed: it is the mark
that they belong together (readers and later stages check it, :meth:`RunLog.require`).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Optional

import pyarrow as pa

from lakecurate import __version__
from lakecurate.errors import LakecurateWarning, TableError
from lakecurate.lake import Lake
from lakecurate.tables import RUNS as RUNS_TABLE

log = logging.getLogger(__name__)
#: the metrics key under which every stage record carries the run's input fingerprints
RECORDED_INPUTS = "inputs"

RUNS_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("status", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("seconds", pa.float64()),
        ("fingerprint", pa.string()),
        ("config", pa.string()),
        ("metrics", pa.string()),
        ("error", pa.string()),
        ("lakecurate_version", pa.string()),
    ]
)


class RunLog:
    def __init__(self, lake: Lake, run_id: str, config: dict, fingerprints: dict, inputs: Optional[dict] = None):
        self.lake = lake
        self.run_id = run_id
        self.config = config
        #: stage -> its fingerprint (what the runs table records, and what a rerun compares)
        self.fingerprints = fingerprints
        self.inputs = inputs or {}
        self._cache: Optional[list[dict]] = None

    def fingerprint(self, stage: str) -> str:
        return self.fingerprints.get(stage, "")

    def _rows(self) -> list[dict]:
        """Every row of the ``runs`` table (it is small), read once and again after each record."""
        if self._cache is None:
            self._cache = self.lake.read_small(RUNS_TABLE, columns=["run_id", "stage", "status", "finished_at", "fingerprint", "metrics"]) \
                if self.lake.exists(RUNS_TABLE) else []
        return self._cache

    def _latest(self, stage: str, run_id: Optional[str] = None):
        rows = [r for r in self._rows() if r["stage"] == stage and r["run_id"] == (run_id or self.run_id)]
        return max(rows, key=lambda r: r["finished_at"]) if rows else None

    def completed(self, stage: str) -> Optional[dict]:
        """Metrics of the stage's committed success for this run, config and input, else None."""
        row = self._latest(stage)
        if row is None or row["status"] != "succeeded":
            return None
        if row["fingerprint"] != self.fingerprint(stage):
            log.info("stage %s of run %s was committed for another config or input (fingerprint %s, now %s): running it again",
                     stage, self.run_id, (row["fingerprint"] or "")[:10], self.fingerprint(stage)[:10])
            return None
        return json.loads(row["metrics"] or "{}")

    def committed_elsewhere(self, stage: str) -> Optional[tuple[str, dict]]:
        """``(run_id, metrics)`` of the latest success of ``stage`` with this run's fingerprint for
        it under another run id (whose tables hold the rows), else None."""
        rows = [r for r in self._rows() if r["stage"] == stage and r["status"] == "succeeded"
                and r["fingerprint"] == self.fingerprint(stage) and r["run_id"] != self.run_id]
        if not rows:
            return None
        latest = max(rows, key=lambda r: r["finished_at"])
        metrics = json.loads(latest["metrics"] or "{}")
        return metrics.get("reused_from", latest["run_id"]), metrics

    def require(self, stage: str, *, by: str) -> None:
        """TableError unless ``stage`` succeeded for this run: its tables are complete and belong together."""
        row = self._latest(stage)
        if row is None or row["status"] != "succeeded":
            state = "never ran" if row is None else f"last {row['status']}"
            raise TableError(f"stage {by!r} reads the tables of stage {stage!r}, which {state} for run {self.run_id!r}: run {stage!r} first")

    def record(self, stage: str, status: str, started: float, metrics: dict, error: Optional[str] = None) -> None:
        if self.inputs and RECORDED_INPUTS in metrics:  # a stage's own metric would be lost under the fingerprints
            raise ValueError(f"stage {stage!r}: metric {RECORDED_INPUTS!r} is reserved for the run's input fingerprints")
        now = time.time()
        row = {
            "stage": [stage],
            "status": [status],
            "started_at": [datetime.fromtimestamp(started, timezone.utc)],
            "finished_at": [datetime.fromtimestamp(now, timezone.utc)],
            "seconds": [round(now - started, 3)],
            "fingerprint": [self.fingerprint(stage)],
            "config": [json.dumps(self.config, default=str)],
            "metrics": [json.dumps({**metrics, RECORDED_INPUTS: self.inputs} if self.inputs else metrics, default=_jsonable)],
            "error": [error],
            "lakecurate_version": [__version__],
        }
        self.lake.write_arrow(pa.table(row, schema=RUNS_SCHEMA), RUNS_TABLE, self.run_id, append=True)
        self._cache = None

    @contextmanager
    def track(self, stage: str):
        """Time a stage; record success with its metrics dict, or failure with the error, then re-raise.

        The stage's lakecurate warnings (degraded but valid results) are kept under
        ``metrics["warnings"]`` and passed on to the caller as they were.
        """
        started = time.time()
        metrics: dict[str, Any] = {}
        log.info("stage %s: started (run %s)", stage, self.run_id)
        try:
            with _recorded_warnings(metrics):
                yield metrics
        except BaseException as exc:
            try:
                self.record(stage, "failed", started, metrics, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
            except Exception as record_exc:  # never hide the original error behind a logging failure
                log.warning("could not record the failure of stage %s in the runs table: %s", stage, str(record_exc).splitlines()[0])
                log.debug("recording the failure failed", exc_info=True)
            raise
        self.record(stage, "succeeded", started, metrics)
        log.info("stage %s: succeeded in %.1fs", stage, time.time() - started)


@contextmanager
def _recorded_warnings(metrics: dict):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            ours = [str(w.message) for w in caught if issubclass(w.category, LakecurateWarning)]
            if ours:
                metrics["warnings"] = ours
    for w in caught:  # outside the recording context: to the caller's filters, unchanged
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
