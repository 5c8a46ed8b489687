"""Progress of long steps: a line every few seconds while Spark works, a bar on a terminal.

``with progress(spark, "dedup: pairwise comparisons", rows=n):`` watches the Spark jobs the block
starts and reports, every :data:`EVERY` seconds, the tasks done out of those known, the elapsed
time, an ETA, and rows per second when ``rows`` is given. The task counts come from Spark's own
progress reports: the status tracker of a classic session (read-only monitoring, off the data
path) or the progress handler of a Spark Connect session. Where neither tells anything, the line
still says the step is alive and for how long. On a terminal (stderr is a TTY) the line is a
bar redrawn in place instead.

Finished tasks are a coarse measure when a step has few long tasks (an embed pass over a few
partitions said ``0/2 Spark tasks`` for minutes). Such a step passes :class:`TaskCounters`: each
task writes how many rows it has done to a small file of its own (at most every
:data:`COUNTER_EVERY` seconds, in a folder of the run's scratch space that the driver and every
executor reach), and the line reports the rows done, rows/s and the ETA from their sum.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from typing import Optional

log = logging.getLogger("lakecurate.progress")

#: seconds between two progress lines of one step
EVERY = 5.0
#: seconds between two writes of one task's counter file
COUNTER_EVERY = 2.0


class TaskCounters:
    """Rows done per task, in files under ``path`` (a local folder or a URI): written by the tasks
    (:meth:`counter`), summed by the driver (:meth:`total`). Pickled into the tasks' closures."""

    def __init__(self, path: str, options: Optional[dict] = None, before_rows: str = ""):
        self.path = path.rstrip("/")
        self.options = options or {}
        #: what a started task does before its first rows, for the progress line ("loading the model")
        self.before_rows = before_rows

    def counter(self) -> "TaskCounter":
        """In a task: the counter of this task (its partition, else a fresh name)."""
        import uuid

        try:
            from pyspark import TaskContext

            ctx = TaskContext.get()
            key = f"p{ctx.partitionId()}" if ctx is not None else uuid.uuid4().hex
        except Exception:  # engines without a TaskContext (Sail): one file per task attempt
            key = uuid.uuid4().hex
        return TaskCounter(f"{self.path}/{key}.count", self.options)

    def total(self) -> int:
        """On the driver: the rows the tasks reported so far (0 when nothing is there yet)."""
        return self.read()[0]

    def read(self) -> tuple[int, int]:
        """On the driver: (rows the tasks reported so far, tasks that have reported: a task reports
        0 as it starts, so a task still loading its model counts)."""
        import pyarrow.fs as pafs

        from lakecurate.lake.paths import filesystem

        try:
            fs, base = filesystem(self.path, self.options)
            total = tasks = 0
            for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
                if info.base_name.endswith(".count"):
                    with fs.open_input_stream(info.path) as f:
                        text = f.read().decode().strip()
                    total += int(text or 0)
                    tasks += 1
            return total, tasks
        except Exception as exc:  # progress is best effort
            log.debug("task counters under %s: %s", self.path, exc)
            return 0, 0


