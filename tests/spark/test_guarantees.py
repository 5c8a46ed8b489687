"""Each of the README's Guarantees that had no test that could fail gets one here: the commit
retry bound, a conditional write refused when the run's rows moved, the sample stage refusing a
tree whose cluster stage did not succeed, a killed run's scratch removed after 24 h idle or by
``vacuum``, and one-line errors for a quota and a permission failure."""

from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest
from deltalake import DeltaTable

import lakecurate.lake as lake_module
from lakecurate.config import LakeConfig
from lakecurate.errors import RunChangedError, TableError
from lakecurate.lake import COMMIT_ATTEMPTS, Lake, disk_error
from lakecurate.pipeline import run
from lakecurate.plan import load_plan
from lakecurate.spark.errors import as_lakecurate_error

from builders import save_npy

pytestmark = pytest.mark.spark


def frame(spark, n, offset=0):
    from pyspark.sql import functions as F

    return spark.range(offset, offset + n).select(F.col("id"), (F.col("id") * 2).alias("v"))


def test_a_commit_that_keeps_losing_races_stops_at_the_bound_and_commits_nothing(spark, tmp_path, monkeypatch):
    from deltalake import DeltaTable as DT
    from deltalake.exceptions import CommitFailedError

    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    lake.write_run(frame(spark, 5), "t", "r1")
    attempts = []

    def always_loses(self, *args, **kwargs):
        attempts.append(1)
        raise CommitFailedError("a concurrent writer committed first")

    monkeypatch.setattr(DT, "create_write_transaction", always_loses)
    monkeypatch.setattr(lake_module.time, "sleep", lambda s: None)
    with pytest.raises(TableError, match=rf"{COMMIT_ATTEMPTS} commits for run 'r1' in a row lost to concurrent writers"):
        lake.write_run(frame(spark, 9), "t", "r1")
    assert len(attempts) == COMMIT_ATTEMPTS == 12
    monkeypatch.undo()
    assert DeltaTable(str(tmp_path / "t")).version() == 0
    assert lake.unreferenced_files("t", older_than_seconds=0) == []  # the failed write's files are gone


def test_a_conditional_write_is_refused_when_the_runs_rows_moved_and_not_for_other_runs(spark, tmp_path):
    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    lake.write_run(frame(spark, 5), "t", "r1")
    read_at = lake.version("t")
    lake.append_run(frame(spark, 3, 100), "t", "other")  # another run's rows: no conflict
    lake.append_run(frame(spark, 2, 200), "t", "r1", unchanged_since=read_at)
    assert lake.read("t", "r1").count() == 7
    with pytest.raises(RunChangedError, match=rf"version\(s\) \[{read_at + 2}\] changed run 'r1'"):
        lake.append_run(frame(spark, 2, 300), "t", "r1", unchanged_since=read_at)
    with pytest.raises(RunChangedError):
        lake.write_run(frame(spark, 1, 400), "t", "r1", unchanged_since=read_at)
    assert lake.read("t", "r1").count() == 7 and lake.version("t") == read_at + 2
    assert lake.unreferenced_files("t", older_than_seconds=0) == []


def test_the_sample_stage_refuses_a_tree_whose_cluster_stage_did_not_succeed(spark, tmp_path, monkeypatch):
    x = np.random.default_rng(2).normal(size=(300, 4)).astype(np.float32)
    cfg = {"name": "req", "run_id": "req", "stages": ["cluster", "sample"], "lake": {"root": str(tmp_path / "lake")},
           "input": {"format": "npy", "path": save_npy(tmp_path, x)}, "clustering": {"n_clusters": [6, 2], "n_iter": 2},
           "sampling": {"target_size": 40}, "spark": {"partitions": 2}}

    def dies(point, **context):
        if point == "commit:committed" and context.get("table") == "clusters":
            raise RuntimeError("the job died after the tree, before its assignments")

    monkeypatch.setattr(lake_module, "fault_point", dies)
    with pytest.raises(TableError, match="died after the tree"):
        run(load_plan(data=cfg), spark=spark)
    monkeypatch.undo()
    assert DeltaTable(str(tmp_path / "lake" / "clusters")).version() == 0  # the tree is there, the stage failed
    with pytest.raises(TableError, match=r"stage 'sample' reads the tables of stage 'cluster', which last failed for run 'req'"):
        run(load_plan(data={**cfg, "stages": ["sample"]}), spark=spark)
    assert not os.path.exists(tmp_path / "lake" / "curated")


def test_a_killed_runs_scratch_goes_after_24_hours_idle_or_by_vacuum(spark, tmp_path, capsys):
    from lakecurate.cli import main

    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    old, young, vacuumed = (lake.scratch(w) for w in ("old", "young", "vacuumed"))
    for s in (old, young, vacuumed):
        s.touch()
    day_ago = time.time() - 24 * 3600 - 60
    for s in (old, vacuumed):
        for name in os.listdir(s.path):
            os.utime(os.path.join(s.path, name), (day_ago, day_ago))
        os.utime(s.path, (day_ago, day_ago))
    os.utime(os.path.join(vacuumed.path, "_alive"), (time.time() - 7200, time.time() - 7200))  # idle 2 h: not a day
    lake.scratch("next")  # what a run does when it makes its own: a day-idle folder goes
    assert not os.path.exists(old.path) and os.path.exists(young.path) and os.path.exists(vacuumed.path)
    assert main(["vacuum", "--lake", str(tmp_path / "lake"), "--older-than-hours", "1", "--apply"]) == 0
    assert not os.path.exists(vacuumed.path)
    assert "scratch of a run that did not finish" in capsys.readouterr().out


@pytest.mark.parametrize("code, says", [(errno.EDQUOT, "disk quota exceeded"), (errno.EACCES, "permission denied"),
                                        (errno.ENOSPC, "no space left on the device")])
def test_quota_and_permission_failures_are_one_line(code, says):
    err = disk_error(OSError(code, os.strerror(code), "/lake/t/_data/x.parquet"), "writing table 't'")
    assert str(err) == f"writing table 't' failed: {says} (/lake/t/_data/x.parquet)"

    class CapturedError(Exception):
        pass

    CapturedError.__module__ = "pyspark.errors.exceptions.captured"
    text = f"Job aborted.\nCaused by: java.io.IOException: {os.strerror(code)}\n\tat org.apache.hadoop.fs.RawLocalFileSystem"
    spark_side = as_lakecurate_error(CapturedError(text), "stage cluster")
    assert spark_side is not None and "\n" not in str(spark_side) and says in str(spark_side)
