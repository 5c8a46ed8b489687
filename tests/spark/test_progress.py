"""Long steps say how far they are: Spark task counts, elapsed time, ETA, rows per second."""

from __future__ import annotations

import logging
import time

import pytest

from lakecurate.spark.progress import describe, progress

pytestmark = pytest.mark.spark


def test_progress_lines_count_the_tasks_of_the_step(spark, caplog):
    def slow(batches):
        for b in batches:
            time.sleep(0.3)
            yield b

    df = spark.range(0, 8, numPartitions=8).mapInArrow(slow, "id LONG")
    with caplog.at_level(logging.INFO, logger="lakecurate.progress"):
        with progress(spark, "testing: a slow job", rows=8, every=0.25):
            assert df.count() == 8
    lines = [r.getMessage() for r in caplog.records if r.name == "lakecurate.progress"]
    assert lines and all(line.startswith("testing: a slow job: ") for line in lines)
    assert any("/8 Spark tasks" in line for line in lines), lines  # the job's 8 tasks, seen while it ran


def test_describe_gives_eta_and_rate_once_tasks_are_done():
    assert describe("x", 10, 0, 0, None) == "x: 10s, working"
    assert describe("x", 30, 1, 4, 4000) == "x: 30s, 1/4 Spark tasks, ETA 1m30s, ~33 rows/s"
    assert describe("x", 7200, 4, 4, None) == "x: 2h00m, 4/4 Spark tasks"
