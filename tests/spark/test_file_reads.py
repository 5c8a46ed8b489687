"""An input that is files is read by the tasks themselves with pyarrow (issue 32): the same rows,
checks and messages as the read through Spark, pinned to the fingerprinted listing, and the read
through Spark where an input needs it, saying so in the log."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakecurate.config import InputConfig, LakeConfig
from lakecurate.errors import InputDataError
from lakecurate.inputs import fingerprint_run_input, run_input_files
from lakecurate.lake import Lake
from lakecurate.pipeline import run
from lakecurate.plan import load_plan
from lakecurate.spark.blocks import EmbeddingBlocks
from builders import block_rows, embeddings_table

pytestmark = pytest.mark.spark


def both(spark, lake, folder, **kw):
    """The input at ``folder`` cached as blocks both ways: (by the tasks' own reads, through Spark)."""
    files, why = lake.input_files("parquet", ["id", "embedding"], path=str(folder))
    assert files is not None, why
    return (EmbeddingBlocks.from_files(spark, files, id_column="id", embedding_column="embedding", lake=lake, **kw),
            EmbeddingBlocks.from_dataframe(spark, spark.read.parquet(str(folder)), id_column="id", embedding_column="embedding",
                                           lake=lake, **kw))


def test_one_large_file_is_cut_into_row_groups_and_gives_the_rows_spark_reads(spark, tmp_path):
    x = np.random.default_rng(0).normal(size=(5000, 16)).astype(np.float32)
    path = tmp_path / "one.parquet"
    pq.write_table(embeddings_table(x), path, row_group_size=700)  # 8 row groups
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    files, _ = lake.input_files("parquet", ["id", "embedding"], path=str(path))
    assert len(files.pieces) == 1
    for cache in ("local_files", "spark", "lake"):
        by_files = EmbeddingBlocks.from_files(spark, files, id_column="id", embedding_column="embedding", partitions=4, cache=cache,
                                              lake=lake, block_rows=1000)
        try:
            assert by_files.num_partitions == 4  # the one file's row groups spread over every task
            keys, got = block_rows(by_files)
            assert keys.tolist() == list(range(5000)) and np.array_equal(got, x)
        finally:
            by_files.release()


def test_a_large_file_of_one_row_group_is_spread_over_every_task_after_the_read(spark, tmp_path, monkeypatch):
    """One row group cannot be cut: one task reads it, then its blocks go to every task (and their
    block files with them), so the passes still use every core; the rows are the file's."""
    import lakecurate.spark.blocks as blocks_module

    monkeypatch.setattr(blocks_module, "SPREAD_MIN_BYTES", 0)
    x = np.random.default_rng(5).normal(size=(3000, 8)).astype(np.float32)
    pq.write_table(embeddings_table(x), tmp_path / "one.parquet")  # one row group
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    files, _ = lake.input_files("parquet", ["id", "embedding"], path=str(tmp_path / "one.parquet"))
    for cache in ("local_files", "spark"):
        b = EmbeddingBlocks.from_files(spark, files, id_column="id", embedding_column="embedding", partitions=3, cache=cache,
                                       lake=lake, block_rows=500)
        try:
            assert b.num_partitions == 3
            parts = sorted({r["part"] for r in b.frame.select("part").collect()})
            assert parts == [0, 1, 2]
            keys, got = block_rows(b)
            assert keys.tolist() == list(range(3000)) and np.array_equal(got, x)
            assert b.fallback_partitions == 0  # each partition's block files were where it ran
        finally:
            b.release()


def test_bad_rows_and_duplicate_ids_are_refused_with_the_messages_of_the_read_through_spark(spark, tmp_path):
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    folder = tmp_path / "bad"
    folder.mkdir()
    emb = pa.array([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0, 3.0], None, [float("nan"), 1.0]], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array([1, None, 3, 4, 5], pa.int64()), "embedding": emb}), folder / "a.parquet")
    messages = []
    for how in ("files", "spark"):
        with pytest.raises(InputDataError) as err:
            b = both(spark, lake, folder, partitions=2)[0 if how == "files" else 1]
            b.release()
        messages.append(str(err.value).split("; examples")[0])
    assert messages[0] == messages[1]
    assert "1 row(s) with a null id; 1 row(s) with a null embedding; 1 row(s) whose embedding does not have 2 values" in messages[0]

    dups = tmp_path / "dups"
    dups.mkdir()
    pq.write_table(embeddings_table(np.eye(3, dtype=np.float32), ids=np.array([7, 8, 9])), dups / "a.parquet")
    pq.write_table(embeddings_table(np.eye(3, dtype=np.float32), ids=np.array([9, 10, 11])), dups / "b.parquet")
    files, _ = lake.input_files("parquet", ["id", "embedding"], path=str(dups))
    with pytest.raises(InputDataError, match=r"duplicate ids, e\.g\. 9 x2"):
        EmbeddingBlocks.from_files(spark, files, id_column="id", embedding_column="embedding", partitions=2, lake=lake)


