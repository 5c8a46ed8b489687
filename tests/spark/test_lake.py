"""The lake module: atomic, idempotent Delta commits through the embedded delta-rs path."""

import logging
import os

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakecurate.config import LakeConfig
from lakecurate.errors import TableError
from lakecurate.lake import Lake

pytestmark = pytest.mark.spark


def frame(spark, n, offset=0):
    from pyspark.sql import functions as F

    return spark.range(offset, offset + n).select(
        F.col("id"), F.array(F.rand(1).cast("float"), F.lit(1.0).cast("float")).alias("embedding"),
        F.current_timestamp().alias("ts"),
    )


def data_files(path):
    out = set()
    for d, _, files in os.walk(path):
        if "_delta_log" in d:
            continue
        out |= {os.path.relpath(os.path.join(d, f), path) for f in files if f.endswith(".parquet")}
    return out


def test_replace_run_is_idempotent_and_append_appends(spark, tmp_path):
    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    assert lake.backend == "embedded"
    lake.write_run(frame(spark, 100), "t", "r1")
    lake.write_run(frame(spark, 30), "t", "r1")  # replaces r1's rows
    lake.append_run(frame(spark, 5), "t", "r2")
    lake.append_run(frame(spark, 5, 5), "t", "r2")
    dt = DeltaTable(str(tmp_path / "t"))
    assert dt.version() == 3
    counts = dict(zip(*[dt.to_pyarrow_table().group_by("run_id").aggregate([("id", "count")]).column(c).to_pylist() for c in ("run_id", "id_count")]))
    assert counts == {"r1": 30, "r2": 10}
    assert lake.read("t", "r1").count() == 30
    # timestamps written as microseconds read back through delta-rs
    assert pa.types.is_timestamp(dt.to_pyarrow_table().schema.field("ts").type)
    # files of replaced versions are no longer referenced
    live = {os.path.relpath(u.replace("file://", ""), str(tmp_path / "t")) for u in dt.file_uris()}
    assert len(live) < len(data_files(str(tmp_path / "t")))


def test_a_failing_write_leaves_no_version_and_no_files(spark, tmp_path):
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType

    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    lake.write_run(frame(spark, 10), "t", "r1")
    before_files = data_files(str(tmp_path / "t"))

    @F.udf(FloatType())
    def explode_midway(x):
        if x > 500:
            raise ValueError("executor failure in the middle of the write")
        return float(x)

    bad = frame(spark, 1000).withColumn("embedding", F.array(explode_midway(F.col("id")), F.lit(1.0).cast("float")))
    with pytest.raises(TableError, match="writing table 't'.*run 'r1' failed"):
        lake.write_run(bad, "t", "r1")
    dt = DeltaTable(str(tmp_path / "t"))
    assert dt.version() == 0
    assert dt.to_pyarrow_table().num_rows == 10
    assert data_files(str(tmp_path / "t")) == before_files
    assert lake.unreferenced_files("t", older_than_seconds=0) == []  # not even Spark's _SUCCESS or temp files
    assert sorted(os.listdir(tmp_path / "t" / "_data" / "run_id=r1")) == sorted({f.split("/")[2] for f in before_files})


def test_schema_change_is_refused(spark, tmp_path):
    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    lake.write_run(frame(spark, 10), "t", "r1")
    with pytest.raises(TableError, match=r"different schema: missing columns \['embedding', 'ts'\]"):
        lake.write_run(frame(spark, 10).select("id"), "t", "r2")
    assert DeltaTable(str(tmp_path / "t")).version() == 0


def test_a_table_of_an_older_version_gains_the_columns_added_since(spark, tmp_path):
    """curated gained added_in/dropped_in (tables.ADDED_COLUMNS): an older table gets them on its next write."""
    from pyspark.sql import functions as F

    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    lake.write_run(spark.range(4).select("id", F.lit(0).alias("copy")), "curated", "old-run")
    newer = spark.range(10, 13).select("id", F.lit(0).alias("copy"), F.lit("new-run").alias("added_in"),
                                       F.lit(None).cast("string").alias("dropped_in"))
    lake.write_run(newer, "curated", "new-run")
    df = DeltaTable(str(tmp_path / "curated")).to_pandas().sort_values("id")
    assert list(df["added_in"].isna()) == [True] * 4 + [False] * 3 and df["dropped_in"].isna().all()
    assert set(lake.read("curated", "new-run").toPandas()["added_in"]) == {"new-run"}
    with pytest.raises(TableError, match="different schema"):  # any other new column is still refused
        lake.write_run(newer.withColumn("other", F.lit(1)), "curated", "third")


def test_native_backend_is_refused_without_delta_jars(spark, tmp_path):
    with pytest.raises(TableError, match="no Delta Lake"):
        Lake(spark, LakeConfig(root=str(tmp_path), backend="native"))


# ---------------------------------------------------------------- concurrent writers


