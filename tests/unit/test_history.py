"""``lakecurate runs`` and ``lakecurate show``: the runs table as a person reads it, with no Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lakecurate.cli import main
from lakecurate.config import LakeConfig
from lakecurate.errors import TableError
from lakecurate.history import read_runs, runs_lines, show_lines
from lakecurate.lake import Lake

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)


def attempt(run_id, stage, status, minute, seconds, metrics, error=None):
    start = T0 + timedelta(minutes=minute)
    return {"stage": stage, "status": status, "started_at": start, "finished_at": start + timedelta(seconds=seconds),
            "seconds": float(seconds), "fingerprint": "f", "config": json.dumps({"name": run_id}), "metrics": json.dumps(metrics),
            "error": error, "lakecurate_version": "0.2.0", "run_id": run_id}


@pytest.fixture
def lake_root(tmp_path):
    rows = [
        attempt("fit-1", "dedup", "succeeded", 0, 30, {"n_rows": 1000, "removed": 100, "kept": 900, "eps": 0.05}),
        attempt("fit-1", "cluster", "failed", 1, 5, {}, error="TableError: disk full\nmore"),
        attempt("fit-1", "cluster", "succeeded", 2, 20, {"n_rows": 900, "levels": []}),
        attempt("fit-1", "sample", "succeeded", 3, 2, {"selected": 200, "pool": 900, "strategy": "random", "level1_clusters_used": 9}),
        attempt("nightly-2", "assign", "succeeded", 60, 4, {"new_rows": 50, "assigned": 50, "tree_run_id": "fit-1", "stale_share": 0.5,
                                                            "refit_threshold": 0.05, "warnings": ["re-cluster: the tree is stale"]}),
        attempt("nightly-2", "sample", "failed", 61, 1, {}, error="InputDataError: too big"),
    ]
    table = pa.Table.from_pylist(rows)
    for i in range(len(rows)):  # one commit per attempt, as the run log appends
        write_deltalake(str(tmp_path / "runs"), table.slice(i, 1), mode="append", partition_by=["run_id"])
    return str(tmp_path)


def test_runs_lists_every_run_latest_first_with_its_stages_rows_and_time(lake_root):
    runs = read_runs(Lake(None, LakeConfig(root=lake_root)))
    assert [r.run_id for r in runs] == ["nightly-2", "fit-1"]
    fit = runs[1]
    assert [s.stage for s in fit.stages] == ["dedup", "cluster", "sample"] and fit.status == "succeeded"
    assert fit.stages[1].attempts == 2 and fit.seconds == 52.0  # the latest attempt of each stage
    assert (fit.rows_in, fit.rows_out) == (1000, 200)
    assert runs[0].status == "failed" and (runs[0].rows_in, runs[0].rows_out) == (50, 50)
    lines = runs_lines(runs)
    assert "nightly-2" in lines[1] and "assign sample:failed" in lines[1] and "1,000" in lines[2] and "200" in lines[2]


def test_show_prints_each_stage_with_its_summary_error_and_warnings(lake_root):
    runs = read_runs(Lake(None, LakeConfig(root=lake_root)))
    text = "\n".join(show_lines(runs, "fit-1"))
    assert "run fit-1: succeeded" in text and "cluster: succeeded in 20.0 s" in text
    assert "(attempt 2; before it 1 failed)" in text
    assert "de-duplication removed 100 of 1000 rows" in text and "curated 200 of 900 rows" in text
    night = "\n".join(show_lines(runs, "nightly-2"))
    assert "sample: failed" in night and "error: InputDataError: too big" in night and "more" not in night
    assert "warning: re-cluster: the tree is stale" in night
    with pytest.raises(TableError, match="run 'nope' is not in the runs table .latest: nightly-2, fit-1"):
        show_lines(runs, "nope")


def test_the_commands_print_and_say_what_is_missing(lake_root, tmp_path, capsys):
    assert main(["runs", "--lake", lake_root]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"lake {lake_root}: 2 run(s)") and "fit-1" in out
    assert main(["show", "nightly-2", "--lake", lake_root]) == 0
    assert "assign: 50 new rows into the tree of run fit-1" in capsys.readouterr().out
    assert main(["runs", "--lake", str(tmp_path / "empty")]) == 2
    assert "no 'runs' table under" in capsys.readouterr().err


def test_the_command_exits_zero_in_a_fresh_process(lake_root):
    """delta-rs's own scan can abort the interpreter at exit (code 134) after a correct answer:
    the runs table is read through the log and pyarrow, so the command ends cleanly."""
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "..", "lib")}
    for _ in range(4):
        proc = subprocess.run([sys.executable, "-m", "lakecurate.cli", "runs", "--lake", lake_root], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0 and "fit-1" in proc.stdout, proc.stderr[-2000:]


def test_an_embed_with_nothing_new_reads_its_source_rows_in_and_no_reprs(tmp_path):
    """Issue 31: the embed stage's row count was overwritten by the run's input fingerprints
    (``{'embed.source': {...}} input rows``), and ``runs`` said ``rows in 0`` for an embed that found
    nothing new; a report rerun by ``shards`` read as ``2 attempts``."""
    fingerprints = {"embed.source": {"kind": "parquet", "files": 3}}
    rows = [
        attempt("emb-1", "embed", "succeeded", 0, 9, {"source_rows": 6000, "embedded": 0, "rejected": 0, "already_embedded": 6000,
                                                      "previously_rejected": 0, "nothing_new": True, "model": "m", "dim": 384,
                                                      "inputs": fingerprints}),
        attempt("emb-1", "report", "succeeded", 1, 3, {}),
        attempt("emb-1", "report", "succeeded", 5, 3, {}),
    ]
    for r in rows:
        write_deltalake(str(tmp_path / "runs"), pa.Table.from_pylist([r]), mode="append", partition_by=["run_id"])
    runs = read_runs(Lake(None, LakeConfig(root=str(tmp_path))))
    assert (runs[0].rows_in, runs[0].rows_out) == (6000, 0)
    text = "\n".join(show_lines(runs, "emb-1"))
    assert "6000 source rows (nothing new to embed)" in text and "{" not in text and "None" not in text
    assert "report: succeeded in 3.0 s" in text and "(attempt 2; before it 1 succeeded)" in text


def test_the_run_log_refuses_a_stage_metric_named_like_the_fingerprints(tmp_path):
    from lakecurate.runlog import RECORDED_INPUTS, RunLog

    log = RunLog(Lake(None, LakeConfig(root=str(tmp_path))), "r-1", {}, {}, inputs={"input": {"kind": "npy"}})
    with pytest.raises(ValueError, match=f"metric '{RECORDED_INPUTS}' is reserved"):
        log.record("embed", "succeeded", 0.0, {RECORDED_INPUTS: 5})
