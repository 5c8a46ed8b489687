"""The Spark pipeline against the pure API, Delta round trips, resume. One shared local session."""

import os

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder

from lakecurate import HierarchicalKMeans, balanced_sample
from lakecurate.plan import load_plan
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.lake import Lake
from lakecurate.pipeline import run

from builders import save_npy

pytestmark = pytest.mark.spark

N, D = 6000, 8
LEVELS = [40, 8]
RESAMPLE = [3, 3]  # r > 1 at level 1 too, so the Spark top-r path runs
TARGET = 1500


@pytest.fixture(scope="module")
def pool_npy(tmp_path_factory):
    p = long_tailed_pool(N, D, 12, alpha=1.3, spread=0.3, seed=5)
    return save_npy(tmp_path_factory.mktemp("data"), p.x), p


def config(npy, lake_root, **over):
    data = {
        "name": "t",
        "lake": {"root": lake_root},
        "input": {"format": "npy", "path": npy},
        "clustering": {"n_clusters": LEVELS, "resample_size": RESAMPLE, "n_resampling_steps": 2, "n_iter": 6, "seed": 11},
        "sampling": {"target_size": TARGET, "strategy": "random", "seed": 3},
        "spark": {"master": "local[2]", "partitions": 3},
    }
    for key, value in over.items():
        section, name = key.split("__")
        data[section][name] = value
    return load_plan(data=data)


@pytest.fixture(scope="module")
def pure(pool_npy):
    _, p = pool_npy
    return HierarchicalKMeans(LEVELS, resample_size=RESAMPLE, n_resampling_steps=2, n_iter=6, seed=11).fit(p.x)


