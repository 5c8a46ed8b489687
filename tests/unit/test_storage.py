"""Object-store lakes: storage options reach pyarrow and delta-rs, secrets stay out of the record,
and an unreachable or impossible root is one line naming it, before any Spark work."""

from __future__ import annotations

import time

import pyarrow.fs as pafs
import pytest

from lakecurate.config import LakeConfig, redacted
from lakecurate.errors import ConfigError, TableError
from lakecurate.lake import Lake, filesystem
from lakecurate.plan import config_fingerprint, load_plan

S3 = {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
      "AWS_SECRET_ACCESS_KEY": "not-a-secret", "AWS_ALLOW_HTTP": "true"}


def test_storage_options_become_pyarrow_filesystem_arguments():
    fs, inner = filesystem("s3://bucket/lake/runs", S3)
    assert isinstance(fs, pafs.S3FileSystem) and fs.region == "eu-west-1" and inner == "bucket/lake/runs"
    fs, inner = filesystem("s3a://bucket/lake", S3)  # Spark's scheme for the same store
    assert isinstance(fs, pafs.S3FileSystem) and inner == "bucket/lake"
    assert isinstance(filesystem("/tmp/x", None)[0], pafs.LocalFileSystem)


def test_unknown_or_misplaced_storage_options_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"lake.storage_options.AWS_REGOIN is not an option .* s3:// lake"):
        load_plan(data={"lake": {"root": "s3://b/lake", "storage_options": {"AWS_REGOIN": "x"}}, "input": {"format": "synthetic"}})
    with pytest.raises(ConfigError, match=r"AWS_REGION is not an option .* local or mounted path"):
        load_plan(data={"lake": {"root": "lake", "storage_options": {"AWS_REGION": "x"}}, "input": {"format": "synthetic"}})
    plan = load_plan(None, ["lake.root=s3://b/lake", "lake.storage_options.AWS_REGION=eu-west-1", "input.format=synthetic"])
    assert plan.config.lake.storage_options == {"AWS_REGION": "eu-west-1"}  # the option's name kept whole


def test_secrets_are_not_recorded_and_do_not_change_the_run():
    plan = load_plan(data={"lake": {"root": "s3://b/lake", "storage_options": S3}, "input": {"format": "synthetic"}})
    record = redacted(plan.config)
    assert set(record["lake"]["storage_options"].values()) == {"***"} and "not-a-secret" not in str(record)
    other = load_plan(data={"lake": {"root": "s3://b/lake"}, "input": {"format": "synthetic"}})
    assert config_fingerprint(plan.config) == config_fingerprint(other.config) and plan.run_id == other.run_id


def test_an_unreachable_object_store_root_is_one_line_naming_it():
    t0 = time.perf_counter()
    with pytest.raises(TableError) as err:
        Lake(None, LakeConfig(root="s3://lakecurate-test-bucket/lake", storage_options=S3, backend="embedded"))
    text = str(err.value)
    assert text.startswith("lake.root='s3://lakecurate-test-bucket/lake' cannot be reached: ") and "\n" not in text
    assert "lake.storage_options" in text and time.perf_counter() - t0 < 60


def test_dbfs_paths_are_databricks_mounts_or_refused():
    with pytest.raises(TableError, match=r"'dbfs:/mnt/lake': dbfs: paths are read through Databricks' /dbfs mount"):
        Lake(None, LakeConfig(root="dbfs:/mnt/lake", backend="embedded"))
    with pytest.raises(TableError, match=r"/Volumes mount"):
        Lake(None, LakeConfig(root="dbfs:/Volumes/main/curation/lake", backend="embedded"))


def test_a_native_delta_lake_never_calls_delta_rs(monkeypatch, tmp_path):
    import lakecurate.lake as lake_module

    class NoDeltaSpark:  # a session that answers every Delta question itself: reads by path, SQL
        def __init__(self):
            self.queries = []
            self.read = self

        def format(self, fmt):
            self.queries.append(f"format {fmt}")
            return self

        def load(self, uri):
            self.queries.append(f"load {uri}")
            raise RuntimeError(f"[DELTA_MISSING_DELTA_TABLE] {uri} is not a Delta table")

        def sql(self, query):
            self.queries.append(query)
            raise RuntimeError("DELTA_TABLE_NOT_FOUND")

    monkeypatch.setattr(lake_module, "has_native_delta", lambda spark: True)
    import deltalake

    monkeypatch.setattr(deltalake.DeltaTable, "is_deltatable", staticmethod(lambda *a, **k: pytest.fail("delta-rs was called")))
    spark = NoDeltaSpark()
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake"), backend="native"))
    assert not lake.exists("runs") and lake.version("runs") is None
    assert lake.row_count("delta", str(tmp_path / "in")) is None
    assert spark.queries and all(q in ("format delta",) or q.startswith("load file://") for q in spark.queries)
    with pytest.raises(TableError, match="native-Delta lake"):
        lake._delta(str(tmp_path))