def test_the_files_read_are_the_fingerprinted_listing(spark, tmp_path):
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    folder = tmp_path / "p"
    folder.mkdir()
    pq.write_table(embeddings_table(x[:30]), folder / "a.parquet")
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    cfg = InputConfig(format="parquet", path=str(folder))
    fp = fingerprint_run_input(lake, cfg)
    pq.write_table(embeddings_table(x[30:], ids=np.arange(30, 50)), folder / "b.parquet")
    pinned, _ = run_input_files(lake, cfg, fp)
    latest, _ = run_input_files(lake, cfg, fingerprint_run_input(lake, cfg))
    assert [p.uri.rsplit("/", 1)[-1] for p in pinned.pieces] == ["a.parquet"]
    assert [p.uri.rsplit("/", 1)[-1] for p in latest.pieces] == ["a.parquet", "b.parquet"]
    (folder / "a.parquet").unlink()  # a pinned file gone: read through Spark, which reports it
    gone, why = run_input_files(lake, cfg, fp)
    assert gone is None and "gone" in why


def test_an_increment_with_no_new_file_reads_no_row_of_a_folder_or_a_file(spark, tmp_path):
    """A nightly increment narrows the pinned listing to the new files; none new: no row read, the columns kept."""
    x = np.random.default_rng(2).normal(size=(20, 4)).astype(np.float32)
    folder = tmp_path / "p"
    folder.mkdir()
    pq.write_table(embeddings_table(x), folder / "a.parquet")
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    for path in (folder, folder / "a.parquet"):
        cfg = InputConfig(format="parquet", path=str(path))
        nothing = {**fingerprint_run_input(lake, cfg), "listing": [], "listing_stats": []}
        df = lake.read_source("parquet", path=str(path), snapshot=nothing)
        assert df.columns == ["id", "embedding"] and df.count() == 0, path
        files, why = run_input_files(lake, cfg, nothing)
        assert files is None and "no Parquet files" in why, path


def test_a_column_only_in_partition_folders_is_read_through_spark(spark, tmp_path):
    """A Parquet folder laid out as ``shard=N/`` whose rows take a column from the folder names:
    the files alone lack it, so Spark's reader (which discovers it) reads the input."""
    x = np.random.default_rng(4).normal(size=(40, 4)).astype(np.float32)
    for shard in (0, 1):
        (tmp_path / "p" / f"shard={shard}").mkdir(parents=True)
        pq.write_table(embeddings_table(x[shard * 20 : shard * 20 + 20], ids=np.arange(shard * 20, shard * 20 + 20)),
                       tmp_path / "p" / f"shard={shard}" / "a.parquet")
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    files, why = lake.input_files("parquet", ["id", "embedding", "shard"], path=str(tmp_path / "p"))
    assert files is None and "lacks a column" in why and "'shard'" in why
    files, _ = lake.input_files("parquet", ["id", "embedding"], path=str(tmp_path / "p"))
    assert len(files.pieces) == 2


def test_a_run_reading_files_equals_one_reading_through_spark_and_says_which_it_used(spark, tmp_path, caplog, monkeypatch):
    """dedup -> cluster -> sample on a .npy input: every stage reads the files itself (the cluster
    stage without the dedup stage's duplicates, filtered as read), and the tables equal, bit for
    bit, those of the same run with every read through Spark."""
    import lakecurate.inputs as inputs
    from digests import run_digests

    x = np.random.default_rng(2).normal(size=(300, 8)).astype(np.float32)
    x[250:270] = x[:20] + 1e-4  # 20 near-copies for the dedup stage to remove
    path = tmp_path / "e.npy"
    np.save(path, x)

    def config(root):
        return {"name": "reads", "run_id": "r", "stages": ["dedup", "cluster", "sample"], "lake": {"root": str(root)},
                "input": {"format": "npy", "path": str(path)}, "dedup": {"eps": 0.01},
                "clustering": {"n_clusters": [6, 2], "n_iter": 3, "n_resampling_steps": 1, "resample_size": [1, 2], "seed": 1},
                "sampling": {"target_size": 100}, "spark": {"partitions": 2}}

    with caplog.at_level(logging.INFO):
        res = run(load_plan(data=config(tmp_path / "files")), spark=spark)
    lines = [r.getMessage() for r in caplog.records]
    assert res.stages["dedup"]["removed"] == 20
    for stage in ("dedup", "cluster"):
        assert any(m.startswith(f"{stage} input ") and "read by the tasks with pyarrow" in m for m in lines), stage
    assert not any("read through Spark" in m for m in lines)
    caplog.clear()
    monkeypatch.setattr(inputs, "run_input_files", lambda *a, **k: (None, "the test says so"))
    with caplog.at_level(logging.INFO):
        run(load_plan(data=config(tmp_path / "spark")), spark=spark)
    assert sum("read through Spark: the test says so" in r.getMessage() for r in caplog.records) == 2
    assert run_digests(str(tmp_path / "files"), "r") == run_digests(str(tmp_path / "spark"), "r")