def _race(lake, monkeypatch, writes, caplog):
    """Run ``writes`` (callables) in threads that all wait, snapshot loaded, until every one is about
    to commit its first attempt: the interleaving in which none sees another's commit. Returns the
    number of conflicts the writers had to retry."""
    import threading

    import lakecurate.lake as lake_module

    barrier = threading.Barrier(len(writes), timeout=120)
    waited = threading.local()

    def at(point, **context):
        if point == "commit:ready" and not getattr(waited, "done", False):
            waited.done = True
            barrier.wait()

    monkeypatch.setattr(lake_module, "fault_point", at)
    errors = []

    def go(fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(w,)) for w in writes]
    with caplog.at_level(logging.INFO, logger="lakecurate.lake"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    return sum("conflicted with a concurrent commit" in r.getMessage() or "created by a concurrent writer" in r.getMessage()
               for r in caplog.records)


def _rows_per_run(path):
    t = DeltaTable(path).to_pyarrow_table()
    runs = t.column("run_id").to_pylist()
    return {r: runs.count(r) for r in set(runs)}


@pytest.mark.parametrize("partition_was_empty", [True, False])
def test_two_writers_of_one_run_never_leave_its_rows_twice(spark, tmp_path, monkeypatch, caplog, partition_was_empty):
    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    lake.write_run(frame(spark, 7), "t", "other")
    if not partition_was_empty:
        lake.write_run(frame(spark, 3), "t", "r1")
    conflicts = _race(lake, monkeypatch, [lambda: lake.write_run(frame(spark, 20), "t", "r1"), lambda: lake.write_run(frame(spark, 20, 100), "t", "r1")], caplog)
    assert conflicts == 1  # the loser retried on the winner's snapshot
    assert _rows_per_run(str(tmp_path / "t")) == {"other": 7, "r1": 20}
    ids = set(lake.read("t", "r1").toPandas()["id"])
    assert ids in (set(range(20)), set(range(100, 120)))  # one writer's rows, whole


def test_two_runs_creating_a_table_at_once_both_commit(spark, tmp_path, monkeypatch, caplog):
    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    conflicts = _race(lake, monkeypatch, [lambda: lake.write_run(frame(spark, 5), "t", "a"), lambda: lake.append_run(frame(spark, 6), "t", "b")], caplog)
    assert conflicts == 1
    assert _rows_per_run(str(tmp_path / "t")) == {"a": 5, "b": 6}
    assert DeltaTable(str(tmp_path / "t")).version() == 1
    assert lake.unreferenced_files("t", older_than_seconds=0) == []


def test_leftovers_of_a_killed_write_are_removed_by_the_next_write_once_old(spark, tmp_path, monkeypatch):
    import lakecurate.lake as lake_module

    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    lake.write_run(frame(spark, 4), "t", "r1")
    leftover = tmp_path / "t" / "_data" / "run_id=r1" / "20200101T000000Z-deadbeef0000"
    leftover.mkdir(parents=True)
    (leftover / "part-0.parquet").write_bytes(b"never committed")
    assert lake.unreferenced_files("t", older_than_seconds=0) == ["_data/run_id=r1/20200101T000000Z-deadbeef0000/part-0.parquet"]
    lake.write_run(frame(spark, 4), "t", "r2")  # young: a write in flight could own it
    assert leftover.exists()
    monkeypatch.setattr(lake_module.layout, "ORPHAN_AGE_SECONDS", 0.0)
    lake.write_run(frame(spark, 4), "t", "r3")
    assert not leftover.exists() and lake.unreferenced_files("t", older_than_seconds=0) == []
    assert _rows_per_run(str(tmp_path / "t")) == {"r1": 4, "r2": 4, "r3": 4}


def test_vacuum_lists_then_deletes_only_what_no_version_references(spark, tmp_path, capsys):
    from lakecurate.cli import main

    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    lake.write_run(frame(spark, 4), "t", "r1")
    lake.write_run(frame(spark, 6), "t", "r1")  # version 1 replaces version 0's files: time travel keeps them
    orphan = tmp_path / "t" / "_data" / "run_id=r1" / "20200101T000000Z-0123456789ab" / "part-0.parquet"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x" * 10)
    first_write = tmp_path / "u" / "_data" / "run_id=r1" / "20200101T000000Z-ba9876543210" / "part-0.parquet"
    first_write.parent.mkdir(parents=True)
    first_write.write_bytes(b"y" * 5)  # a killed first write: files, no table
    half_staged = tmp_path / "_staging" / "inputs" / "x.npy-abc.20200101T000000Z-00.tmp"
    half_staged.mkdir(parents=True)
    (half_staged / "part-00000.parquet").write_bytes(b"z")

    assert main(["vacuum", "--lake", str(tmp_path), "--older-than-hours", "0"]) == 0
    out = capsys.readouterr().out
    assert "3 place(s)" in out and "would delete (dry run" in out
    assert orphan.exists() and first_write.exists() and half_staged.exists()

    assert main(["vacuum", "--lake", str(tmp_path), "--older-than-hours", "0", "--apply"]) == 0
    assert "deleted: 1 file(s), 10 bytes in table t" in capsys.readouterr().out
    assert not orphan.exists() and not first_write.exists() and not half_staged.exists()
    assert DeltaTable(str(tmp_path / "t"), version=0).to_pyarrow_table().num_rows == 4  # history intact
    assert DeltaTable(str(tmp_path / "t")).to_pyarrow_table().num_rows == 6
    assert main(["vacuum", "--lake", str(tmp_path), "--older-than-hours", "0"]) == 0
    assert "0 place(s)" in capsys.readouterr().out
