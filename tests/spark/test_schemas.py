"""One schema per table whatever the configuration: runs of any depth, metric and strategy share a lake."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from lakecurate.config import LakeConfig
from lakecurate.errors import TableError
from lakecurate.lake import Lake
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

pytestmark = pytest.mark.spark


def config(root: str, name: str, n_clusters: list[int], metric: str, strategy: str) -> dict:
    return {
        "name": name, "stages": ["cluster", "sample"], "lake": {"root": root},
        "input": {"format": "synthetic", "synthetic": {"n": 2000, "dim": 8, "n_concepts": 20, "seed": 1}},
        "clustering": {"n_clusters": n_clusters, "n_iter": 4, "resample_size": [1] + [2] * (len(n_clusters) - 1),
                       "n_resampling_steps": 1, "metric": metric},
        "sampling": {"target_size": 300, "strategy": strategy}, "spark": {"partitions": 2},
    }


def test_runs_of_different_depths_metrics_and_strategies_share_one_lake(spark, tmp_path):
    pl = pytest.importorskip("polars")
    root = str(tmp_path / "lake")
    two = run(load_plan(data=config(root, "two", [20, 5], "cosine", "random")), spark=spark)
    three = run(load_plan(data=config(root, "three", [30, 10, 3], "l2", "closest")), spark=spark)
    depth = {two.run_id: 2, three.run_id: 3}

    lake = Lake(spark, LakeConfig(root=root))  # Spark
    rows = lake.read("assignments").selectExpr("run_id", "size(path) AS depth", "cluster = element_at(path, 1) AS leaf_first").collect()
    assert {(r["run_id"], r["depth"]) for r in rows} == set(depth.items()) and all(r["leaf_first"] for r in rows)
    assert len(rows) == 4000

    frame = DeltaTable(os.path.join(root, "assignments")).to_pandas()  # delta-rs
    assert {rid: {len(p) for p in g["path"]} for rid, g in frame.groupby("run_id")} == {k: {v} for k, v in depth.items()}

    curated = pl.read_delta(os.path.join(root, "curated"))  # polars
    counts = dict(curated.group_by("run_id").len().iter_rows())
    assert counts == {two.run_id: 300, three.run_id: 300}
    lengths = curated.with_columns(pl.col("path").list.len().alias("depth")).group_by("run_id").agg(pl.col("depth").unique())
    assert {r: sorted(d) for r, d in lengths.iter_rows()} == {k: [v] for k, v in depth.items()}
    assert set(curated["strategy"].unique()) == {"random", "closest"}


def test_a_table_an_older_lakecurate_wrote_is_refused_before_any_work(spark, tmp_path):
    root = str(tmp_path / "lake")
    old = pa.table({"id": pa.array([1, 2], pa.int64()), "row_key": pa.array([1, 2], pa.int64()),
                    "cluster_1": pa.array([0, 1], pa.int32()), "cluster_2": pa.array([0, 0], pa.int32()),
                    "distance": pa.array([0.5, 0.25], pa.float32()), "run_id": pa.array(["old", "old"])})
    write_deltalake(os.path.join(root, "assignments"), old, partition_by=["run_id"])
    with pytest.raises(TableError, match=r"written by lakecurate 0\.1 .*move the folder aside") as err:
        run(load_plan(data=config(root, "new", [20, 5], "l2", "random")), spark=spark)
    assert "assignments_v0_1" in str(err.value)
    assert not DeltaTable.is_deltatable(os.path.join(root, "runs"))  # the run never started: no runs row
    assert DeltaTable(os.path.join(root, "assignments")).to_pandas()["cluster_1"].tolist() == [0, 1]  # left as it was
