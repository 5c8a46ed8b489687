"""Delta tables as the protocol defines them, written by a real Delta engine (Sail, in the test run).

For each table (deletion vectors after DELETEs, column mapping in name and id mode, a checkpoint,
several versions, partitions whose values need escaping, all of them at once) every way lakecurate
reads a Delta table gives the rows Sail itself reads, row for row: the Arrow scan (report, runs,
loaders), the embedded backend's Spark read (inputs, the nightly anti-joins), the row count from
the log. A curation run over the table with deleted rows never sees one. A reader feature the
reader cannot honour, and a deletion vector under the training loaders, are refused in one line.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from lakecurate.config import LakeConfig
from lakecurate.errors import TableError
from lakecurate.lake import Lake, read_delta_files
from lakecurate.lake.delta import Snapshot
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import block_rows

pytestmark = pytest.mark.spark

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAIL_PYTHON = os.path.join(ROOT, ".venv-sail", "bin", "python")
TABLES = ["deletion_vectors", "column_mapping_name", "column_mapping_id", "checkpointed", "partitioned", "everything"]


@pytest.fixture(scope="module")
def sail_tables(tmp_path_factory):
    """The tables of ``tests/sail_tables.py``, written by a local Sail server in ``.venv-sail``."""
    assert os.path.exists(SAIL_PYTHON), f"{SAIL_PYTHON} is missing: scripts/setup.sh (make test) creates it"
    out = tmp_path_factory.mktemp("sail")
    proc = subprocess.run([SAIL_PYTHON, os.path.join(ROOT, "tests", "sail_tables.py"), str(out)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "RUST_LOG": "error"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    return out, facts


def expected(out, name) -> pa.Table:
    return pq.read_table(os.path.join(out, f"{name}.expected.parquet"))


def canonical(table: pa.Table) -> dict:
    """Columns by name as Python lists, rows in id order (partition values as text)."""
    t = table.sort_by("id")
    return {c: [None if v is None else (v if c != "part" else str(v)) for v in t.column(c).to_pylist()] for c in sorted(t.column_names)}


def test_the_tables_have_the_features_they_are_written_for(sail_tables):
    out, _ = sail_tables
    features = {n: set(DeltaTable(os.path.join(out, n)).protocol().reader_features or ()) for n in TABLES}
    assert features["deletion_vectors"] == {"deletionVectors"}
    assert features["column_mapping_name"] == features["column_mapping_id"] == {"columnMapping"}
    assert features["everything"] == {"deletionVectors", "columnMapping"}
    assert any(f.endswith(".checkpoint.parquet") for f in os.listdir(os.path.join(out, "checkpointed", "_delta_log")))
    assert DeltaTable(os.path.join(out, "deletion_vectors")).version() == 4  # create, two appends, two DELETEs
    dv = pa.table(DeltaTable(os.path.join(out, "deletion_vectors")).deletion_vectors().read_all())
    assert dv.num_rows == 2  # both files carry deleted rows: the reads below must drop them


@pytest.mark.parametrize("name", TABLES)
def test_every_read_gives_the_rows_a_delta_engine_reads(spark, sail_tables, name):
    out, facts = sail_tables
    path, want = os.path.join(out, name), expected(out, name)
    assert want.num_rows == facts[name]["rows"] > 0
    arrow = read_delta_files(path)
    assert canonical(arrow) == canonical(want)
    lake = Lake(spark, LakeConfig(root=str(out / "lake"), backend="embedded"))
    on_spark = lake.read_delta_path(path).toArrow()
    assert on_spark.column_names == want.column_names
    assert canonical(on_spark) == canonical(want)
    assert Snapshot(path).live_rows() == lake.row_count("delta", path) == want.num_rows


def test_rows_deleted_before_a_version_are_live_in_it(spark, sail_tables):
    out, _ = sail_tables
    path = os.path.join(out, "deletion_vectors")
    lake = Lake(spark, LakeConfig(root=str(out / "lake"), backend="embedded"))
    assert lake.read_delta_path(path, version=2).count() == 1500  # both appends, before any DELETE
    assert read_delta_files(path, version=3).num_rows == 1400  # the first DELETE only


def test_a_curation_run_never_sees_a_deleted_row(spark, sail_tables, tmp_path):
    out, _ = sail_tables
    path = os.path.join(out, "deletion_vectors")
    live = set(expected(out, "deletion_vectors").column("id").to_pylist())
    deleted = set(range(1500)) - live
    cfg = {"name": "dv", "stages": ["cluster", "sample"], "lake": {"root": str(tmp_path / "lake")},
           "input": {"format": "delta", "path": path},
           "clustering": {"n_clusters": [10, 3], "n_iter": 3, "n_resampling_steps": 0, "seed": 1},
           "sampling": {"target_size": 900}, "spark": {"partitions": 2}}
    res = run(load_plan(data=cfg), spark=spark)
    a = DeltaTable(str(tmp_path / "lake" / "assignments")).to_pandas()
    c = DeltaTable(str(tmp_path / "lake" / "curated")).to_pandas()
    assert set(a["id"]) == live and not deleted & set(c["id"])
    assert res.stages["cluster"]["n_rows"] == len(live) == 1200


def unsupported_feature_table(path) -> str:
    """A delta-rs table whose next version requires a reader feature lakecurate does not read."""
    write_deltalake(path, pa.table({"id": pa.array([1, 2, 3], pa.int64()),
                                    "embedding": pa.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], pa.list_(pa.float32()))}))
    with open(os.path.join(path, "_delta_log", f"{1:020d}.json"), "w") as f:
        f.write(json.dumps({"commitInfo": {"timestamp": 1, "operation": "SET TBLPROPERTIES"}}) + "\n")
        f.write(json.dumps({"protocol": {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["typeWidening"],
                                         "writerFeatures": ["typeWidening"]}}) + "\n")
    return str(path)


def test_a_reader_feature_it_cannot_honour_is_refused_by_name_before_any_work(spark, tmp_path):
    path = unsupported_feature_table(tmp_path / "widened")
    pattern = r"'.*widened' uses the reader feature\(s\) \['typeWidening'\], which lakecurate cannot honour"
    with pytest.raises(TableError, match=pattern):
        read_delta_files(path)
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake"), backend="embedded"))
    with pytest.raises(TableError, match=pattern):
        lake.read_delta_path(path)
    cfg = {"name": "w", "stages": ["cluster", "sample"], "lake": {"root": str(tmp_path / "lake")},
           "input": {"format": "delta", "path": path}, "clustering": {"n_clusters": [2]}, "sampling": {"target_size": 2}}
    with pytest.raises(TableError, match=pattern):
        run(load_plan(data=cfg), spark=spark)
    assert not [n for n in os.listdir(tmp_path / "lake") if not n.startswith("_")] if (tmp_path / "lake").exists() else True


def test_the_training_loaders_refuse_rows_deleted_by_a_deletion_vector(sail_tables):
    torch = pytest.importorskip("torch")  # noqa: F841 - lakecurate.torch needs it
    from lakecurate.torch.table import ShardTable

    out, _ = sail_tables
    with pytest.raises(TableError, match=r"has rows deleted by deletion vectors in 1 file\(s\).*REORG TABLE"):
        ShardTable(os.path.join(out, "curated_with_deletes"))
    assert np.array_equal(np.sort(read_delta_files(os.path.join(out, "curated_with_deletes")).column("id").to_numpy()),
                          np.arange(10, 200))


def test_vacuum_keeps_deletion_vector_files_and_finds_real_leftovers(sail_tables, tmp_path):
    """A deletion vector's file is referenced by the log (encoded in the add action), not by name:
    vacuum must count it as the table's, or it would delete it and bring the deleted rows back."""
    import shutil

    out, _ = sail_tables
    root = tmp_path / "lake"
    shutil.copytree(os.path.join(out, "everything"), root / "everything")
    dv_files = [os.path.relpath(os.path.join(d, f), root / "everything") for d, _, fs in os.walk(root / "everything")
                for f in fs if f.startswith("deletion_vector_")]
    assert dv_files, "the table has deletion vector files on disk"
    lake = Lake(None, LakeConfig(root=str(root), backend="embedded"))
    assert set(dv_files) <= lake.referenced_files("everything")
    assert lake.unreferenced_files("everything", older_than_seconds=0) == []
    (root / "everything" / "part-stray.parquet").write_bytes(b"x")
    assert lake.unreferenced_files("everything", older_than_seconds=0) == ["part-stray.parquet"]
    found = lake.vacuum(apply=True, older_than_seconds=0)
    assert [f["files"] for f in found] == [1]
    assert read_delta_files(str(root / "everything")).num_rows == expected(out, "everything").num_rows


