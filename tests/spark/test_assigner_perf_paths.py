"""Every Spark assignment variant (partials, sums, threads) and two-step levels agree with in-process."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from lakecurate.config import LakeConfig
from lakecurate.core.in_process import NumpyAssigner
from lakecurate.core.hierarchy import LevelParams, fit_hierarchy
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.errors import ConfigError
from lakecurate.lake import Lake
from lakecurate.spark.assigner import AssignTuning, SparkAssigner
from lakecurate.spark.block_files import block_folder, open_block_files, write_block_files
from lakecurate.spark.blocks import EmbeddingBlocks

from builders import embeddings_table

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def pool_df(spark):
    x = long_tailed_pool(4000, 12, 30, seed=3).x
    table = embeddings_table(x)
    return x, spark.createDataFrame(table.to_pandas())


@pytest.mark.parametrize(
    "tuning",
    [
        dict(partials="dense"),
        dict(partials="sparse", sums="add_at"),
        dict(partials="shuffle"),
        dict(partials="auto", shuffle_min_bytes=1, faiss_threads=-1),
    ],
)
def test_variants_give_the_in_process_hierarchy(spark, pool_df, tuning):
    x, df = pool_df
    params = [LevelParams(40, n_iter=6), LevelParams(8, resample_size=3, n_resampling_steps=1, n_iter=6)]
    ref = fit_hierarchy(NumpyAssigner(x), params, 11)
    blocks = EmbeddingBlocks.from_dataframe(spark, df, id_column="id", embedding_column="embedding", partitions=3)
    tuning = dict(tuning)
    blocks.faiss_threads = tuning.pop("faiss_threads", 0)
    try:
        got = fit_hierarchy(SparkAssigner(blocks, AssignTuning(**tuning)), params, 11)
    finally:
        blocks.release()
    for a, b in zip(ref, got):
        assert np.array_equal(a.centroids, b.centroids)
        assert np.array_equal(a.sizes, b.sizes)
        assert a.objective == b.objective


PARAMS = [LevelParams(40, n_iter=6), LevelParams(8, resample_size=3, n_resampling_steps=1, n_iter=6)]


def _assert_same_tree(ref, got):
    for a, b in zip(ref, got):
        assert np.array_equal(a.centroids, b.centroids)
        assert np.array_equal(a.sizes, b.sizes)
        assert a.objective == b.objective


@pytest.mark.parametrize("cache", ["local_files", "spark", "lake"])
def test_every_block_cache_gives_the_in_process_hierarchy(spark, pool_df, cache, tmp_path):
    x, df = pool_df
    ref = fit_hierarchy(NumpyAssigner(x), PARAMS, 11)
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    blocks = EmbeddingBlocks.from_dataframe(spark, df, id_column="id", embedding_column="embedding", partitions=3, cache=cache, lake=lake)
    try:
        assert blocks.cache == cache and (blocks.cache_id is not None) == (cache == "local_files")
        scratch = glob.glob(str(tmp_path / "lake" / "_staging" / "scratch" / "*-blocks"))
        assert len(scratch) == (cache == "lake")
        if cache == "local_files":  # local master: the executor's work dir is this machine's
            assert len(glob.glob(os.path.join(block_folder(blocks.cache_id), "*-vectors.npy"))) >= 3
        got = fit_hierarchy(SparkAssigner(blocks), PARAMS, 11)
        assert blocks.fallback_partitions == 0
    finally:
        blocks.release()
    _assert_same_tree(ref, got)
    assert glob.glob(str(tmp_path / "lake" / "_staging" / "scratch" / "*")) == []  # released: nothing left behind


def test_a_payload_too_large_for_a_closure_travels_through_the_lake(spark, pool_df, tmp_path, monkeypatch):
    from lakecurate.spark import tasks

    x, df = pool_df
    ref = fit_hierarchy(NumpyAssigner(x), PARAMS, 11)
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    monkeypatch.setattr(tasks, "CLOSURE_MAX_BYTES", 1024)  # every centroid payload is "large"
    seen = []
    real_put = tasks.PayloadFiles.put
    monkeypatch.setattr(tasks.PayloadFiles, "put", lambda self, data: seen.append(len(data)) or real_put(self, data))
    blocks = EmbeddingBlocks.from_dataframe(spark, df, id_column="id", embedding_column="embedding", partitions=3, lake=lake)
    try:
        got = fit_hierarchy(SparkAssigner(blocks), PARAMS, 11)
        assert seen and min(seen) > 1024
        payloads = glob.glob(str(tmp_path / "lake" / "_staging" / "scratch" / "*-payloads" / "*.pkl"))
        assert payloads == []  # each pass's payload is removed when the pass is done
    finally:
        blocks.release()
    _assert_same_tree(ref, got)
    assert glob.glob(str(tmp_path / "lake" / "_staging" / "scratch" / "*")) == []
    with pytest.raises(ConfigError, match="travels in a task's closure, and no lake folder"):
        tasks.ship_to_tasks(np.zeros(4096, np.float32))


def test_missing_block_files_rerun_those_partitions_on_streamed_blocks(spark, pool_df):
    x, df = pool_df
    ref = fit_hierarchy(NumpyAssigner(x), PARAMS, 11)
    blocks = EmbeddingBlocks.from_dataframe(spark, df, id_column="id", embedding_column="embedding", partitions=3)
    folder = block_folder(blocks.cache_id)
    try:
        lost = glob.glob(os.path.join(folder, "p00001-*"))
        assert lost, os.listdir(folder)
        for f in lost:  # as if partition 1's executor had been replaced
            os.remove(f)
        got = fit_hierarchy(SparkAssigner(blocks), PARAMS, 11)
        assert blocks.fallback_partitions == blocks.passes > 0  # every pass re-ran partition 1, and only it
    finally:
        blocks.release()
    _assert_same_tree(ref, got)
    assert not os.path.exists(folder)  # release deletes the block files


TWO_STEP = [LevelParams(60, resample_size=4, n_resampling_steps=2, n_iter=5, n_coarse=5),
            LevelParams(12, resample_size=2, n_resampling_steps=1, n_iter=5, n_coarse=3), LevelParams(3, n_iter=5)]


def test_two_step_levels_match_in_process(spark, pool_df):
    """Two steps at level 1 (on the executors) and level 2 (its inputs on the executors too), with
    resampling inside each coarse cluster: the same tree as in-process, and the assignments rows
    route every row where the in-process labels put it."""
    from lakecurate.spark.assignments import assignment_rows

    x, df = pool_df
    ref = fit_hierarchy(NumpyAssigner(x), TWO_STEP, 5)
    blocks = EmbeddingBlocks.from_dataframe(spark, df, id_column="id", embedding_column="embedding", partitions=3)
    upper = []

    def on_executors(c):
        upper.append(EmbeddingBlocks.from_numpy(spark, c, partitions=2, block_rows=7))
        return SparkAssigner(upper[-1])

    try:
        got = fit_hierarchy(SparkAssigner(blocks), TWO_STEP, 5, make_assigner=on_executors)
        _assert_same_tree(ref, got)
        for a, b in zip(ref[:2], got[:2]):
            assert np.array_equal(a.routing.coarse, b.routing.coarse) and np.array_equal(a.routing.offsets, b.routing.offsets)
            assert np.array_equal(a.counts, b.counts) and np.array_equal(a.cluster_inertia, b.cluster_inertia)
        assert np.array_equal(ref[1].labels, got[1].labels) and np.array_equal(ref[1].distances, got[1].distances)
        parents = [got[1].labels, got[2].labels]
        rows = assignment_rows(blocks, got[0].index, parents, id_column="id").toPandas().sort_values("row_key")
    finally:
        for b in [blocks, *upper]:
            b.release()
    assert got[0].n_clusters == 60 and got[1].n_clusters == 12 and got[0].routing.n_groups == 5
    assert np.array_equal(rows["cluster"].to_numpy(), ref[0].labels)
    assert np.array_equal(rows["distance"].to_numpy(), ref[0].distances)
    assert np.array_equal(np.stack(rows["path"].to_numpy())[:, 2], ref[2].labels[ref[1].labels[ref[0].labels]])


def test_block_files_that_cannot_be_written_do_not_fail_the_task(spark, tmp_path):
    cache_id = "unwritable-test"
    folder = block_folder(cache_id)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder, "w") as f:  # a file where the folder should go: every write fails
        f.write("x")
    try:
        keys = np.arange(5, dtype=np.int64)
        write_block_files(cache_id, 0, 0, keys, np.ones((5, 3), np.float32))  # logs, does not raise
        assert open_block_files(cache_id, [(0, 0, 5)]) is None  # so the pass streams this partition
    finally:
        os.remove(folder)
    # and a folder that works round-trips the block
    write_block_files("writable-test", 2, 7, keys, np.arange(15, dtype=np.float32).reshape(5, 3))
    got = open_block_files("writable-test", [(2, 7, 5), (2, 8, 0)])
    assert len(got) == 1 and np.array_equal(got[0][2], keys) and got[0][3][4, 2] == 14.0
    import shutil

    shutil.rmtree(block_folder("writable-test"))


def test_group_bounds_on_spark_give_the_in_process_fit_even_when_lost_or_corrupt(spark, pool_df, monkeypatch):
    """Bounds kept beside the block files between passes: the same centroids as the full search
    in-process, and a block whose bounds file went missing or is garbage just computes everything."""
    from lakecurate.core import pruning
    from lakecurate.core.kmeans import init_centroids, lloyd

    monkeypatch.setattr(pruning, "MIN_K", 16)  # decided on the driver: the executors follow the step
    monkeypatch.setattr(pruning, "CENTROIDS_PER_GROUP", 8)
    x, df = pool_df
    k, iters = 48, 8
    c0 = init_centroids(NumpyAssigner(x), k, np.random.default_rng(2))
    ref = lloyd(NumpyAssigner(x), c0, iters, np.random.default_rng(3))
    blocks = EmbeddingBlocks.from_dataframe(spark, df, id_column="id", embedding_column="embedding", partitions=3)
    folder = block_folder(blocks.cache_id)
    seen = []

    def meddle(stats):
        files = sorted(glob.glob(os.path.join(folder, "*-bounds.npz")))
        seen.append(len(files))
        if stats.iteration == 2:
            os.remove(files[0])
        if stats.iteration == 4:
            with open(files[-1], "wb") as f:
                f.write(b"not an npz")
        if stats.iteration == 5:  # a damaged zip (np.load raises BadZipFile)
            with open(files[0], "r+b") as f:
                f.truncate(64)

    try:
        got = lloyd(SparkAssigner(blocks), c0, iters, np.random.default_rng(3), on_iteration=meddle)
        assert blocks.fallback_partitions == 0
    finally:
        blocks.release()
    assert min(seen) >= 3  # every block kept its bounds after every pass
    assert np.array_equal(got.centroids, ref.centroids)
    assert np.array_equal(got.counts, ref.counts)
    assert got.objective == ref.objective
    assert [it.objective for it in got.iterations] == [it.objective for it in ref.iterations]
