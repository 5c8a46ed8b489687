"""The lake module: atomic, idempotent Delta commits through the embedded delta-rs path."""

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
    assert not os.listdir(tmp_path / "t" / "_staging")


def test_schema_change_is_refused(spark, tmp_path):
    lake = Lake(spark, LakeConfig(root=str(tmp_path)))
    lake.write_run(frame(spark, 10), "t", "r1")
    with pytest.raises(TableError, match=r"different schema: missing columns \['embedding', 'ts'\]"):
        lake.write_run(frame(spark, 10).select("id"), "t", "r2")
    assert DeltaTable(str(tmp_path / "t")).version() == 0


def test_native_backend_is_refused_without_delta_jars(spark, tmp_path):
    with pytest.raises(TableError, match="no Delta Lake"):
        Lake(spark, LakeConfig(root=str(tmp_path), backend="native"))