@pytest.mark.parametrize("name", TABLES)
def test_tasks_reading_the_files_themselves_cache_the_rows_a_delta_engine_reads(spark, sail_tables, name):
    """The executors' own pyarrow reads (deletion vectors, column mapping, checkpoints, partitions)
    cache exactly the live rows Sail reads, and the same blocks' rows as the read through Spark."""
    from lakecurate.spark.blocks import EmbeddingBlocks

    out, _ = sail_tables
    path, want = os.path.join(out, name), expected(out, name).sort_by("id")
    lake = Lake(spark, LakeConfig(root=str(out / "lake"), backend="embedded"))
    files, why = lake.input_files("delta", ["id", "embedding"], path=path)
    assert files is not None, why
    by_files = EmbeddingBlocks.from_files(spark, files, id_column="id", embedding_column="embedding", partitions=3, lake=lake)
    by_spark = EmbeddingBlocks.from_dataframe(spark, lake.read_delta_path(path), id_column="id", embedding_column="embedding",
                                              partitions=3, lake=lake)
    try:
        keys, x = block_rows(by_files)
        assert keys.tolist() == want.column("id").to_pylist()
        assert np.array_equal(x, np.stack(want.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32))
        assert by_files.n == want.num_rows and by_files.id_type == by_spark.id_type
        spark_keys, spark_x = block_rows(by_spark)
        assert np.array_equal(keys, spark_keys) and np.array_equal(x, spark_x)
    finally:
        by_files.release()
        by_spark.release()
