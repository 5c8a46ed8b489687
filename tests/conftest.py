"""Shared fixtures. Spark tests share one local session (JVM start costs ~10 s)."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (os.path.join(ROOT, "lib"), os.path.join(ROOT, "tests")):  # the package; shared builders and digests
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="session")
def spark():
    from lakecurate.spark.session import get_spark

    session = get_spark(
        "local[2]",
        "lakecurate-tests",
        # 4g: the heap the suite was sized with (a local session's default is half the machine's
        # memory, and two workers' sessions live side by side here)
        {"spark.sql.shuffle.partitions": "4", "spark.sql.execution.arrow.maxRecordsPerBatch": "1000", "spark.driver.memory": "4g"},
    )
    yield session
    session.stop()


@pytest.fixture
def lake_root(tmp_path):
    return str(tmp_path / "lake")


@pytest.fixture(autouse=True)
def _html_report_only_where_tested(request, monkeypatch):
    """In-process runs skip the HTML report a run writes at its end (a few seconds each, over the
    suite's ~100 runs) unless the test is marked ``html_report``; the CLI tests, in fresh processes,
    always write it."""
    if request.node.get_closest_marker("html_report") is None:
        import lakecurate.pipeline

        monkeypatch.setattr(lakecurate.pipeline, "write_html_report", lambda lake, result: None)
