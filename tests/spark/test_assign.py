"""The assign stage on Spark: a grown pool's new rows join an existing tree with the fit's kernel;
reruns change nothing; rows from a concept the tree never saw make it say a re-cluster is due."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lakecurate.core.assign import nearest_centroid
from lakecurate.core.sampling import ClusterTree, hierarchical_quotas, selection_keys
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.errors import ConfigError, TableError
from lakecurate.pipeline import run
from lakecurate.plan import load_plan
from tests.builders import embeddings_table

pytestmark = pytest.mark.spark

N, NEW, D = 3000, 300, 16


def config(root, inputs, stages=("assign",), **assign) -> dict:
    return {
        "name": "nightly", "stages": list(stages), "lake": {"root": str(root)},
        "input": {"format": "parquet", "path": str(inputs)},
        "clustering": {"n_clusters": [40, 5], "n_resampling_steps": 2, "resample_size": [1, 2], "n_iter": 8},
        "assign": assign, "spark": {"partitions": 2},
    }


def rows_of(root, name, run_id):
    df = DeltaTable(os.path.join(str(root), name)).to_pandas()
    return df[df["run_id"] == run_id]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("assign")
    pool = long_tailed_pool(N + NEW, D, 20, alpha=0.8, spread=0.3, seed=5)
    x = pool.x
    ids = np.arange(N + NEW, dtype=np.int64)
    first, grown, novel = base / "first", base / "grown", base / "novel"
    for d in (first, grown, novel):
        d.mkdir()
    pq.write_table(embeddings_table(x[:N], ids=ids[:N]), first / "part-0.parquet")
    for d in (grown, novel):
        pq.write_table(embeddings_table(x[:N], ids=ids[:N]), d / "part-0.parquet")
    extra = x[N:].copy()
    extra[0] = x[0]  # a copy of a fitted row, under a new id
    pq.write_table(embeddings_table(extra, ids=ids[N:]), grown / "part-1.parquet")
    rng = np.random.default_rng(9)
    far = (8.0 * rng.standard_normal(D) + 0.3 * rng.standard_normal((NEW, D))).astype(np.float32)  # a concept never seen
    pq.write_table(embeddings_table(far, ids=ids[N:] + 10_000), novel / "part-1.parquet")
    root = base / "lake"
    fit_cfg = config(root, first, stages=("cluster", "sample"))
    fit_cfg["sampling"] = {"target_size": 600}
    fit = run(load_plan(data=fit_cfg), spark=spark)
    return {"root": root, "tree": fit.run_id, "x": x, "far": far, "grown": grown, "novel": novel}


def test_new_rows_join_the_tree_with_the_fits_labels(spark, lake):
    root, tree = lake["root"], lake["tree"]
    before = rows_of(root, "assignments", tree).set_index("id")
    clusters_before = rows_of(root, "clusters", tree).sort_values(["level", "cluster_id"])
    res = run(load_plan(data=config(root, lake["grown"])), spark=spark)
    m = res.stages["assign"]
    assert m["tree_run_id"] == tree and m["new_rows"] == NEW == m["assigned"]
    after = rows_of(root, "assignments", tree).set_index("id")
    assert len(after) == N + NEW
    # the fitted rows keep their labels; the new ones get the fit's kernel's nearest centroid
    assert (after.loc[before.index, "cluster"] == before["cluster"]).all()
    centroids = np.stack(clusters_before[clusters_before["level"] == 1]["centroid"].to_numpy()).astype(np.float32)
    extra = lake["x"][N:].copy()
    extra[0] = lake["x"][0]
    labels, _ = nearest_centroid(extra, centroids)
    np.testing.assert_array_equal(after.loc[np.arange(N, N + NEW), "cluster"].to_numpy(), labels)
    assert after.loc[N, "cluster"] == before.loc[0, "cluster"]  # a copy of a fitted row: the label the fit gave it
    paths = np.stack(after["path"].to_numpy())
    assert (paths[:, 0] == after["cluster"].to_numpy()).all()
    # clusters: a new version with the grown counts, the centroids as fitted
    clusters = rows_of(root, "clusters", tree).sort_values(["level", "cluster_id"])
    np.testing.assert_array_equal(np.stack(clusters["centroid"].to_numpy()), np.stack(clusters_before["centroid"].to_numpy()))
    for level in (1, 2):
        assert clusters[clusters["level"] == level]["size"].sum() == N + NEW
    level1 = clusters[clusters["level"] == 1]
    np.testing.assert_array_equal(level1["size"].to_numpy(), np.bincount(after["cluster"], minlength=40))
    # the append is one version, tagged with the increment
    history = DeltaTable(os.path.join(str(root), "assignments")).history(1)[0]
    assert history["lakecurate.increment"] == res.run_id and history["operationParameters"]["mode"] == "Append"
    # rows from the fitted distribution: few beyond the fit's p99 distance, no warning
    assert m["stale_share"] < 0.05 and not m.get("warnings")


def test_the_same_increment_changes_nothing(spark, lake):
    root, tree = lake["root"], lake["tree"]
    plan = load_plan(data=config(root, lake["grown"]))
    version = DeltaTable(os.path.join(str(root), "assignments")).version()
    again = run(plan, spark=spark)
    assert "assign" in again.skipped
    other = config(root, lake["grown"])
    other["run_id"] = "nightly-again"
    res = run(load_plan(data=other), spark=spark)
    assert res.stages["assign"]["new_rows"] == 0
    assert DeltaTable(os.path.join(str(root), "assignments")).version() == version
    assert len(rows_of(root, "assignments", tree)) == N + NEW


def test_a_new_concept_says_a_recluster_is_due(spark, lake):
    root = lake["root"]
    with pytest.warns(Warning, match="re-cluster"):
        res = run(load_plan(data=config(root, lake["novel"], refit_threshold=0.1)), spark=spark)
    m = res.stages["assign"]
    assert m["new_rows"] == NEW and m["stale_share"] > 0.5
    assert any("re-cluster" in w for w in m["warnings"])
    by_top = m["stale_share_by_top_cluster"]
    assert by_top and set(by_top) <= {str(c) for c in range(5)} and max(by_top.values()) > 0.5  # per top-level cluster


def top_up_reference(root, tree, earlier: set, target: int, seed: int = 0) -> dict:
    """{id: rank} of a top-up (random strategy, no repeats) by the rule, in pandas: per level-1
    cluster, the tree's rows ordered earlier-set first, then by key and row key; the first quota."""
    clusters = rows_of(root, "clusters", tree)
    sizes, parents = [], []
    for level in sorted(clusters["level"].unique()):
        lv = clusters[clusters["level"] == level].sort_values("cluster_id")
        sizes.append(lv["size"].to_numpy(np.int64))
        parents.append(None if lv["parent_id"].isna().all() else lv["parent_id"].to_numpy(np.int64))
    quotas = hierarchical_quotas(ClusterTree(sizes, parents), target, np.random.default_rng(seed))
    a = rows_of(root, "assignments", tree).copy()
    a["earlier"] = a["id"].isin(earlier)
    a["key"] = selection_keys(a["row_key"].to_numpy(np.int64), a["distance"].to_numpy(np.float32), "random", seed)
    a = a.sort_values(["cluster", "earlier", "key", "row_key"], ascending=[True, False, True, True])
    a["rank"] = a.groupby("cluster").cumcount()
    chosen = a[a["rank"] < quotas[a["cluster"].to_numpy()]]
    return dict(zip(chosen["id"], chosen["rank"]))


