"""The shards stage on Spark: curated rows with their payload, one partition per cluster, read by
the training loader; reruns replace; bad settings refused before anything is written."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakecurate.errors import ConfigError, InputDataError
from lakecurate.pipeline import run
from lakecurate.plan import load_plan
from lakecurate.tables import SHARDS

pytestmark = pytest.mark.spark

torch = pytest.importorskip("torch")

from lakecurate.torch import ClusterBatches  # noqa: E402


def demo_config(root, **shards) -> dict:
    """The demo's pool and tree shape, scaled to 12k rows."""
    return {
        "name": "demo", "stages": ["cluster", "sample", "shards"], "lake": {"root": str(root)},
        "input": {"format": "synthetic", "synthetic": {"n": 12000, "dim": 64, "n_concepts": 60, "alpha": 1.2, "seed": 0}},
        "clustering": {"n_clusters": [120, 24, 6], "n_resampling_steps": 2, "resample_size": [1, 3, 2], "n_iter": 8, "seed": 0},
        "sampling": {"target_size": 3000},
        "shards": {"payload_columns": ["embedding", "concept"], **shards},
        "spark": {"partitions": 2},
    }


def rows_of(root, name, run_id):
    df = DeltaTable(f"{root}/{name}").to_pandas()
    return df[df["run_id"] == run_id].sort_values(["id", "copy"] if "copy" in df else "id").reset_index(drop=True)