class TaskCounter:
    """One task's running count, written to its file now and then and at the end."""

    def __init__(self, uri: str, options: dict):
        self.uri, self.options = uri, options
        self.rows = 0
        self._written = 0.0

    def add(self, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if now - self._written >= COUNTER_EVERY:
            self.flush()
            self._written = now

    def flush(self) -> None:
        from lakecurate.lake.paths import put_bytes

        try:
            put_bytes(self.uri, str(self.rows).encode(), self.options)
        except Exception as exc:  # never fail a task over its progress
            log.debug("task counter %s: %s", self.uri, exc)


class _Tasks:
    """Tasks done / known of the stages Spark ran since the step began."""

    def __init__(self, spark):
        self.spark = spark
        self.stages: dict = {}  # stage id -> (done, total)
        self._handler = None
        self._tracker = None
        self._seen_before: set = set()
        from lakecurate.spark.session import is_connect

        try:
            if is_connect(spark):
                def handler(stages=None, inflight_tasks=0, operation_id=None, done=False, **_):
                    for st in stages or ():
                        self.stages[st.stage_id] = (st.num_completed_tasks, st.num_tasks)

                spark.registerProgressHandler(handler)
                self._handler = handler
            else:
                self._tracker = spark.sparkContext.statusTracker()
                self._seen_before = set(self._tracker.getActiveStageIds())
        except Exception as exc:  # progress is best effort: never fail a step over it
            log.debug("no Spark task progress: %s", exc)

    def poll(self) -> tuple[int, int]:
        if self._tracker is not None:
            try:
                for sid in self._tracker.getActiveStageIds():
                    if sid in self._seen_before:
                        continue
                    info = self._tracker.getStageInfo(sid)
                    if info is not None:
                        self.stages[sid] = (info.numCompletedTasks, info.numTasks)
            except Exception:
                pass
        done = sum(d for d, _ in self.stages.values())
        total = sum(t for _, t in self.stages.values())
        return done, total

    def close(self) -> None:
        if self._handler is not None:
            try:
                self.spark.removeProgressHandler(self._handler)
            except Exception:
                pass


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else (f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def describe(what: str, elapsed: float, done: int, total: int, rows: Optional[int], rows_done: Optional[int] = None,
             started: int = 0, moving_for: Optional[float] = None, before_rows: str = "") -> str:
    """One progress line (also the bar's text); ``rows_done`` from the tasks' own counters, of
    ``started`` tasks; the rate over ``moving_for`` seconds (since rows were last seen at 0: a
    task's set-up, e.g. loading a model, is not counted as slowness); ``before_rows`` says what
    started tasks do before their first rows."""
    parts = [f"{what}: {_fmt(elapsed)}"]
    if rows_done is not None and rows:
        rows_done = min(rows_done, rows)
        parts.append(f"{rows_done:,}/{rows:,} rows")
        if rows_done:
            rate = rows_done / max(moving_for if moving_for is not None else elapsed, 1e-9)
            parts.append(f"{rate:,.0f} rows/s")
            if rows_done < rows:
                parts.append(f"ETA {_fmt((rows - rows_done) / rate)}")
        elif started and before_rows:
            parts.append(f"{started} task(s) started, {before_rows}")
        if total:
            parts.append(f"{done}/{total} Spark tasks")
    elif total:
        parts.append(f"{done}/{total} Spark tasks")
        if 0 < done < total:
            parts.append(f"ETA {_fmt(elapsed * (total - done) / done)}")
        if rows and done:
            parts.append(f"~{rows * min(done, total) / total / max(elapsed, 1e-9):,.0f} rows/s")
    else:
        parts.append("working")
    return ", ".join(parts)


@contextmanager
def progress(spark, what: str, *, rows: Optional[int] = None, every: Optional[float] = None, counters: Optional[TaskCounters] = None):
    """Report on ``what`` every ``every`` seconds (default :data:`EVERY`) until the block ends (see the module docstring)."""
    every = EVERY if every is None else every
    if spark is None:
        yield
        return
    tasks = _Tasks(spark)
    stop = threading.Event()
    tty = sys.stderr.isatty()
    t0 = time.perf_counter()

    still = 0.0  # the last time the counters said 0 rows

    def report() -> None:
        nonlocal still
        while not stop.wait(every):
            done, total = tasks.poll()
            now = time.perf_counter() - t0
            if counters is None:
                line = describe(what, now, done, total, rows)
            else:
                rows_done, started = counters.read()
                if rows_done == 0:
                    still = now
                line = describe(what, now, done, total, rows, rows_done, started, now - still if still else None, counters.before_rows)
            if tty:
                filled = int(20 * done / total) if total else 0
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (20 - filled)}] {line}\033[K")
                sys.stderr.flush()
            else:
                log.info("%s", line)

    thread = threading.Thread(target=report, name=f"progress: {what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1.0)
        tasks.close()
        if tty and time.perf_counter() - t0 >= every:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