def test_top_up_keeps_the_earlier_curated_rows_the_quotas_allow(spark, lake):
    root, tree = lake["root"], lake["tree"]
    earlier = set(rows_of(root, "curated", tree)["id"])
    assert len(earlier) == 600

    def nightly(mode, run_id):
        cfg = config(root, lake["grown"], stages=("assign", "sample"))
        cfg["sampling"] = {"target_size": 660, "mode": mode}
        cfg["run_id"] = run_id
        return run(load_plan(data=cfg), spark=spark)

    res = nightly("top_up", "nightly-top-up")
    m = res.stages["sample"]
    now = set(rows_of(root, "curated", "nightly-top-up")["id"])
    assert len(now) == 660 and m["tree_run_id"] == tree and m["previous_run_id"] == tree
    assert m["kept"] == len(now & earlier) and m["added"] == len(now - earlier) and m["dropped"] == len(earlier - now)
    # the least churn the new quotas force, counted here from the two curated sets cluster by cluster
    # (the stage's own dropped_least is what it checks itself): a row dropped from a cluster that
    # then takes a different row back would be churn no quota asked for
    before = rows_of(root, "curated", tree).groupby("cluster").size()
    after = rows_of(root, "curated", "nightly-top-up").groupby("cluster").size()
    clusters = before.index.union(after.index)
    before, after = before.reindex(clusters, fill_value=0), after.reindex(clusters, fill_value=0)
    assert m["dropped"] == int((before - after).clip(lower=0).sum()) and m["added"] == int((after - before).clip(lower=0).sum())
    assert m["added"] - m["dropped"] == 60
    # each row says the run it came in; the earlier set's rows say the run that dropped them
    # the rows and ranks are the rule's, ranked here over every row of the tree (the stage ranks
    # again only the clusters whose quota exceeds their earlier rows)
    got = rows_of(root, "curated", "nightly-top-up")
    assert dict(zip(got["id"], got["rank"])) == top_up_reference(root, tree, earlier, 660)
    came = rows_of(root, "curated", "nightly-top-up").set_index("id")["added_in"]
    assert all(came[i] == (tree if i in earlier else "nightly-top-up") for i in now)
    left = rows_of(root, "curated", tree).set_index("id")["dropped_in"]
    assert {i for i in earlier if left[i] == "nightly-top-up"} == earlier - now
    assert left[list(earlier & now)].isna().all()
    fresh = nightly("fresh", "nightly-fresh")
    resampled = set(rows_of(root, "curated", "nightly-fresh")["id"])
    assert fresh.stages["sample"]["tree_run_id"] == tree and len(resampled) == 660
    assert set(rows_of(root, "curated", "nightly-fresh")["added_in"]) == {"nightly-fresh"}
    assert len(earlier - resampled) >= m["dropped"] and len(resampled ^ earlier) > len(now ^ earlier)


def test_bad_settings(spark, lake):
    root = lake["root"]
    with pytest.raises(ConfigError, match="list one of them"):
        load_plan(data=config(root, lake["grown"], stages=("cluster", "assign")))
    with pytest.raises(TableError, match="no run of that id"):
        run(load_plan(data=config(root, lake["grown"], tree_run_id="nope")), spark=spark)
    cfg = config(root, lake["grown"])
    cfg["clustering"]["n_clusters"] = [30, 5]
    with pytest.raises(TableError, match="no run in"):
        run(load_plan(data=cfg), spark=spark)
