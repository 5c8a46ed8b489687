"""Shared fixtures. Spark tests share one local session (JVM start costs ~10 s)."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (os.path.join(ROOT, "lib"), os.path.join(ROOT, "tests")):  # the package; shared builders and digests
    if path not in sys.path:
        sys.path.insert(0, path)

#: the suite's longest files, longest first (seconds of test time from `--durations` of a full run
#: on 2 cores, 2026-12-07): ``make test`` hands files to its two workers in this order
#: (``--no-loadscope-reorder``; xdist's own order puts the files with the most tests first, so a
#: one-test kill chain of three minutes started last and ran alone at the end)
LONGEST_FIRST = (
    "tests/faults/test_nightly.py",  # 433 s
    "tests/e2e/test_spark_connect.py",  # 200 s
    "tests/faults/test_kill_resume.py",  # 176 s
    "tests/e2e/test_sail_native.py",  # 149 s
    "tests/faults/test_stage_faults.py",  # 129 s
    "tests/spark/test_embed.py",  # 112 s
    "tests/spark/test_assigner_perf_paths.py",  # 83 s
    "tests/e2e/test_multi_executor.py",  # 81 s
    "tests/e2e/test_report.py",  # 80 s
    "tests/spark/test_pipeline.py",  # 73 s
    "tests/spark/test_coreset.py",  # 69 s
    "tests/spark/test_dedup_stage.py",  # 65 s
    "tests/e2e/test_wheel.py",  # 52 s
)


def pytest_collection_modifyitems(config, items):
    """The longest files first (a stable sort: every other file, and the tests inside each file,
    keep their order), so that no long file starts last."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


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
