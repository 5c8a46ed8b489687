"""Cheap checks first: what the config and the input's metadata can tell fails before any Spark
job, in seconds, and leaves no ``runs`` row (the run never started)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from lakecurate.errors import InputDataError, TableError
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import embeddings_table, save_npy

pytestmark = pytest.mark.spark


def plan(root: str, input_: dict, **sections):
    data = {"name": "pre", "stages": ["cluster", "sample"], "lake": {"root": root}, "input": input_,
            "clustering": {"n_clusters": [8, 2], "n_iter": 2}, "sampling": {"target_size": 50}, "spark": {"partitions": 2}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return load_plan(data=data)


def refused(spark, root: str, p, error, match: str) -> None:
    with pytest.raises(error, match=match):
        run(p, spark=spark)
    assert not DeltaTable.is_deltatable(os.path.join(root, "runs")), "a run that never started wrote a runs row"


@pytest.fixture
def parquet_input(tmp_path):
    x = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
    table = embeddings_table(x).append_column("concept", pa.array(np.arange(120, dtype=np.int32) % 5))
    os.makedirs(tmp_path / "in")
    pq.write_table(table.slice(0, 70), tmp_path / "in" / "a.parquet")
    pq.write_table(table.slice(70), tmp_path / "in" / "b.parquet")
    write_deltalake(str(tmp_path / "delta-in"), table)
    return str(tmp_path / "in"), str(tmp_path / "delta-in"), x


def test_a_target_larger_than_the_input_fails_before_any_job(spark, tmp_path, parquet_input):
    folder, delta, x = parquet_input
    root = str(tmp_path / "lake")
    for input_ in ({"format": "parquet", "path": folder}, {"format": "delta", "path": delta},
                   {"format": "npy", "path": save_npy(tmp_path, x)}):
        p = plan(root, input_, sampling={"target_size": 121})  # rows from footers / the Delta log / the .npy header
        refused(spark, root, p, InputDataError, r"sampling.target_size=121 is larger than the input .* of 120 rows")
    refused(spark, root, plan(root, {"format": "synthetic", "synthetic": {"n": 40, "dim": 4, "n_concepts": 4}}), InputDataError,
            r"target_size=50 is larger than the input \(the generated pool\) of 40 rows")
    assert not os.path.exists(os.path.join(root, "pool")), "the pool was generated for a run that cannot succeed"


def test_columns_levels_and_paths_are_checked_before_any_job(spark, tmp_path, parquet_input):
    folder, _, _ = parquet_input
    root = str(tmp_path / "lake")
    refused(spark, root, plan(root, {"format": "parquet", "path": folder}, report={"label_column": "concpet"}),
            InputDataError, r"report.label_column='concpet' is not a column of the input .*'concept'")
    refused(spark, root, plan(root, {"format": "parquet", "path": folder, "embedding_column": "emb"}),
            InputDataError, r"input.embedding_column='emb' is not a column of the input")
    refused(spark, root, plan(root, {"format": "parquet", "path": folder}, clustering={"n_clusters": [200, 2]}),
            InputDataError, r"clustering.n_clusters\[0\]=200 \(level 1\) is more than the 120 rows")
    refused(spark, root, plan(root, {"format": "parquet", "path": str(tmp_path / "nowhere")}),
            TableError, r"input.path=.*nowhere' does not exist")
    # and the run that can succeed does, with the label column it names
    res = run(plan(root, {"format": "parquet", "path": folder}, report={"label_column": "concept"}), spark=spark)
    assert res.report["curated"]["n"] == 50


def test_a_run_that_embeds_checks_the_later_stages_against_its_source_before_embedding(spark, tmp_path):
    """The embed source's rows (plus what the embeddings table already holds) bound the target and
    k, and its pass-through columns are what the report can label by: refused before any text is encoded."""
    from builders import make_texts

    texts = make_texts(60, seed=1)
    src = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": np.arange(60, dtype=np.int64), "text": texts, "section": ["a", "b"] * 30}), src)
    root = str(tmp_path / "lake")

    def embed_plan(**sections):
        data = {"name": "emb", "stages": ["embed", "cluster", "sample"], "lake": {"root": root},
                "embed": {"source": {"format": "parquet", "path": str(src), "passthrough_columns": ["section"]}},
                "clustering": {"n_clusters": [8, 2], "n_iter": 2}, "sampling": {"target_size": 50}, "spark": {"partitions": 2}}
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value}
        return load_plan(data=data)

    refused(spark, root, embed_plan(sampling={"target_size": 61}), InputDataError,
            r"sampling.target_size=61 is larger than the input \(the embeddings of embed.source .*\) of 60 rows")
    refused(spark, root, embed_plan(clustering={"n_clusters": [61, 2]}), InputDataError, r"clustering.n_clusters\[0\]=61 .* 60 rows")
    refused(spark, root, embed_plan(report={"label_column": "sektion"}), InputDataError,
            r"report.label_column='sektion' is not a column of the input \(the embeddings of .*\['embedding', 'id', 'section'\]")
    assert not os.path.exists(os.path.join(root, "embeddings")), "texts were embedded for a run that cannot succeed"
