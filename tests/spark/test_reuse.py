"""Five target sizes for the price of one clustering: a run whose tree (input, dedup, clustering)
was committed by another run reuses it; only what changed is computed."""

from __future__ import annotations

import os

import pytest
from deltalake import DeltaTable

from lakecurate.pipeline import run
from lakecurate.plan import load_plan

pytestmark = pytest.mark.spark


def config(root: str, target: int, n_iter: int = 3) -> dict:
    return {
        "name": "reuse", "stages": ["dedup", "cluster", "sample"], "lake": {"root": root},
        "input": {"format": "synthetic", "synthetic": {"n": 1500, "dim": 8, "n_concepts": 20, "n_items": 600, "seed": 2}},
        "dedup": {"eps": 0.01, "n_neighbor_clusters": 1},
        "clustering": {"n_clusters": [16, 4], "n_iter": n_iter, "resample_size": [1, 2], "n_resampling_steps": 1, "metric": "cosine"},
        "sampling": {"target_size": target}, "report": {"label_column": "item"}, "spark": {"partitions": 2},
    }


def rows(root: str, table: str, run_id: str) -> int:
    df = DeltaTable(os.path.join(root, table)).to_pandas()
    return int((df["run_id"] == run_id).sum())


def test_changing_only_the_sampling_reuses_the_committed_tree(spark, tmp_path):
    root = str(tmp_path / "lake")
    first = run(load_plan(data=config(root, 200)), spark=spark)
    assert first.reused == {} and rows(root, "assignments", first.run_id) > 0

    second = run(load_plan(data=config(root, 300)), spark=spark)
    assert second.run_id != first.run_id
    assert second.reused == {"dedup": first.run_id, "cluster": first.run_id}
    assert rows(root, "assignments", second.run_id) == 0 and rows(root, "duplicates", second.run_id) == 0  # nothing recomputed
    curated = DeltaTable(os.path.join(root, "curated")).to_pandas()
    mine = curated[curated["run_id"] == second.run_id]
    assert len(mine) == 300 and set(mine["tree_run_id"]) == {first.run_id}
    assert second.stages["sample"]["tree_run_id"] == first.run_id
    assert second.report["deduplicated"]["n"] == first.report["deduplicated"]["n"]  # the dedup hand-on reads run 1's rows
    # the curated rows' paths point into the reused tree
    assign = DeltaTable(os.path.join(root, "assignments")).to_pandas().set_index("id")
    paths = assign[assign["run_id"] == first.run_id]["path"]
    assert all(list(paths[i]) == list(p) for i, p in zip(mine["id"], mine["path"]))

    again = run(load_plan(data=config(root, 300)), spark=spark)  # a rerun: everything committed, the reuse remembered
    assert again.skipped == ["dedup", "cluster", "sample", "report"] and again.reused == second.reused
    runs = DeltaTable(os.path.join(root, "runs")).to_pandas()
    assert (runs["run_id"] == second.run_id).sum() == 4  # report skipped too: no duplicate runs rows

    other = run(load_plan(data=config(root, 300, n_iter=4)), spark=spark)  # clustering changed: the tree is computed
    assert other.reused == {"dedup": first.run_id} and rows(root, "assignments", other.run_id) > 0
