"""Bad input to the Spark pipeline: a clear error naming the problem, and no output table written."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lakecurate.plan import load_plan
from lakecurate.errors import InputDataError, SamplingWarning, TableError
from lakecurate.pipeline import run

pytestmark = pytest.mark.spark


def write_parquet(path, ids, vectors, id_name="id", emb_name="embedding"):
    emb = pa.array([None if v is None else list(map(float, v)) for v in vectors], pa.list_(pa.float32()))
    pq.write_table(pa.table({id_name: pa.array(ids), emb_name: emb}), path)
    return str(path)


def good(n=60, d=4):
    return list(range(n)), list(np.random.default_rng(0).normal(size=(n, d)).astype(np.float32))


def cfg_for(path, root, fmt="parquet", **over):
    data = {
        "lake": {"root": root},
        "input": {"format": fmt, "path": path},
        "clustering": {"n_clusters": [5, 2], "n_iter": 3, "n_resampling_steps": 0},
        "sampling": {"target_size": 20},
        "spark": {"master": "local[2]", "partitions": 2},
    }
    for k, v in over.items():
        s, name = k.split("__")
        data[s][name] = v
    return load_plan(data=data)


def assert_nothing_written(root):
    for name in ("clusters", "assignments", "curated"):
        assert not DeltaTable.is_deltatable(os.path.join(root, name)), f"{name} was written"


def expect_error(spark, cfg, exc, pattern):
    with pytest.raises(exc, match=pattern):
        run(cfg, spark=spark)
    assert_nothing_written(cfg.config.lake.root)


def test_nan_row_names_the_id(spark, tmp_path):
    ids, vecs = good()
    vecs[7] = np.array([1.0, np.nan, 0.0, 0.0], np.float32)
    path = write_parquet(tmp_path / "x.parquet", ids, vecs)
    expect_error(spark, cfg_for(path, str(tmp_path / "lake")), InputDataError, r"1 row\(s\) with NaN.*\"id\": 7")


def test_infinite_value(spark, tmp_path):
    ids, vecs = good()
    vecs[3] = np.array([np.inf, 0, 0, 0], np.float32)
    path = write_parquet(tmp_path / "x.parquet", ids, vecs)
    expect_error(spark, cfg_for(path, str(tmp_path / "lake")), InputDataError, r"NaN or infinite.*\"id\": 3")


def test_wrong_dimension_names_the_id_and_sizes(spark, tmp_path):
    ids, vecs = good()
    vecs[11] = np.zeros(3, np.float32)
    path = write_parquet(tmp_path / "x.parquet", ids, vecs)
    expect_error(spark, cfg_for(path, str(tmp_path / "lake")), InputDataError, r"not have 4 values.*\"id\": 11.*3 values, expected 4")


def test_null_id_and_null_embedding(spark, tmp_path):
    ids, vecs = good()
    ids = [None if i == 5 else i for i in ids]
    vecs[9] = None
    path = write_parquet(tmp_path / "x.parquet", ids, vecs)
    expect_error(spark, cfg_for(path, str(tmp_path / "lake")), InputDataError, r"1 row\(s\) with a null id; 1 row\(s\) with a null embedding")


def test_duplicate_ids_are_named(spark, tmp_path):
    ids, vecs = good()
    ids[10] = 4
    path = write_parquet(tmp_path / "x.parquet", ids, vecs)
    expect_error(spark, cfg_for(path, str(tmp_path / "lake")), InputDataError, r"duplicate ids, e\.g\. 4 x2")


def test_empty_input(spark, tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [], [])
    expect_error(spark, cfg_for(path, str(tmp_path / "lake")), InputDataError, r"x\.parquet' is empty: 0 rows")


def test_missing_column_lists_the_columns(spark, tmp_path):
    ids, vecs = good()
    path = write_parquet(tmp_path / "x.parquet", ids, vecs, emb_name="vec")
    expect_error(spark, cfg_for(path, str(tmp_path / "lake")), InputDataError,
                 r"input.embedding_column='embedding' is not a column of the input .*x\.parquet'; it has \['id', 'vec'\]")


def test_wrong_embedding_type(spark, tmp_path):
    pq.write_table(pa.table({"id": [1, 2], "embedding": ["a", "b"]}), tmp_path / "x.parquet")
    expect_error(spark, cfg_for(str(tmp_path / "x.parquet"), str(tmp_path / "lake")), InputDataError,
                 r"input.embedding_column='embedding' in .* is string; embeddings must be array<float> or array<double>")


@pytest.mark.parametrize("fmt, name", [("parquet", "nope.parquet"), ("delta", "nope"), ("npy", "nope.npy")])
def test_unreadable_path(spark, tmp_path, fmt, name):
    path = str(tmp_path / name)
    expect_error(spark, cfg_for(path, str(tmp_path / "lake"), fmt=fmt), TableError, f"input.path='{path}' does not exist")


def test_a_directory_that_is_not_delta(spark, tmp_path):
    (tmp_path / "plain").mkdir()
    path = str(tmp_path / "plain")
    expect_error(spark, cfg_for(path, str(tmp_path / "lake"), fmt="delta"), TableError, "is not a Delta table")


def test_more_clusters_than_rows(spark, tmp_path):
    ids, vecs = good(n=30)
    path = write_parquet(tmp_path / "x.parquet", ids, vecs)
    cfg = cfg_for(path, str(tmp_path / "lake"), clustering__n_clusters=[40, 2])
    expect_error(spark, cfg, InputDataError, r"clustering.n_clusters\[0\]=40 \(level 1\) is more than the 30 rows")


def test_target_larger_than_pool_writes_no_curated_table(spark, tmp_path):
    ids, vecs = good(n=60)
    path = write_parquet(tmp_path / "x.parquet", ids, vecs)
    cfg = cfg_for(path, str(tmp_path / "lake"), sampling__target_size=61)
    with pytest.raises(InputDataError, match=r"sampling.target_size=61 is larger than the input .* of 60 rows.*max_repeats"):
        run(cfg, spark=spark)
    assert not DeltaTable.is_deltatable(os.path.join(cfg.config.lake.root, "curated"))
    # with repeats allowed the same target succeeds and draws one row twice
    cfg = cfg_for(path, str(tmp_path / "lake"), sampling__target_size=61, sampling__max_repeats=2)
    with pytest.warns(SamplingWarning, match="every row is drawn"):
        res = run(cfg, spark=spark)
    cur = DeltaTable(res.tables["curated"]).to_pandas()
    assert len(cur) == 61 and cur["id"].value_counts().max() == 2
    # the degraded-but-valid result is on record in the runs table too
    runs = DeltaTable(res.tables["runs"]).to_pandas()
    sample = json.loads(runs[(runs.run_id == res.run_id) & (runs.stage == "sample")]["metrics"].iloc[0])
    assert any("every row is drawn, some up to 2 times" in w for w in sample["warnings"])


def test_string_ids_work(spark, tmp_path):
    ids, vecs = good()
    path = write_parquet(tmp_path / "x.parquet", [f"item-{i}" for i in ids], vecs)
    res = run(cfg_for(path, str(tmp_path / "lake")), spark=spark)
    cur = DeltaTable(res.tables["curated"]).to_pandas()
    assert len(cur) == 20 and cur["id"].str.startswith("item-").all()
