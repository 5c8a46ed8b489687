"""The coreset stage on Spark: the same rows as the pure API, whatever the partitioning; bad targets refused."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lakecurate import target_coreset
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.errors import InputDataError
from lakecurate.pipeline import run
from lakecurate.plan import load_plan
from tests.builders import embeddings_table

pytestmark = pytest.mark.spark

N, D = 2500, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("coreset")
    pool = long_tailed_pool(N, D, 25, alpha=0.8, spread=0.3, seed=11)
    rng = np.random.default_rng(12)
    where = np.flatnonzero(np.isin(pool.concept, (1, 4)))
    target = (pool.x[rng.choice(where, 40, replace=False)] + rng.normal(0, 0.05, (40, D))).astype(np.float32)
    pq.write_table(embeddings_table(pool.x), os.path.join(base, "pool.parquet"))
    pq.write_table(embeddings_table(target, ids=np.arange(1000, 1040)), os.path.join(base, "target.parquet"))
    return base, pool, target


def config(base, root, **coreset) -> dict:
    return {
        "name": "cs", "stages": ["coreset"], "lake": {"root": str(root)},
        "input": {"format": "parquet", "path": os.path.join(base, "pool.parquet")},
        "coreset": {"target": {"format": "parquet", "path": os.path.join(base, "target.parquet")}, "n_centroids": 6,
                    "patience": 5, **coreset},
        "spark": {"partitions": 3},
    }


def coreset_rows(root, run_id):
    df = DeltaTable(os.path.join(str(root), "coreset")).to_pandas()
    return df[df["run_id"] == run_id].sort_values("id").reset_index(drop=True)


@pytest.mark.parametrize("partitions, candidates", [(1, 0), (3, 0), (7, 5)])
def test_spark_equals_the_pure_api(spark, data, tmp_path, partitions, candidates):
    base, pool, target = data
    cfg = config(base, tmp_path / "lake", candidates=candidates)
    cfg["spark"]["partitions"] = partitions
    result = run(load_plan(data=cfg), spark=spark)
    got = coreset_rows(tmp_path / "lake", result.run_id)
    want = target_coreset(pool.x, target, n_centroids=6, patience=5, details=True)
    np.testing.assert_array_equal(got["id"].to_numpy(), want.indices)
    np.testing.assert_array_equal(got["centroid"].to_numpy(), want.centroid)
    np.testing.assert_array_equal(got["similarity"].to_numpy(np.float32), want.similarity)
    np.testing.assert_array_equal(got["round"].to_numpy(), want.round)
    m = result.stages["coreset"]
    assert m["stop_reason"] == want.stop_reason == "threshold"
    assert m["utilities"] == [round(u, 6) for u in want.utilities]
    assert m["selected"] == len(want.indices) and m["n_pool"] == N and m["n_target"] == 40
    if candidates:  # a window of 5 per centroid cannot last: further passes fetched below the cursors
        assert m["fetch_passes"] > 1
    assert np.isin(pool.concept[got["id"]], (1, 4)).mean() > 0.9


def test_string_ids_get_the_same_rows(spark, data, tmp_path):
    """String ids rank ties by a hash, not the row number; these rows have no ties and the
    threshold stops the greedy (no random cut), so the chosen rows are the pure API's."""
    base, pool, target = data
    path = tmp_path / "pool-str.parquet"
    t = embeddings_table(pool.x)
    pq.write_table(t.set_column(0, "id", pa.array([f"row-{i}" for i in range(N)])), path)
    cfg = config(base, tmp_path / "lake")
    cfg["input"]["path"] = str(path)
    result = run(load_plan(data=cfg), spark=spark)
    got = coreset_rows(tmp_path / "lake", result.run_id)
    want = target_coreset(pool.x, target, n_centroids=6, patience=5, details=True)
    assert result.stages["coreset"]["stop_reason"] == "threshold"
    assert sorted(got["id"]) == sorted(f"row-{i}" for i in want.indices)
    by_id = dict(zip(got["id"], got["round"]))
    assert [by_id[f"row-{i}"] for i in want.indices] == want.round.tolist()


def test_coreset_then_balanced_curation_in_one_run(spark, data, tmp_path):
    base, pool, target = data
    cfg = config(base, tmp_path / "lake")
    cfg.update(stages=["dedup", "coreset", "cluster", "sample"], dedup={"eps": 0.002},
               clustering={"n_clusters": [6, 2], "n_iter": 3, "metric": "cosine"}, sampling={"target_size": 50})
    result = run(load_plan(data=cfg), spark=spark)
    chosen = set(coreset_rows(tmp_path / "lake", result.run_id)["id"])
    curated = DeltaTable(str(tmp_path / "lake" / "curated")).to_pandas()
    picked = set(curated[curated["run_id"] == result.run_id]["id"])
    dups = DeltaTable(str(tmp_path / "lake" / "duplicates")).to_pandas()
    assert len(picked) == 50 and picked <= chosen
    assert not chosen & set(dups[dups["run_id"] == result.run_id]["id"])
    assert result.stages["cluster"]["n_rows"] == len(chosen)  # the cluster stage saw exactly the coreset


def write_target(base, name, x, ids=None, model=None):
    t = embeddings_table(x, ids=ids)
    if model is not None:
        t = t.append_column("model", pa.array([model] * len(x)))
    path = os.path.join(base, name)
    pq.write_table(t, path)
    return path


@pytest.mark.parametrize("case, words", [
    ("dim", "has dimension 8 but the pool (input"),
    ("nan", "1 row(s) with NaN or infinite values"),
    ("empty", "is empty"),
    ("dup", "has duplicate ids, e.g. 7"),
    ("model", "holds embeddings of model(s) ['other-model'] but the pool's are of model(s) ['minilm']"),
])
def test_a_bad_target_is_refused_and_nothing_is_written(spark, data, tmp_path, case, words):
    base, pool, target = data
    cfg = config(base, tmp_path / "lake")
    if case == "dim":
        path = write_target(tmp_path, "t.parquet", target[:, :8])
    elif case == "nan":
        bad = target.copy()
        bad[3, 2] = np.nan
        path = write_target(tmp_path, "t.parquet", bad)
    elif case == "empty":
        path = write_target(tmp_path, "t.parquet", np.zeros((0, D), np.float32))
    elif case == "dup":
        path = write_target(tmp_path, "t.parquet", target[:10], ids=np.array([1, 2, 3, 4, 5, 6, 7, 7, 8, 9]))
    else:
        path = write_target(tmp_path, "t.parquet", target, model="other-model")
        t = embeddings_table(pool.x).append_column("model", pa.array(["minilm"] * N))
        pq.write_table(t, tmp_path / "pool.parquet")
        cfg["input"]["path"] = str(tmp_path / "pool.parquet")
    cfg["coreset"]["target"]["path"] = path
    with pytest.raises(InputDataError) as e:
        run(load_plan(data=cfg), spark=spark)
    assert words in str(e.value) and "coreset.target" in str(e.value)
    assert not os.path.exists(tmp_path / "lake" / "coreset")
