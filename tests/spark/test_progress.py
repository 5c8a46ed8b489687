"""Long steps say how far they are: Spark task counts, elapsed time, ETA, rows per second."""

from __future__ import annotations

import logging
import time

import pytest

from lakecurate.spark.progress import describe, progress

pytestmark = pytest.mark.spark


def test_progress_lines_count_the_tasks_of_the_step(spark, caplog, tmp_path):
    """The tasks wait at a gate the test opens only once a line has counted them: the check does not
    depend on how fast the machine is (it once relied on 8 x 0.3 s outlasting a 0.25 s poll)."""
    import os
    import threading

    gate = str(tmp_path / "open")

    def gated(batches):
        deadline = time.time() + 120
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.05)
        yield from batches

    df = spark.range(0, 8, numPartitions=8).mapInArrow(gated, "id LONG")

    def opener():
        deadline = time.time() + 120
        while time.time() < deadline:
            if any("Spark tasks" in r.getMessage() for r in list(caplog.records) if r.name == "lakecurate.progress"):
                break
            time.sleep(0.05)
        open(gate, "w").close()

    with caplog.at_level(logging.INFO, logger="lakecurate.progress"):
        with progress(spark, "testing: a slow job", rows=8, every=0.1):
            t = threading.Thread(target=opener, daemon=True)
            t.start()
            assert df.count() == 8
            t.join()
    lines = [r.getMessage() for r in caplog.records if r.name == "lakecurate.progress"]
    assert lines and all(line.startswith("testing: a slow job: ") for line in lines)
    assert any("/8 Spark tasks" in line for line in lines), lines  # the job's 8 tasks, seen while it ran


def test_task_counters_add_up_what_each_task_reports(tmp_path):
    from lakecurate.spark.progress import TaskCounters

    counters = TaskCounters(str(tmp_path / "counts"))
    assert counters.total() == 0  # nothing written yet: no folder at all
    a, b = counters.counter(), counters.counter()  # outside a Spark task: one file per counter
    a.add(100)  # the first add writes at once
    b.add(30)
    b.add(20)  # within COUNTER_EVERY of its first write: kept in memory ...
    assert counters.total() == 130
    b.flush()  # ... until the task ends
    assert counters.total() == 150
    assert describe("embed", 10, 0, 2, 600, 150) == "embed: 10s, 150/600 rows, 15 rows/s, ETA 30s, 0/2 Spark tasks"
    assert describe("embed", 10, 2, 2, 600, 700) == "embed: 10s, 600/600 rows, 60 rows/s, 2/2 Spark tasks"
    assert counters.read() == (150, 2)  # two tasks have reported
    # tasks that started but have no rows yet say what they are doing; the rate counts from when rows moved
    assert (describe("embed", 15, 0, 2, 600, 0, 2, None, "loading the model")
            == "embed: 15s, 0/600 rows, 2 task(s) started, loading the model, 0/2 Spark tasks")
    assert describe("embed", 20, 0, 2, 600, 150, 2, 5.0, "loading the model") == "embed: 20s, 150/600 rows, 30 rows/s, ETA 15s, 0/2 Spark tasks"


def test_describe_gives_eta_and_rate_once_tasks_are_done():
    assert describe("x", 10, 0, 0, None) == "x: 10s, working"
    assert describe("x", 30, 1, 4, 4000) == "x: 30s, 1/4 Spark tasks, ETA 1m30s, ~33 rows/s"
    assert describe("x", 7200, 4, 4, None) == "x: 2h00m, 4/4 Spark tasks"
