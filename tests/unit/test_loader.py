"""lakecurate.torch: the training loaders over a shards table (written here with delta-rs, no Spark).

The table has the shards stage's schema and layout (partitioned by run_id and shard, small row
groups so a shard is many units); the clusters come from the pure hierarchical k-means of a
generated long-tailed pool.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from deltalake import WriterProperties, write_deltalake

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from lakecurate import HierarchicalKMeans  # noqa: E402
from lakecurate.core.batching import split_rows, window_batches  # noqa: E402
from lakecurate.core.synthetic import long_tailed_pool  # noqa: E402
from lakecurate.errors import InputDataError, TableError  # noqa: E402
from lakecurate.torch import ClusterBatchSampler, ClusterBatches, ShardTable, to_tensors  # noqa: E402
from lakecurate.torch import table as table_module  # noqa: E402

N, D, RUN = 3000, 32, "train-0123456789"


def shards_arrow(x, path, level, run_id, ids=None):
    n = x.shape[0]
    ids = np.arange(n, dtype=np.int64) if ids is None else ids
    return pa.table({
        "id": ids, "shard": path[:, level - 1].astype(np.int32), "level": np.full(n, level, np.int32),
        "cluster": path[:, 0].astype(np.int32), "path": pa.array(list(path.astype(np.int32))),
        "copy": np.zeros(n, np.int32), "tree_run_id": [run_id] * n,
        "embedding": pa.array(list(x.astype(np.float32)), pa.list_(pa.float32())), "run_id": [run_id] * n,
    })


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    base = tmp_path_factory.mktemp("loader")
    data = long_tailed_pool(N, D, 12, alpha=1.0, spread=0.25, seed=3)
    tree = HierarchicalKMeans([60, 6], n_resampling_steps=2, resample_size=[1, 2], n_iter=10, seed=0).fit(data.x)
    path = tree.leaf_path()
    shards = os.path.join(base, "shards")
    write_deltalake(shards, shards_arrow(data.x, path, 2, RUN), partition_by=["run_id", "shard"],
                    writer_properties=WriterProperties(max_row_group_size=97))
    curated = os.path.join(base, "curated")
    t = pa.table({"id": np.arange(N, dtype=np.int64), "cluster": path[:, 0].astype(np.int32),
                  "path": pa.array(list(path.astype(np.int32))), "embedding": pa.array(list(data.x), pa.list_(pa.float32())),
                  "run_id": [RUN] * N})
    write_deltalake(curated, t, partition_by=["run_id"], writer_properties=WriterProperties(max_row_group_size=250))
    return {"base": base, "x": data.x, "path": path, "shards": shards, "curated": curated}


def ids_of(batches):
    return np.concatenate([b.column("id").to_numpy() for b in batches]) if batches else np.zeros(0, np.int64)


def loader(pool, **kw):
    kw.setdefault("columns", ["id", "embedding"])
    return ClusterBatches(pool["shards"], **kw)


# ---------------------------------------------------------------- the pure parts


def test_split_rows_is_disjoint_covering_and_even():
    sizes = [5, 0, 17, 3, 40, 1]
    order = [4, 2, 0, 5, 3, 1]
    for n_slots in (1, 2, 3, 7):
        seen = []
        counts = []
        for s in range(n_slots):
            share = split_rows(sizes, order, n_slots, s)
            rows = [(u, r) for u, lo, hi in share for r in range(lo, hi)]
            seen += rows
            counts.append(len(rows))
        assert sorted(seen) == sorted((u, r) for u, n in enumerate(sizes) for r in range(n))
        assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("mode", ["same_cluster", "balanced", "mixed"])
def test_window_batches_cover_the_window_once(mode):
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 9, 1000)
    order, bounds, rest = window_batches(clusters, mode, 32, np.random.default_rng(1), final=False)
    assert sorted(np.concatenate([order, rest]).tolist()) == list(range(1000))
    assert np.all(np.diff(bounds) == 32)  # held back: every part-filled batch
    order, bounds, rest = window_batches(clusters, mode, 32, np.random.default_rng(1), final=True)
    assert rest.size == 0 and sorted(order.tolist()) == list(range(1000))
    if mode == "same_cluster":
        assert all(np.unique(clusters[order[a:b]]).size == 1 for a, b in zip(bounds[:-1], bounds[1:]))


# ---------------------------------------------------------------- the modes


def test_same_cluster_batches_hold_one_cluster_each(pool):
    ds = loader(pool, mode="same_cluster", batch_size=40, buffer_rows=600, seed=5)
    batches = list(ds)
    assert ids_of(batches).size == N and np.unique(ids_of(batches)).size == N
    shard_of = pool["path"][:, 1]
    for b in batches:
        shards = np.unique(b.column("shard").to_numpy())
        assert shards.size == 1
        assert np.all(shard_of[b.column("id").to_numpy()] == shards[0])  # the shard column is the row's cluster
    assert np.mean([b.num_rows == 40 for b in batches]) > 0.8  # most batches full
    assert len({int(b.column("shard")[0].as_py()) for b in batches[:12]}) > 2  # clusters interleave


def test_balanced_batches_draw_evenly(pool):
    ds = loader(pool, mode="balanced", batch_size=36, buffer_rows=N, seed=1)  # one window: every cluster in it
    batches = list(ds)
    sizes = np.bincount(pool["path"][:, 1])
    small = int(sizes.min())
    assert ids_of(batches).size == N
    for b in batches[: small * 6 // 36]:  # while every cluster still has rows: 36 / 6 = 6 rows each
        assert np.all(np.bincount(b.column("shard").to_numpy(), minlength=6) == 6)


def test_mixed_is_a_shuffle_and_same_cluster_negatives_are_harder(pool):
    def mean_cos(mode):
        x = pool["x"] / np.linalg.norm(pool["x"], axis=1, keepdims=True)
        out = []
        for b in loader(pool, mode=mode, batch_size=50, buffer_rows=1000, seed=2):
            v = x[b.column("id").to_numpy()]
            s = v @ v.T
            out.append((s.sum() - np.trace(s)) / (len(v) * (len(v) - 1)))
        return float(np.mean(out))

    assert mean_cos("same_cluster") > mean_cos("mixed") + 0.1
    mixed = list(loader(pool, mode="mixed", batch_size=50, buffer_rows=1000, seed=2))
    assert np.mean([np.unique(b.column("shard").to_numpy()).size for b in mixed]) > 4  # batches mix the 6 clusters


def test_one_shard_reads_only_its_files(pool, monkeypatch, tmp_path):
    opened = []
    real = table_module.ShardTable._open
    monkeypatch.setattr(table_module.ShardTable, "_open", lambda self, uri: opened.append(uri) or real(self, uri))
    ds = loader(pool, mode="same_cluster", one_shard=3, batch_size=16)
    got = ids_of(list(ds))
    want = np.flatnonzero(pool["path"][:, 1] == 3)
    np.testing.assert_array_equal(np.sort(got), want)
    assert opened and all("/shard=3/" in u for u in opened)
    # with every other shard's files gone, shard 3 still reads in full
    copy = tmp_path / "shards"
    shutil.copytree(pool["shards"], copy)
    for root, _, files in os.walk(copy):
        if "shard=" in root and "shard=3" not in root:
            for f in files:
                os.remove(os.path.join(root, f))
    np.testing.assert_array_equal(np.sort(ids_of(list(ClusterBatches(str(copy), one_shard=3, columns=["id"])))), want)


def test_curated_table_at_a_level(pool):
    ds = ClusterBatches(pool["curated"], mode="same_cluster", level=2, batch_size=30, columns=["id"])
    batches = list(ds)
    assert ids_of(batches).size == N
    for b in batches:
        assert np.unique(pool["path"][b.column("id").to_numpy(), 1]).size == 1
    one = ClusterBatches(pool["curated"], level=2, one_shard=4, columns=["id"])
    np.testing.assert_array_equal(np.sort(ids_of(list(one))), np.flatnonzero(pool["path"][:, 1] == 4))


# ---------------------------------------------------------------- epochs, ranks, workers


def test_every_row_once_across_two_ranks_and_two_workers(pool):
    for mode in ("same_cluster", "mixed"):
        per_slot = []
        for rank in range(2):
            ds = loader(pool, mode=mode, batch_size=32, buffer_rows=500, rank=rank, world_size=2, columns=["id"])
            ds.set_epoch(1)
            got = [b.column("id").to_numpy() for b in DataLoader(ds, batch_size=None, num_workers=2)]
            per_slot.append(np.concatenate(got))
        assert np.intersect1d(per_slot[0], per_slot[1]).size == 0
        both = np.concatenate(per_slot)
        assert both.size == N and np.unique(both).size == N
        assert abs(per_slot[0].size - per_slot[1].size) <= 1


def test_same_order_for_the_same_seed_and_epoch(pool):
    def order(epoch, seed=0, mode="mixed", threads=2):
        ds = loader(pool, mode=mode, batch_size=64, buffer_rows=700, seed=seed, columns=["id"], read_threads=threads)
        ds.set_epoch(epoch)
        return ids_of(list(ds))

    for mode in ("mixed", "same_cluster", "balanced"):
        a = order(0, mode=mode)
        np.testing.assert_array_equal(a, order(0, mode=mode))
        np.testing.assert_array_equal(a, order(0, mode=mode, threads=0))  # the read threads' timing does not matter
        assert not np.array_equal(a, order(1, mode=mode))
        assert not np.array_equal(a, order(0, seed=9, mode=mode))
        assert sorted(a.tolist()) == list(range(N))


def test_the_window_is_bounded_by_buffer_rows(pool, monkeypatch):
    sizes = []
    real = ClusterBatches._window
    monkeypatch.setattr(ClusterBatches, "_window", lambda self, held, rng, final: sizes.append(sum(b.num_rows for b, _ in held))
                        or real(self, held, rng, final=final))
    list(loader(pool, mode="same_cluster", batch_size=20, buffer_rows=300, slice_rows=64, columns=["id"]))
    assert len(sizes) > 5
    # the window: buffer_rows, one slice over, and the carried part-filled batches (at most half a buffer)
    assert max(sizes) <= 300 + 64 + 150


def test_cluster_weights(pool):
    sizes = np.bincount(pool["path"][:, 1])
    ds = loader(pool, mode="mixed", columns=["id"], cluster_weights={0: 0, 1: 2, 2: 0.5})
    got = ids_of(list(ds))
    shard = pool["path"][got, 1]
    assert not np.any(shard == 0)
    assert np.sum(shard == 1) == 2 * sizes[1]  # twice, each row twice
    assert np.all(np.bincount(got[shard == 1]) [np.flatnonzero(pool["path"][:, 1] == 1)] == 2)
    assert abs(np.sum(shard == 2) - sizes[2] / 2) < 4 * np.sqrt(sizes[2])
    assert np.sum(shard == 3) == sizes[3]


def test_batch_sampler(pool):
    clusters = ShardTable(pool["shards"]).clusters()
    rows = ShardTable(pool["shards"], columns=["id"]).read_all()
    assert rows.num_rows == clusters.size == N
    seen = []
    for rank in range(2):
        sampler = ClusterBatchSampler(clusters, 25, mode="same_cluster", seed=4, rank=rank, world_size=2)
        sampler.set_epoch(2)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(np.unique(clusters[b]).size == 1 for b in batches)
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(N))
    a = list(ClusterBatchSampler(clusters, 25, mode="mixed", seed=4))
    assert a == list(ClusterBatchSampler(clusters, 25, mode="mixed", seed=4))


def test_to_tensors(pool):
    b = next(iter(loader(pool, batch_size=8, columns=["id", "embedding", "tree_run_id"])))
    t = to_tensors(b)
    assert t["embedding"].shape == (8, D) and t["embedding"].dtype == torch.float32
    np.testing.assert_array_equal(t["embedding"].numpy(), pool["x"][t["id"].numpy()])
    assert t["tree_run_id"] == [RUN] * 8 and t["shard"].shape == (8,)


# ---------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error(pool, tmp_path):
    with pytest.raises(TableError, match="at level 2, not level 1"):
        loader(pool, level=1)
    with pytest.raises(TableError, match="has 2 level"):
        ClusterBatches(pool["curated"], level=3)
    with pytest.raises(InputDataError, match=r"\['caption'\] are not in"):
        loader(pool, columns=["id", "caption"])
    with pytest.raises(TableError, match="has no rows of run 'other-run'"):
        loader(pool, run_id="other-run")
    with pytest.raises(TableError, match="shard 17 is not in"):
        loader(pool, one_shard=17)
    with pytest.raises(ValueError, match="mode='hard' is not one of"):
        loader(pool, mode="hard")
    with pytest.raises(ValueError, match="rank=2 must be below world_size=2"):
        loader(pool, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"cluster_weights\[1\]=-1.0 must be"):
        loader(pool, cluster_weights={1: -1})
    with pytest.raises(TableError, match="is not a Delta table"):
        ClusterBatches(str(tmp_path))
    two = tmp_path / "two"
    shutil.copytree(pool["shards"], two)
    write_deltalake(str(two), shards_arrow(pool["x"][:10], pool["path"][:10], 2, "another-run"), partition_by=["run_id", "shard"],
                    mode="append")
    with pytest.raises(TableError, match="holds the rows of 2 runs"):
        ClusterBatches(str(two))
    assert ClusterBatches(str(two), run_id="another-run", columns=["id"]).num_rows == 10
    plain = tmp_path / "plain"
    write_deltalake(str(plain), pa.table({"id": [1, 2], "run_id": ["a", "a"]}))
    with pytest.raises(TableError, match="neither a lakecurate shards table"):
        ClusterBatches(str(plain))
