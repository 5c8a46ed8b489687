"""A changed input is never served from a committed stage: fingerprints, pinned reads, staging keys."""

import logging
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from lakecurate import HierarchicalKMeans
from lakecurate.config import InputConfig, LakeConfig
from lakecurate.inputs import fingerprint_run_input, read_run_input
from lakecurate.lake import Lake
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import embeddings_table, save_npy

pytestmark = pytest.mark.spark


def small_config(input_cfg, lake_root, **top):
    return load_plan(data={
        "name": "in", "lake": {"root": lake_root}, "input": input_cfg,
        "clustering": {"n_clusters": [6, 2], "n_iter": 3, "n_resampling_steps": 0, "seed": 1},
        "sampling": {"target_size": 30}, "spark": {"master": "local[2]", "partitions": 2}, **top,
    })


def sizes(result, level=1):
    t = DeltaTable(result.tables["clusters"]).to_pandas()
    t = t[(t.run_id == result.run_id) & (t.level == level)].sort_values("cluster_id")
    return t["size"].to_numpy()


def test_two_npy_files_with_the_same_size_and_mtime_are_two_inputs(spark, tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(120, 4)).astype(np.float32)
    b = np.concatenate([rng.normal(size=(60, 4)), rng.normal(loc=8, size=(60, 4))]).astype(np.float32)
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    pa_ = save_npy(tmp_path / "a", a, "emb.npy")
    pb = save_npy(tmp_path / "b", b, "emb.npy")
    os.utime(pb, ns=(os.stat(pa_).st_atime_ns, os.stat(pa_).st_mtime_ns))
    assert os.stat(pa_).st_size == os.stat(pb).st_size and os.stat(pa_).st_mtime == os.stat(pb).st_mtime
    lake = str(tmp_path / "lake")
    first = run(small_config({"format": "npy", "path": pa_}, lake), spark=spark)
    second = run(small_config({"format": "npy", "path": pb}, lake), spark=spark)
    assert second.run_id != first.run_id and second.skipped == []
    pure = HierarchicalKMeans([6, 2], n_iter=3, n_resampling_steps=0, seed=1).fit(b)
    assert np.array_equal(sizes(second), pure.levels_[0].sizes)  # b's data, not a's staged copy


def test_a_grown_parquet_folder_is_a_new_run_and_its_new_rows_are_seen(spark, tmp_path, caplog):
    x = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    folder = tmp_path / "emb"
    folder.mkdir()
    pq.write_table(embeddings_table(x[:150]), folder / "part-0.parquet")
    lake = str(tmp_path / "lake")
    cfg = {"format": "parquet", "path": str(folder)}
    first = run(small_config(cfg, lake), spark=spark)
    assert run(small_config(cfg, lake), spark=spark).skipped == ["cluster", "sample"]  # unchanged: resumed
    pq.write_table(embeddings_table(x[150:], ids=np.arange(150, 200)), folder / "part-1.parquet")
    with caplog.at_level(logging.INFO, logger="lakecurate.pipeline"):
        grown = run(small_config(cfg, lake), spark=spark)
    assert grown.run_id != first.run_id and grown.skipped == []
    assert sizes(grown).sum() == 200
    assert any("a changed input is a new run" in r.getMessage() for r in caplog.records)
    runs = DeltaTable(grown.tables["runs"]).to_pandas()
    recorded = runs[runs.run_id == grown.run_id]["metrics"].iloc[0]
    assert '"files": 2' in recorded and "listing_sha256" in recorded


def test_a_changed_delta_input_under_a_fixed_run_id_reruns_the_stages(spark, tmp_path, caplog):
    x = np.random.default_rng(2).normal(size=(160, 4)).astype(np.float32)
    table = str(tmp_path / "emb_delta")
    write_deltalake(table, embeddings_table(x[:100]))
    lake = str(tmp_path / "lake")
    cfg = {"format": "delta", "path": table}
    first = run(small_config(cfg, lake, run_id="nightly"), spark=spark)
    write_deltalake(table, embeddings_table(x[100:], ids=np.arange(100, 160)), mode="append")
    with caplog.at_level(logging.INFO, logger="lakecurate.runlog"):
        again = run(small_config(cfg, lake, run_id="nightly"), spark=spark)
    assert first.run_id == again.run_id == "nightly" and again.skipped == []
    assert any("committed for another config or input" in r.getMessage() for r in caplog.records)
    assert sizes(again).sum() == 160
    assert len(DeltaTable(again.tables["assignments"]).to_pandas().query("run_id == 'nightly'")) == 160  # replaced, not added


def test_reads_are_pinned_to_the_fingerprinted_snapshot(spark, tmp_path):
    x = np.random.default_rng(3).normal(size=(50, 3)).astype(np.float32)
    table = str(tmp_path / "t")
    write_deltalake(table, embeddings_table(x[:30]))
    folder = tmp_path / "p"
    folder.mkdir()
    pq.write_table(embeddings_table(x[:30]), folder / "a.parquet")
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    for cfg in (InputConfig(format="delta", path=table), InputConfig(format="parquet", path=str(folder))):
        fp = fingerprint_run_input(lake, cfg)
        if cfg.format == "delta":
            write_deltalake(table, embeddings_table(x[30:], ids=np.arange(30, 50)), mode="append")
        else:
            pq.write_table(embeddings_table(x[30:], ids=np.arange(30, 50)), folder / "b.parquet")
        assert read_run_input(lake, cfg, fp).count() == 30  # what was fingerprinted, not what came since
        assert read_run_input(lake, cfg, fingerprint_run_input(lake, cfg)).count() == 50
