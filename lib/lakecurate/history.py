"""What the ``runs`` table says, as a person reads it: ``lakecurate runs`` and ``lakecurate show``.

Read with delta-rs through :class:`lakecurate.lake.Lake` (no Spark session, so it answers in a
second on a laptop, against a local folder or a cloud URI). A run is every stage attempt recorded
under its id; a stage's state is its latest attempt (a failure followed by a resume that
succeeded reads ``succeeded``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from lakecurate.errors import TableError
from lakecurate.tables import RUNS

#: metric keys of a stage's rows in and rows out, most telling first (stages name them differently)
ROWS_IN = ("n_rows", "new_rows", "pool", "source_rows")
ROWS_OUT = ("selected", "assigned", "kept", "rows", "embedded")


@dataclass
class StageAttempt:
    stage: str
    status: str
    started_at: datetime
    finished_at: datetime
    seconds: float
    metrics: dict
    error: Optional[str]
    #: the statuses of this stage's earlier attempts in the run, oldest first (a rerun after a
    #: failure, or a stage rerun on purpose: a later `shards` or `report` reruns a finished run's report)
    earlier: list[str] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return len(self.earlier) + 1


@dataclass
class RunSummary:
    run_id: str
    stages: list[StageAttempt] = field(default_factory=list)  # in the order they first started
    config: dict = field(default_factory=dict)
    version: str = ""

    @property
    def started_at(self) -> datetime:
        return min(s.started_at for s in self.stages)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def status(self) -> str:
        if all(s.status == "succeeded" for s in self.stages):
            return "succeeded"
        return next(s.status for s in self.stages if s.status != "succeeded")

    @property
    def rows_in(self) -> Optional[int]:
        return next((s.metrics[k] for s in self.stages for k in ROWS_IN if isinstance(s.metrics.get(k), int)), None)

    @property
    def rows_out(self) -> Optional[int]:
        return next((s.metrics[k] for s in reversed(self.stages) for k in ROWS_OUT if isinstance(s.metrics.get(k), int)), None)


def read_runs(lake) -> list[RunSummary]:
    """Every run of the lake, the latest started first."""
    if not lake.exists(RUNS):
        raise TableError(f"no {RUNS!r} table under {lake.root!r}: no run has written there (give the lake root with --lake)")
    rows = lake.read_small(RUNS)
    runs: dict[str, RunSummary] = {}
    for r in sorted(rows, key=lambda r: (r["started_at"], r["finished_at"])):
        run = runs.setdefault(r["run_id"], RunSummary(r["run_id"]))
        attempt = StageAttempt(r["stage"], r["status"], r["started_at"], r["finished_at"], float(r["seconds"] or 0.0),
                               json.loads(r["metrics"] or "{}"), r.get("error"))
        known = next((i for i, s in enumerate(run.stages) if s.stage == attempt.stage), None)
        if known is None:
            run.stages.append(attempt)
        else:
            attempt.earlier = run.stages[known].earlier + [run.stages[known].status]
            run.stages[known] = attempt
        run.config = json.loads(r["config"] or "{}")
        run.version = r.get("lakecurate_version") or ""
    return sorted(runs.values(), key=lambda run: run.started_at, reverse=True)


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _count(v: Optional[int]) -> str:
    return "-" if v is None else f"{v:,}"


def runs_lines(runs: list[RunSummary]) -> list[str]:
    """The table ``lakecurate runs`` prints."""
    head = f"{'run_id':<32} {'started (UTC)':<19} {'seconds':>8} {'rows in':>12} {'rows out':>12}  stages"
    lines = [head]
    for run in runs:
        stages = " ".join(s.stage if s.status == "succeeded" else f"{s.stage}:{s.status}" for s in run.stages)
        lines.append(f"{run.run_id:<32} {_stamp(run.started_at):<19} {run.seconds:>8.1f} {_count(run.rows_in):>12} "
                     f"{_count(run.rows_out):>12}  {stages}")
    return lines


def show_lines(runs: list[RunSummary], run_id: str) -> list[str]:
    """What ``lakecurate show RUN_ID`` prints: each stage's state, timing and summary (its record's lines)."""
    from lakecurate.stages import STAGES

    run = next((r for r in runs if r.run_id == run_id), None)
    if run is None:
        known = ", ".join(r.run_id for r in runs[:10])
        raise TableError(f"run {run_id!r} is not in the runs table (latest: {known})")
    records = {s.name: s for s in STAGES}
    lines = [f"run {run.run_id}: {run.status}, started {_stamp(run.started_at)} UTC, {run.seconds:.1f} s of stages"
             + (f", lakecurate {run.version}" if run.version else ""),
             f"  stages {[s.stage for s in run.stages]}, rows in {_count(run.rows_in)}, rows out {_count(run.rows_out)}"]
    for s in run.stages:
        tries = ""
        if s.earlier:
            counts = {st: s.earlier.count(st) for st in dict.fromkeys(s.earlier)}
            tries = f" (attempt {s.attempts}; before it {', '.join(f'{n} {st}' for st, n in counts.items())})"
        lines.append(f"  {s.stage}: {s.status} in {s.seconds:.1f} s at {_stamp(s.started_at)}{tries}")
        if "reused_from" in s.metrics:
            lines.append(f"    reused the tables of run {s.metrics['reused_from']}")
        if s.status == "succeeded" and s.stage in records:
            lines += ["  " + line for line in records[s.stage].summary(s.metrics)]
        if s.error:
            lines.append(f"    error: {s.error.splitlines()[0]}")
        for w in s.metrics.get("warnings", []):
            lines.append(f"    warning: {w}")
    return lines
