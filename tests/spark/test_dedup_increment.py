"""Incremental de-duplication (``dedup.mode: incremental``) in a nightly run: new rows against the
tree's kept rows and each other, equal to the pure ``find_increment_duplicates``; old kept rows
all stay, and rows the pool lost as duplicates never come back as new."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lakecurate.core.dedup import find_increment_duplicates, increment_n_clusters
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.errors import ConfigError
from lakecurate.pipeline import run
from lakecurate.plan import load_plan
from tests.builders import embeddings_table

pytestmark = pytest.mark.spark

N_OLD, N_COPIES, NEW, D = 1500, 60, 240, 16
OLD_ID = 100_000  # old rows' ids; the new rows' ids are 0..NEW-1 (the pure API's row keys)
DEDUP = {"eps": 0.02, "n_neighbor_clusters": 1, "n_iter": 5}


def config(root, inputs, stages, **dedup) -> dict:
    return {
        "name": "nightly", "stages": list(stages), "lake": {"root": str(root)},
        "input": {"format": "parquet", "path": str(inputs)},
        "clustering": {"n_clusters": [30, 4], "n_resampling_steps": 1, "resample_size": [1, 2], "n_iter": 4},
        "dedup": {**DEDUP, **dedup}, "sampling": {"target_size": 400}, "spark": {"partitions": 2},
    }


def rows_of(root, name, run_id=None):
    df = DeltaTable(os.path.join(str(root), name)).to_pandas()
    return df if run_id is None else df[df["run_id"] == run_id]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("dedup_increment")
    rng = np.random.default_rng(4)
    x = long_tailed_pool(N_OLD + NEW, D, 12, alpha=0.8, spread=0.5, seed=8).x
    old = np.concatenate([x[:N_OLD], x[:N_COPIES] + 1e-3 * rng.standard_normal((N_COPIES, D))]).astype(np.float32)
    old_ids = OLD_ID + np.arange(old.shape[0], dtype=np.int64)
    new = x[N_OLD:].copy()
    new[:30] = x[N_COPIES:N_COPIES + 30] + 1e-3 * rng.standard_normal((30, D))  # copies of kept old rows
    new[30:50] = new[100:120] + 1e-3  # copies among the new rows
    new[50] = new[0] + 1e-3  # a copy of a copy of an old row
    new = new.astype(np.float32)
    first, grown = base / "first", base / "grown"
    for d in (first, grown):
        d.mkdir()
        pq.write_table(embeddings_table(old, ids=old_ids), d / "part-0.parquet")
    pq.write_table(embeddings_table(new, ids=np.arange(NEW, dtype=np.int64)), grown / "part-1.parquet")
    root = base / "lake"
    fit = run(load_plan(data=config(root, first, ("dedup", "cluster", "sample"))), spark=spark)
    tree_ids = np.sort(rows_of(root, "assignments", fit.run_id)["id"].to_numpy())
    nightly = run(load_plan(data=config(root, grown, ("dedup", "assign", "sample"), mode="incremental")), spark=spark)
    return {"root": root, "tree": fit.run_id, "run": nightly, "old": old, "old_ids": old_ids, "new": new, "tree_ids": tree_ids}


def test_the_increment_equals_the_pure_api(lake):
    m = lake["run"].stages["dedup"]
    assert m["tree_run_id"] == lake["tree"] and m["new_rows"] == NEW and m["old_rows"] == lake["tree_ids"].size
    in_tree = np.isin(lake["old_ids"], lake["tree_ids"])
    old_x, old_keys = lake["old"][in_tree], lake["old_ids"][in_tree]
    assert m["n_clusters"] == increment_n_clusters(NEW, old_keys.size, None, DEDUP["n_neighbor_clusters"])
    want = find_increment_duplicates(old_x, lake["new"], eps=DEDUP["eps"], old_rows=old_keys,
                                     n_neighbor_clusters=DEDUP["n_neighbor_clusters"], n_iter=DEDUP["n_iter"], seed=0)
    got = rows_of(lake["root"], "duplicates", lake["run"].run_id).sort_values("id")
    gone = np.flatnonzero((want.old_row >= 0) | (want.within.kept_row != np.arange(NEW)))
    np.testing.assert_array_equal(got["id"].to_numpy(), gone)
    kept_id = np.where(want.old_row >= 0, want.old_row, want.within.kept_row)[gone]
    np.testing.assert_array_equal(got["kept_id"].to_numpy(), kept_id)
    np.testing.assert_array_equal(got["similarity"].to_numpy(), want.similarity[gone])  # bit for bit
    assert m["removed"] == gone.size and m["removed_as_old"] == int((want.old_row >= 0).sum()) >= 31
    assert m["kept"] == NEW - gone.size == want.keep.size


def test_old_kept_rows_stand_for_their_copies_and_all_stay(lake):
    root, tree = lake["root"], lake["tree"]
    dups = rows_of(root, "duplicates", lake["run"].run_id).set_index("id")
    # each copy of a kept old row, and the copy of such a copy, points at a kept old row
    for i in [*range(30), 50]:
        assert i in dups.index and dups.loc[i, "kept_id"] in set(lake["tree_ids"]), i
    # of each pair of copies among the new rows at most one stays
    assert all(30 + j in dups.index or 100 + j in dups.index for j in range(20))
    after = set(rows_of(root, "assignments", tree)["id"])
    assert set(lake["tree_ids"]) <= after  # no old kept row removed
    assert after - set(lake["tree_ids"]) == set(range(NEW)) - set(dups.index)  # the kept new rows, no others
    # the rows the fit removed as duplicates are in the input but never came back as new
    fit_dups = set(rows_of(root, "duplicates", tree)["id"])
    assert len(fit_dups) >= N_COPIES // 2 and not fit_dups & after and not fit_dups & set(dups.index)


def test_a_later_increment_finds_nothing_new(spark, lake):
    """The same grown input under another run id: its rows are assigned or in the lineage's duplicates."""
    root = lake["root"]
    cfg = config(root, lake["root"].parent / "grown", ("dedup", "assign"), mode="incremental")
    cfg["run_id"] = "nightly-again"
    res = run(load_plan(data=cfg), spark=spark)
    assert res.stages["dedup"]["new_rows"] == 0 and res.stages["assign"]["new_rows"] == 0
    cfg["stages"], cfg["run_id"] = ["assign"], "assign-only"  # no dedup in the run: the earlier duplicates stay out
    assert run(load_plan(data=cfg), spark=spark).stages["assign"]["new_rows"] == 0


@pytest.mark.parametrize("stages,mode,says", [
    (("dedup", "assign"), "full", "set dedup.mode: incremental"),
    (("dedup", "cluster"), "incremental", "do not assign"),
])
def test_dedup_mode_must_fit_the_stages(tmp_path, stages, mode, says):
    with pytest.raises(ConfigError, match=says):
        load_plan(data=config(tmp_path / "lake", tmp_path, stages, mode=mode))
