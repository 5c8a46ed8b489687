"""The ``runs`` table: one row per stage attempt (config, status, timings, metrics).

A stage whose latest attempt for this run_id succeeded with the same config fingerprint is
skipped on rerun, so a killed or failed job resumes where it stopped.
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
from lakecurate.errors import LakecurateWarning
from lakecurate.lake import Lake
from lakecurate.tables import RUNS as RUNS_TABLE

log = logging.getLogger(__name__)

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
    def __init__(self, lake: Lake, run_id: str, config: dict, fingerprint: str):
        self.lake = lake
        self.run_id = run_id
        self.config = config
        self.fingerprint = fingerprint

    def completed(self, stage: str) -> Optional[dict]:
        """Metrics of the stage's committed success for this run and config, else None."""
        if not self.lake.exists(RUNS_TABLE):
            return None
        rows = (
            self.lake.read(RUNS_TABLE, self.run_id)
            .where(f"stage = '{stage}'")
            .orderBy("finished_at", ascending=False)
            .limit(1)
            .collect()
        )
        if not rows or rows[0]["status"] != "succeeded" or rows[0]["fingerprint"] != self.fingerprint:
            return None
        return json.loads(rows[0]["metrics"] or "{}")

    def record(self, stage: str, status: str, started: float, metrics: dict, error: Optional[str] = None) -> None:
        now = time.time()
        row = {
            "stage": [stage],
            "status": [status],
            "started_at": [datetime.fromtimestamp(started, timezone.utc)],
            "finished_at": [datetime.fromtimestamp(now, timezone.utc)],
            "seconds": [round(now - started, 3)],
            "fingerprint": [self.fingerprint],
            "config": [json.dumps(self.config, default=str)],
            "metrics": [json.dumps(metrics, default=_jsonable)],
            "error": [error],
            "lakecurate_version": [__version__],
        }
        self.lake.write_arrow(pa.table(row, schema=RUNS_SCHEMA), RUNS_TABLE, self.run_id, append=True)

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
            except Exception:  # never hide the original error behind a logging failure
                log.exception("could not record the failure of stage %s", stage)
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
