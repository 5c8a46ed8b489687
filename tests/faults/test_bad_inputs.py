"""Every failure is one line: bad inputs, a full disk, the command line; the failed stage is on record."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lakecurate.cli import parse_args
from lakecurate.errors import InputDataError, TableError
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import embeddings_table, save_npy

pytestmark = [pytest.mark.faults, pytest.mark.spark]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
X = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)


def plan(input_cfg, lake_root, **lake):
    return load_plan(data={
        "name": "bad", "lake": {"root": lake_root, **lake}, "input": input_cfg,
        "clustering": {"n_clusters": [4, 2], "n_iter": 2, "n_resampling_steps": 0},
        "sampling": {"target_size": 20}, "spark": {"master": "local[2]", "partitions": 2},
    })


def corrupt_parquet(tmp):
    os.makedirs(tmp / "in")
    pq.write_table(embeddings_table(X), tmp / "in" / "a.parquet")
    (tmp / "in" / "b.parquet").write_bytes(b"PAR1 this is not a parquet file")
    return {"format": "parquet", "path": str(tmp / "in")}


def csv_folder(tmp):
    os.makedirs(tmp / "in")
    (tmp / "in" / "a.csv").write_text("id,embedding\n1,2\n")
    return {"format": "parquet", "path": str(tmp / "in")}


def text_file(tmp):
    (tmp / "notes.parquet").write_text("hello")
    return {"format": "parquet", "path": str(tmp / "notes.parquet")}


def not_delta(tmp):
    os.makedirs(tmp / "in")
    pq.write_table(embeddings_table(X), tmp / "in" / "a.parquet")
    return {"format": "delta", "path": str(tmp / "in")}


def empty_npy(tmp):
    return {"format": "npy", "path": save_npy(tmp, np.zeros((0, 4), np.float32))}


def string_npy(tmp):
    return {"format": "npy", "path": save_npy(tmp, np.array([["a", "b"], ["c", "d"]]))}


def object_npy(tmp):
    path = str(tmp / "obj.npy")
    np.save(path, np.array([[1, "x"]], dtype=object), allow_pickle=True)
    return {"format": "npy", "path": path}


def missing_path(tmp):
    return {"format": "parquet", "path": str(tmp / "nowhere")}


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (corrupt_parquet, InputDataError, r"stage cluster: cannot read file:\S+/b\.parquet: .*is not a Parquet file"),
        (csv_folder, TableError, r"input\.path=.*in' cannot be read: .*a\.csv is not a Parquet file"),
        (text_file, TableError, r"notes\.parquet' cannot be read: .*is not a Parquet file"),
        (not_delta, TableError, r"is not a Delta table \(no readable _delta_log\)"),
        (empty_npy, InputDataError, r"input\.path=.*pool\.npy' is empty: shape \(0, 4\)"),
        (string_npy, InputDataError, r"embeddings must be real numbers; the array holds dtype <U1"),
        (object_npy, TableError, r"is not a readable \.npy file"),
        (missing_path, TableError, r"input\.path=.*nowhere' does not exist"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_bad_input_is_one_line_naming_the_path_and_the_reason(spark, tmp_path, make, error, pattern):
    cfg = make(tmp_path)
    with pytest.raises(error, match=pattern) as info:
        run(plan(cfg, str(tmp_path / "lake")), spark=spark)
    assert "\n" not in str(info.value), str(info.value)
    assert len(str(info.value)) < 400
    for table in ("clusters", "assignments", "curated"):
        assert not DeltaTable.is_deltatable(str(tmp_path / "lake" / table))


def test_a_failed_stage_is_recorded_in_runs(spark, tmp_path):
    with pytest.raises(InputDataError):
        run(plan(corrupt_parquet(tmp_path), str(tmp_path / "lake")), spark=spark)
    runs = DeltaTable(str(tmp_path / "lake" / "runs")).to_pandas()
    assert list(runs["stage"]) == ["cluster"] and list(runs["status"]) == ["failed"]
    assert "is not a Parquet file" in runs["error"].iloc[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 160 KiB file system (tmpfs): writes to it fail with ENOSPC, as on a full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"this test needs to mount a small tmpfs (root in the sandbox): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_staging_the_input_is_one_line(spark, tmp_path, small_disk):
    npy = save_npy(tmp_path, np.random.default_rng(1).normal(size=(20000, 16)).astype(np.float32))
    with pytest.raises(TableError, match=r"staging .*pool\.npy' as Parquet under .*_staging' failed: no space left on the device") as info:
        run(plan({"format": "npy", "path": npy}, str(small_disk / "lake")), spark=spark)
    assert "\n" not in str(info.value)


def test_a_full_disk_while_spark_writes_a_table_is_one_line(spark, tmp_path, small_disk):
    npy = save_npy(tmp_path, np.random.default_rng(1).normal(size=(20000, 16)).astype(np.float32))
    cfg = plan({"format": "npy", "path": npy}, str(small_disk / "lake"), staging=str(tmp_path / "staging"))
    with pytest.raises(TableError, match=r"writing table '\w+' at .* for run .*: no space left on the device") as info:
        run(cfg, spark=spark)
    assert "\n" not in str(info.value)


def test_a_corrupt_input_through_the_cli_exits_2_with_one_line(tmp_path):
    cfg = corrupt_parquet(tmp_path)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": os.path.join(ROOT, "lib") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "lakecurate.cli", "run", os.path.join(ROOT, "conf", "curate.yaml"), f"input.path={cfg['path']}",
           "input.format=parquet", f"lake.root={tmp_path / 'lake'}", "spark.master=local[2]", "clustering.n_clusters=[4,2]",
           "clustering.resample_size=null", "sampling.target_size=20", "clustering.metric=l2"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=str(tmp_path))
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [l for l in out.stderr.splitlines() if "error" in l.lower() or "exception" in l.lower() or l.startswith("\tat ")]
    assert errors == [l for l in errors if l.startswith("lakecurate: error: stage cluster: cannot read")] and len(errors) == 1, errors
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("argv", [
    ["run", "job.yaml", "sampling.target_size=5", "-v"],
    ["-v", "run", "job.yaml", "sampling.target_size=5"],
    ["run", "job.yaml", "--verbose", "sampling.target_size=5"],
])
def test_global_flags_work_anywhere_on_the_line(argv):
    args = parse_args(argv)
    assert args.verbose and args.config == "job.yaml" and args.overrides == ["sampling.target_size=5"]
    assert not parse_args(["run", "job.yaml"]).verbose


def test_lakecurate_errors_reach_the_cli_as_one_line_and_exit_2(capsys):
    from lakecurate.cli import main

    assert main(["run", os.path.join(ROOT, "conf", "demo.yaml"), "sampling.strategy=nearest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lakecurate: error: sampling.strategy='nearest' is not one of")


def test_a_read_only_lake_is_one_line(spark, tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"this test needs to mount a read-only tmpfs (root in the sandbox): {done.stderr.strip()}")
    try:
        npy = save_npy(tmp_path, X)
        with pytest.raises(TableError, match=r"read-only file system") as info:
            run(plan({"format": "npy", "path": npy}, str(mount / "lake")), spark=spark)
        assert "\n" not in str(info.value)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