@pytest.fixture(scope="module")
def first_run(spark, pool_npy, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lake"))
    cfg = config(pool_npy[0], root)
    return cfg, run(cfg, spark=spark)


def _sizes(spark, lake_root, run_id, level):
    rows = (
        spark.read.parquet(*DeltaTable(os.path.join(lake_root, "clusters")).file_uris())
        .where(f"level = {level}")
        .orderBy("cluster_id")
        .select("size")
        .collect()
    )
    return np.array([r["size"] for r in rows])


def test_spark_tree_equals_pure_api(spark, first_run, pure):
    cfg, res = first_run
    # clustering.driver_max_rows unset: the sizing places level 2 (40 inputs) on the driver, where
    # it costs no Spark pass
    assert [lv["where"] for lv in res.stages["cluster"]["levels"]] == ["executors", "driver"]
    clusters = DeltaTable(res.tables["clusters"]).to_pandas()
    for t, lv in enumerate(pure.levels_, start=1):
        got = clusters[clusters.level == t].sort_values("cluster_id")
        assert np.array_equal(got["size"].to_numpy(), lv.sizes)
        np.testing.assert_array_equal(np.stack(got["centroid"].to_numpy()).astype(np.float32), lv.centroids)
    assign = DeltaTable(res.tables["assignments"]).to_pandas().sort_values("id")
    paths = np.stack(assign["path"].to_numpy())
    assert np.array_equal(assign["cluster"].to_numpy(), pure.levels_[0].labels)
    assert np.array_equal(paths, pure.leaf_path())
    np.testing.assert_allclose(assign["distance"].to_numpy(), pure.levels_[0].distances, rtol=1e-6)


def test_spark_sample_equals_pure_api(first_run, pure):
    _, res = first_run
    curated = DeltaTable(res.tables["curated"]).to_pandas()
    assert len(curated) == TARGET
    assert np.array_equal(np.sort(curated["id"].to_numpy()), balanced_sample(pure, TARGET, seed=3))


@pytest.mark.parametrize("strategy", ["closest", "furthest"])
def test_other_strategies_and_partitioning_agree_with_pure(spark, pool_npy, pure, tmp_path, strategy):
    cfg = config(pool_npy[0], str(tmp_path / "lake"), sampling__strategy=strategy, spark__partitions=5)
    res = run(cfg, spark=spark)
    curated = DeltaTable(res.tables["curated"]).to_pandas()
    assert np.array_equal(np.sort(curated["id"].to_numpy()), balanced_sample(pure, TARGET, strategy=strategy, seed=3))


def test_tables_are_delta_and_queryable(spark, first_run):
    cfg, res = first_run
    # other tests' runs registered their own lakes' tables under the same view names since
    assert set(Lake(spark, cfg.config.lake).register_all()) >= {"clusters", "assignments", "curated", "runs"}
    by_level = spark.sql("SELECT level, count(*) AS k, sum(size) AS n FROM clusters GROUP BY level ORDER BY level").collect()
    assert [(r["level"], r["k"], r["n"]) for r in by_level] == [(1, 40, N), (2, 8, N)]
    for name, expected in (("assignments", N), ("curated", TARGET), ("clusters", 48)):
        dt = DeltaTable(res.tables[name])
        assert dt.to_pyarrow_table().num_rows == expected
        assert sum(pa.table(dt.get_add_actions(flatten=True)).column("num_records").to_pylist()) == expected
        assert dt.count() == expected  # delta-rs counts from the commit's numRecords stats
    # SQL without Spark, straight on the Delta log
    qb = QueryBuilder().register("curated", DeltaTable(res.tables["curated"]))
    n = qb.execute(f"SELECT count(*) AS n FROM curated WHERE run_id = '{res.run_id}'").read_all()
    assert n.column("n")[0].as_py() == TARGET
    runs = spark.sql(f"SELECT stage, status, metrics FROM runs WHERE run_id = '{res.run_id}'").collect()
    assert {(r["stage"], r["status"]) for r in runs} == {("cluster", "succeeded"), ("sample", "succeeded")}
    assert '"objective"' in [r for r in runs if r["stage"] == "cluster"][0]["metrics"]


def test_rerun_skips_committed_stages(spark, first_run):
    cfg, res = first_run
    versions = {name: DeltaTable(path).version() for name, path in res.tables.items() if name != "runs"}
    again = run(config(cfg.config.input.path, cfg.config.lake.root), spark=spark)
    assert again.skipped == ["cluster", "sample"]
    assert {name: DeltaTable(path).version() for name, path in again.tables.items() if name != "runs"} == versions


def test_killed_cluster_stage_resumes_from_level_checkpoints(spark, pool_npy, pure, tmp_path, monkeypatch):
    import lakecurate.stages.cluster as cluster_stage

    cfg = config(pool_npy[0], str(tmp_path / "lake"))
    real = cluster_stage.clusters_table

    def crash(levels):
        raise RuntimeError("simulated executor loss before the clusters commit")

    monkeypatch.setattr(cluster_stage, "clusters_table", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        run(cfg, spark=spark)
    assert not DeltaTable.is_deltatable(os.path.join(cfg.config.lake.root, "clusters"))
    monkeypatch.setattr(cluster_stage, "clusters_table", real)

    res = run(config(pool_npy[0], cfg.config.lake.root), spark=spark)
    assert res.stages["cluster"]["resumed_levels"] == 2
    assign = DeltaTable(res.tables["assignments"]).to_pandas()
    assert len(assign) == N  # replaced, not appended twice
    assert np.array_equal(assign.sort_values("id")["cluster"].to_numpy(), pure.levels_[0].labels)
    statuses = DeltaTable(res.tables["runs"]).to_pandas().query("stage == 'cluster'")["status"].tolist()
    assert sorted(statuses) == ["failed", "succeeded"]


@pytest.mark.parametrize("cache", ["auto", "lake"])
def test_upper_levels_on_executors_give_the_same_tree(spark, pool_npy, pure, tmp_path, cache):
    """Above clustering.driver_max_rows a level 2..T runs through the Spark assigner: same result,
    with the centroids cached or (``lake``) written as Parquet by the driver and re-read."""
    cfg = config(pool_npy[0], str(tmp_path / "lake"), clustering__driver_max_rows=10, clustering__metric="l2",
                 spark__block_cache=cache)
    res = run(cfg, spark=spark)
    assert [lv["where"] for lv in res.stages["cluster"]["levels"]] == ["executors", "executors"]
    assert res.stages["cluster"]["block_cache"] == ("local_files" if cache == "auto" else "lake")
    clusters = DeltaTable(res.tables["clusters"]).to_pandas()
    top = clusters[clusters.level == 2].sort_values("cluster_id")
    assert np.array_equal(top["size"].to_numpy(), pure.levels_[1].sizes)
    parents = clusters[clusters.level == 1].sort_values("cluster_id")["parent_id"].to_numpy()
    assert np.array_equal(parents, pure.levels_[1].labels)


def test_a_two_step_level_1_gives_the_pure_apis_tree_and_routes_new_rows_the_same_way(spark, pool_npy, tmp_path):
    """clustering.n_coarse at level 1 (with resampling inside each coarse cluster): the Spark run's
    tree and assignments equal HierarchicalKMeans(n_coarse=...), and the coarse_clusters table
    routes rows (as the assign stage does for new ones) exactly where the fit put them."""
    from types import SimpleNamespace

    from lakecurate.core.assign import nearest_centroid
    from lakecurate.stages.assign import read_tree

    x = pool_npy[1].x
    pure2 = HierarchicalKMeans(LEVELS, resample_size=RESAMPLE, n_resampling_steps=2, n_iter=6, seed=11, n_coarse=[5, 0]).fit(x)
    res = run(config(pool_npy[0], str(tmp_path / "lake"), clustering__n_coarse=[5, 0]), spark=spark)
    assert res.stages["cluster"]["levels"][0]["coarse_clusters"] == 5 and res.stages["cluster"]["levels"][1]["coarse_clusters"] == 0
    clusters = DeltaTable(res.tables["clusters"]).to_pandas()
    for t, lv in enumerate(pure2.levels_, start=1):
        got = clusters[clusters.level == t].sort_values("cluster_id")
        assert np.array_equal(got["size"].to_numpy(), lv.sizes)
        np.testing.assert_array_equal(np.stack(got["centroid"].to_numpy()).astype(np.float32), lv.centroids)
    assign = DeltaTable(res.tables["assignments"]).to_pandas().sort_values("id")
    assert np.array_equal(assign["cluster"].to_numpy(), pure2.levels_[0].labels)
    assert np.array_equal(np.stack(assign["path"].to_numpy()), pure2.leaf_path())
    coarse = DeltaTable(res.tables["coarse_clusters"]).to_pandas().sort_values("coarse_id")
    assert coarse["level"].tolist() == [1] * 5 and coarse["n_clusters"].sum() == LEVELS[0]
    routed, _, _ = read_tree(SimpleNamespace(lake=Lake(spark, cfg_lake(tmp_path))), res.run_id)
    np.testing.assert_array_equal(routed.coarse, pure2.levels_[0].routing.coarse)
    assert np.array_equal(nearest_centroid(x, routed)[0], pure2.levels_[0].labels)


def cfg_lake(tmp_path):
    from lakecurate.config import LakeConfig

    return LakeConfig(root=str(tmp_path / "lake"))
