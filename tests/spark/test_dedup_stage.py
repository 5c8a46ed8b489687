"""The Spark dedup stage against the pure API, partition independence, neighbours, the full run."""

import numpy as np
import pytest
from deltalake import DeltaTable

from lakecurate.plan import load_plan
from lakecurate.core.dedup import find_duplicates
from lakecurate.core.synthetic import redundant_pool
from lakecurate.pipeline import run

from builders import boundary_pool, save_npy

pytestmark = pytest.mark.spark

N, D, ITEMS = 1500, 16, 300
EPS = 0.01
K, NB, SEED, ITERS = 12, 1, 7, 5


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = redundant_pool(N, D, ITEMS, copies_alpha=1.1, copy_noise=0.05, n_concepts=30, seed=3)
    return save_npy(tmp_path_factory.mktemp("data"), p.x, "redundant.npy"), p


def dedup_config(npy, lake_root, partitions, **dedup):
    data = {
        "name": "dd",
        "stages": ["dedup"],
        "lake": {"root": lake_root},
        "input": {"format": "npy", "path": npy},
        "dedup": {"eps": EPS, "n_clusters": K, "n_neighbor_clusters": NB, "seed": SEED, "n_iter": ITERS, **dedup},
        "spark": {"master": "local[2]", "partitions": partitions},
    }
    return load_plan(data=data)


def duplicates_of(result, run_id):
    df = DeltaTable(result.tables["duplicates"]).to_pandas()
    df = df[df.run_id == run_id].sort_values("id")
    return df["id"].to_numpy(), df["kept_id"].to_numpy(), df["similarity"].to_numpy(), df["cluster"].to_numpy()


@pytest.fixture(scope="module")
def pure(pool):
    return find_duplicates(pool[1].x, eps=EPS, n_clusters=K, n_neighbor_clusters=NB, seed=SEED, n_iter=ITERS)


@pytest.mark.parametrize("partitions, max_cluster_rows", [(2, 100_000), (5, 100_000), (3, 120)])
def test_spark_stage_equals_pure_api_whatever_the_partitions_and_chunks(spark, pool, pure, tmp_path, partitions, max_cluster_rows):
    cfg = dedup_config(pool[0], str(tmp_path / "lake"), partitions, max_cluster_rows=max_cluster_rows)
    res = run(cfg, spark=spark)
    ids, kept, sims, clusters = duplicates_of(res, res.run_id)
    removed, kept_row, similarity = pure.duplicates()
    assert removed.size > 100, "precondition: the pool has many copies"
    np.testing.assert_array_equal(ids, removed)
    np.testing.assert_array_equal(kept, kept_row)
    np.testing.assert_array_equal(sims, similarity)  # the same exact float64 cosine
    np.testing.assert_array_equal(clusters, pure.cluster[removed])
    m = res.stages["dedup"]
    assert m["removed"] == removed.size and m["kept"] == N - removed.size and m["n_rows"] == N
    assert sum(b["n_removed"] for b in m["removed_by_cluster_size"]) == removed.size
    assert sum(b["n_rows"] for b in m["removed_by_cluster_size"]) == N
    if max_cluster_rows < N // K:
        assert m["chunked_clusters"] > 0, "precondition: some clusters are compared in chunks"
    assert m["cross_pairs"] > 0  # the neighbour probes found pairs across clusters


def test_neighbour_option_catches_copies_straddling_a_boundary(spark, tmp_path):
    X, p, q = boundary_pool()
    npy = save_npy(tmp_path, X, "boundary.npy")
    lake = str(tmp_path / "lake")
    found = {}
    for nb in (0, 1):
        cfg = dedup_config(str(npy), lake, 2, eps=0.01, n_clusters=2, n_neighbor_clusters=nb, seed=0)
        res = run(cfg, spark=spark)
        ids, kept, _, clusters = duplicates_of(res, res.run_id)
        found[nb] = (ids, kept, clusters)
    assert found[0][0].size == 0  # the pair is split between the two coarse clusters
    ids, kept, _ = found[1]
    assert ids.size == 1 and {int(ids[0]), int(kept[0])} == {p, q}
    pure = find_duplicates(X, eps=0.01, n_clusters=2, n_neighbor_clusters=1, seed=0, n_iter=ITERS)
    np.testing.assert_array_equal(ids, pure.removed)


def demo_config(lake_root, stages):
    data = {
        "name": "redundant",
        "stages": stages,
        "lake": {"root": lake_root},
        "input": {
            "format": "synthetic",
            "synthetic": {"n": 3000, "dim": 16, "n_concepts": 40, "n_items": 400, "copies_alpha": 1.1, "copy_noise": 0.05, "seed": 1},
        },
        "dedup": {"eps": 0.01, "n_neighbor_clusters": 1, "n_iter": 5},
        "clustering": {"n_clusters": [60, 10], "resample_size": [1, 3], "n_resampling_steps": 1, "n_iter": 5},
        "sampling": {"target_size": 300, "strategy": "random"},
        "report": {"label_column": "item"},
        "spark": {"master": "local[2]", "partitions": 2},
    }
    return load_plan(data=data)


def test_run_with_dedup_curates_fewer_copies(spark, tmp_path):
    lake = str(tmp_path / "lake")
    with_dedup = run(demo_config(lake, ["dedup", "cluster", "sample"]), spark=spark)
    without = run(demo_config(lake, ["cluster", "sample"]), spark=spark)

    def curated_items(res):
        cur = DeltaTable(res.tables["curated"]).to_pandas()
        cur = cur[cur.run_id == res.run_id]
        pool = DeltaTable(res.inputs["pool"][0]).to_pandas().set_index("id")
        return cur["id"].to_numpy(), pool.loc[cur["id"].to_numpy(), "item"].to_numpy()

    ids_d, items_d = curated_items(with_dedup)
    ids_n, items_n = curated_items(without)
    assert ids_d.size == ids_n.size == 300
    copies_d = ids_d.size - np.unique(items_d).size
    copies_n = ids_n.size - np.unique(items_n).size
    assert copies_d < copies_n
    assert np.unique(items_d).size > np.unique(items_n).size
    dups = DeltaTable(with_dedup.tables["duplicates"]).to_pandas()
    removed = set(dups[dups.run_id == with_dedup.run_id]["id"])
    assert removed and not removed & set(ids_d.tolist())  # the kept set is what got curated
    m = with_dedup.stages["dedup"]
    assert m["removed"] == len(removed) and with_dedup.stages["cluster"]["n_rows"] == 3000 - len(removed)
    assert with_dedup.report["curated"]["concepts_covered"] == np.unique(items_d).size
    # the report's baseline is the raw pool (copies included); the kept set is its own row
    rep = with_dedup.report
    assert rep["pool"]["n"] == 3000 and rep["deduplicated"]["n"] == 3000 - len(removed)
    assert rep["random"]["n"] == 300 and rep["random"]["concepts_covered"] < rep["curated"]["concepts_covered"]
    assert "deduplicated" not in without.report and without.report["pool"]["n"] == 3000
