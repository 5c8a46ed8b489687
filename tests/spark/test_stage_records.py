"""A stage added the way CONTRIBUTING.md says (its module's record, one line in STAGES) runs,
resumes, writes its table and is summarised, with no other change; and the block API it uses."""

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import lakecurate.plan
import lakecurate.stages
from lakecurate.config import LakeConfig
from lakecurate.errors import ConfigError
from lakecurate.lake import Lake
from lakecurate.pipeline import run
from lakecurate.plan import load_plan
from lakecurate.spark.blocks import EmbeddingBlocks
from lakecurate.stages import STAGES, Stage
from lakecurate.tables import DESCRIPTIONS

from builders import embeddings_table

pytestmark = pytest.mark.spark

ROW_NORMS = "row_norms"


def run_norms(ctx, metrics):
    """A toy stage: the norm of every input row (blocks.map) and their sum per partition (blocks.collect)."""
    blocks = ctx.input_blocks("norms")
    try:
        def norms(batches, scale):
            for b in batches:
                yield pa.record_batch({"id": b.ids, "norm": pa.array(scale * np.linalg.norm(b.vectors.astype(np.float64), axis=1))})

        ctx.lake.write_run(blocks.map(norms, "id LONG, norm DOUBLE", 1.0), ROW_NORMS, ctx.run_id)

        def total(batches, _):
            yield pa.record_batch({"n": pa.array([np.int64(sum(b.n for b in batches)).tobytes()])})

        metrics["rows"] = int(sum(np.frombuffer(r["n"], np.int64)[0] for r in blocks.collect(total, "n BINARY")))
    finally:
        blocks.release()


NORMS = Stage(name="norms", run=run_norms, help="row norms", writes=lambda cfg: (ROW_NORMS,),
              summary=lambda m: [f"  norms of {m['rows']} rows"])


@pytest.fixture
def with_norms_stage(monkeypatch):
    stages = (*STAGES[:2], NORMS, *STAGES[2:])  # after dedup: it reads the kept rows
    monkeypatch.setattr(lakecurate.stages, "STAGES", stages)
    monkeypatch.setattr(lakecurate.plan, "STAGES", stages)
    monkeypatch.setitem(DESCRIPTIONS, ROW_NORMS, "row norms (test stage)")


def test_a_new_stage_runs_from_its_record_alone(spark, tmp_path, with_norms_stage):
    x = np.random.default_rng(0).normal(size=(500, 6)).astype(np.float32)
    src = str(tmp_path / "emb.parquet")
    import pyarrow.parquet as pq

    pq.write_table(embeddings_table(x), src)
    data = {"stages": ["norms"], "lake": {"root": str(tmp_path / "lake")}, "input": {"format": "parquet", "path": src},
            "spark": {"master": "local[2]", "partitions": 3}}
    plan = load_plan(data=data)
    assert plan.stage_names == ["norms"] and plan.tables() == [ROW_NORMS]
    assert load_plan(data={**data, "stages": ["dedup", "norms", "cluster"]}).stage_names == ["dedup", "norms", "cluster"]
    res = run(plan, spark=spark)
    assert res.stages["norms"]["rows"] == 500
    got = DeltaTable(res.tables[ROW_NORMS]).to_pandas().sort_values("id")
    np.testing.assert_allclose(got["norm"].to_numpy(), np.linalg.norm(x, axis=1), rtol=1e-6)
    assert spark.sql(f"SELECT count(*) AS n FROM {ROW_NORMS}").first()["n"] == 500  # registered as a view
    assert run(plan, spark=spark).skipped == ["norms"]  # resumable like any stage
    with pytest.raises(ConfigError, match="must keep the order"):
        load_plan(data={**data, "stages": ["cluster", "norms"]})


def test_collect_results_come_back_in_partition_order_from_files_or_streams(spark, tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    df = spark.createDataFrame(embeddings_table(x).to_pandas())
    lake = Lake(spark, LakeConfig(root=str(tmp_path / "lake")))
    for cache in ("local_files", "spark", "lake"):
        blocks = EmbeddingBlocks.from_dataframe(spark, df, id_column="id", embedding_column="embedding", partitions=4, cache=cache,
                                                lake=lake)
        try:
            def keys(batches, offset):
                for b in batches:
                    yield pa.record_batch({"k": pa.array([(b.keys + offset).tobytes()])})

            rows = blocks.collect(keys, "k BINARY", 100)
            assert [r["_part"] for r in rows] == sorted(r["_part"] for r in rows)
            got = np.sort(np.concatenate([np.frombuffer(r["k"], np.int64) for r in rows]))
            assert np.array_equal(got, np.arange(20) + 100)
            assert blocks.fallback_partitions == 0 and blocks.passes == 1
        finally:
            blocks.release()