@pytest.fixture(scope="module")
def demo(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards") / "lake"
    result = run(load_plan(data=demo_config(root)), spark=spark)
    return root, result


def test_shards_hold_the_curated_rows_with_their_payload(demo):
    root, result = demo
    shards = rows_of(root, SHARDS, result.run_id)
    curated = rows_of(root, "curated", result.run_id)
    pool = rows_of(root, "pool", DeltaTable(f"{root}/pool").to_pandas()["run_id"].iloc[0]).set_index("id")
    assert len(shards) == len(curated) == 3000
    np.testing.assert_array_equal(shards["id"], curated["id"])
    paths = np.stack(shards["path"].to_numpy())
    np.testing.assert_array_equal(shards["shard"], paths[:, 2])  # the top level by default
    assert (shards["level"] == 3).all() and set(shards["shard"]) == set(range(6))
    np.testing.assert_array_equal(np.stack(shards["embedding"].to_numpy()), np.stack(pool.loc[shards["id"], "embedding"].to_numpy()))
    np.testing.assert_array_equal(shards["concept"], pool.loc[shards["id"], "concept"])
    m = result.stages["shards"]
    assert m["n_shards"] == 6 and sum(v["rows"] for v in m["shards"].values()) == 3000
    assert all(v["bytes"] > 0 for v in m["shards"].values())
    counts = shards.groupby("shard").size()
    assert {int(k): v["rows"] for k, v in m["shards"].items()} == {int(k): int(v) for k, v in counts.items()}


def test_a_shard_is_its_own_files(demo):
    root, result = demo
    dt = DeltaTable(f"{root}/{SHARDS}")
    assert dt.metadata().partition_columns == ["run_id", "shard"]
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    for a in actions:
        assert f"/shard={a['partition.shard']}/" in a["path"]
    ds = ClusterBatches(f"{root}/{SHARDS}", one_shard=2, columns=["id"])
    assert {f.partition["shard"] for f in ds.table.files} == {"2"}
    want = rows_of(root, SHARDS, result.run_id)
    got = np.concatenate([b.column("id").to_numpy() for b in ds])
    np.testing.assert_array_equal(np.sort(got), np.sort(want.loc[want["shard"] == 2, "id"].to_numpy()))


def test_same_cluster_batches_are_harder_than_mixed_on_the_demo_pool(demo):
    root, result = demo

    def mean_cos(mode):
        vals = []
        for b in ClusterBatches(f"{root}/{SHARDS}", mode=mode, batch_size=64, columns=["embedding"], seed=1):
            v = np.stack(b.column("embedding").to_numpy(zero_copy_only=False))
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
            s = v @ v.T
            vals.append((s.sum() - np.trace(s)) / (len(v) * (len(v) - 1)))
        return float(np.mean(vals))

    same, mixed = mean_cos("same_cluster"), mean_cos("mixed")
    assert same > mixed + 0.05, (same, mixed)


def test_the_training_example_runs_on_the_shards(demo, capsys):
    """examples/training/train_contrastive.py on this run's shards: harder negatives in same-cluster
    batches, and an expert per shard that fits its shard better than the base model (before the
    tests below rewrite the shards at level 1 and add another run)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "training", "train_contrastive.py")
    spec = importlib.util.spec_from_file_location("train_contrastive", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    root, result = demo
    assert example.main(["--lake", str(root), "--epochs", "2", "--batch-size", "64", "--experts", "2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in out.splitlines()
            if line.split() and line.split()[0] in ("mixed", "same_cluster")}
    assert rows["same_cluster"][1] > rows["mixed"][1] + 0.1  # negatives' cosine in the input space
    experts = [line.split() for line in out.split("experts")[1].splitlines()[2:] if line.strip()]
    assert len(experts) == 2 and all(float(e[3]) < float(e[2]) for e in experts)  # expert beats base on its shard


def test_shards_command_keeps_the_run_and_a_rerun_replaces_its_rows(spark, demo):
    root, result = demo
    cfg = demo_config(root)
    cfg["stages"] = ["cluster", "sample"]
    plan = load_plan(data=cfg, overrides=["shards.level=1"], alone="shards")
    assert plan.run_id == result.run_id and plan.stage_names[:3] == ["cluster", "sample", "shards"]
    before = DeltaTable(f"{root}/{SHARDS}").version()
    again = run(plan, spark=spark)
    assert set(again.skipped) >= {"cluster", "sample"} and "shards" in again.stage_seconds
    shards = rows_of(root, SHARDS, result.run_id)
    assert len(shards) == 3000 and (shards["level"] == 1).all()
    np.testing.assert_array_equal(shards["shard"], shards["cluster"])
    assert DeltaTable(f"{root}/{SHARDS}").version() == before + 1


def test_every_assigned_row(spark, demo, tmp_path):
    root, result = demo
    cfg = demo_config(root, rows="assigned", level=2)
    cfg["run_id"] = "assigned-rows"
    out = run(load_plan(data=cfg), spark=spark)
    shards = rows_of(root, SHARDS, out.run_id)
    assert len(shards) == 12000 and shards["id"].is_unique
    assert out.stages["shards"]["n_shards"] == 24
    # Spark reads both runs' rows back with their run_id and shard (from the files' partition folders)
    from lakecurate.config import LakeConfig
    from lakecurate.lake import Lake

    counts = {(r["run_id"], r["shard"]): r["count"] for r in Lake(spark, LakeConfig(root=str(root))).read(SHARDS)
              .groupBy("run_id", "shard").count().collect()}
    assert sum(v for (rid, _), v in counts.items() if rid == out.run_id) == 12000
    assert sum(v for (rid, _), v in counts.items() if rid == result.run_id) == 3000
    assert {s for (rid, s) in counts if rid == out.run_id} == set(range(24))


def test_bad_settings_are_refused_before_any_write(spark, demo, tmp_path):
    root, _ = demo
    with pytest.raises(ConfigError, match=r"shards.level=4 but the tree has 3 level"):
        load_plan(data=demo_config(root, level=4))
    cfg = demo_config(root)
    cfg["stages"] = ["cluster", "shards"]
    with pytest.raises(ConfigError, match="reads the tables of the sample stage"):
        load_plan(data=cfg)
    with pytest.raises(ConfigError, match="taken by the shards table"):
        load_plan(data=demo_config(root, payload_columns=["shard"]))
    fresh = tmp_path / "lake"
    with pytest.raises(InputDataError, match=r"shards.payload_columns\[1\]='caption' is not a column"):
        run(load_plan(data=demo_config(fresh, payload_columns=["embedding", "caption"])), spark=spark)
    assert not (fresh / SHARDS).exists() and not (fresh / "clusters").exists()  # refused before the first stage

