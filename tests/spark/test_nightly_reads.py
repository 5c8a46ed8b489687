"""A nightly run reads the files added to its input since the tree's lineage last read it
(issue 32, item 2): a Parquet folder's new or changed files, a Delta table's files added after the
recorded version. The tables equal those of the same run reading its whole input; a Delta log
cleaned up since, or an input the lineage never read, is read whole, saying why."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

import lakecurate.stages.assign as assign_stage
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import embeddings_table
from digests import run_digests
from faults.jobs import frame

pytestmark = [pytest.mark.spark, pytest.mark.slow]

N, NEW, D = 900, 150, 8
CLUSTERING = {"n_clusters": [12, 3], "n_resampling_steps": 1, "resample_size": [1, 2], "n_iter": 3, "seed": 1}
SPARK = {"master": "local[2]", "partitions": 2, "conf": {"spark.sql.shuffle.partitions": 2}}


def fit_config(root, source: dict, stages=("dedup", "cluster", "sample")) -> dict:
    return {"name": "fit", "stages": list(stages), "lake": {"root": str(root)}, "input": source,
            "clustering": CLUSTERING, "dedup": {"eps": 0.01, "n_iter": 2}, "sampling": {"target_size": 200}, "spark": SPARK}


def nightly_config(root, source: dict, stages=("dedup", "assign", "sample"), **extra) -> dict:
    return {"name": "nightly", "stages": list(stages), "lake": {"root": str(root)}, "input": source,
            "clustering": CLUSTERING, "dedup": {"mode": "incremental", "eps": 0.01, "n_iter": 2},
            "sampling": {"target_size": 240, "mode": "top_up"}, "spark": SPARK, **extra}


ASSIGN = ("assign",)  # the Delta case: the same read, without the dedup and top-up around it


def pool():
    x = long_tailed_pool(N + 2 * NEW, D, 10, alpha=0.8, spread=0.3, seed=7).x
    x[N : N + 4] = x[:4]  # copies of fitted rows among the new: the incremental dedup removes them
    return x, np.arange(len(x), dtype=np.int64)


def stage_metrics(root, run_id) -> dict:
    runs = frame(str(root), "runs")
    runs = runs[(runs.run_id == run_id) & (runs.status == "succeeded")]
    return {r.stage: json.loads(r.metrics) for r in runs.itertuples()}


def whole_read(monkeypatch):
    monkeypatch.setattr(assign_stage, "increment_read", lambda ctx, tree: (None, {"read": "whole", "why": "the test's reference"}))


def test_a_parquet_folder_grown_in_place_is_read_by_its_new_and_changed_files(spark, tmp_path, monkeypatch):
    x, ids = pool()
    folder = tmp_path / "pool"
    folder.mkdir()
    pq.write_table(embeddings_table(x[:N], ids=ids[:N]), folder / "part-0.parquet")
    source = {"format": "parquet", "path": str(folder)}
    a = tmp_path / "a"
    tree = run(load_plan(data=fit_config(a, source)), spark=spark).run_id
    pq.write_table(embeddings_table(x[N : N + NEW], ids=ids[N : N + NEW]), folder / "part-1.parquet")
    b = tmp_path / "b"
    shutil.copytree(a, b)

    night = run(load_plan(data=nightly_config(a, source, run_id="night")), spark=spark).run_id  # the id names no lake root
    got = stage_metrics(a, night)
    for stage in ("dedup", "assign"):
        assert got[stage]["input_read"] == {"read": "increment", "files": 1, "of_files": 2}, stage
    assert got["dedup"]["new_rows"] == NEW and got["dedup"]["removed_as_old"] >= 4
    assert got["assign"]["new_rows"] == NEW - got["dedup"]["removed"]

    with monkeypatch.context() as m:
        whole_read(m)
        run(load_plan(data=nightly_config(b, source, run_id="night")), spark=spark)
    assert stage_metrics(b, night)["assign"]["input_read"]["read"] == "whole"
    for run_id in (tree, night):
        assert run_digests(str(a), run_id) == run_digests(str(b), run_id), run_id

    # nothing new for another run of the same input: no file is read, no row added
    again = run(load_plan(data=nightly_config(a, source, run_id="again")), spark=spark)
    got = stage_metrics(a, again.run_id)
    assert got["assign"]["input_read"] == {"read": "increment", "files": 0, "of_files": 2}
    assert got["assign"]["new_rows"] == 0 and got["dedup"]["new_rows"] == 0

    # a file rewritten in place (more rows, a later mtime) is read again; only its new rows join
    time.sleep(0.01)
    pq.write_table(embeddings_table(x[N:], ids=ids[N:]), folder / "part-1.parquet")
    later = run(load_plan(data=nightly_config(a, source)), spark=spark).run_id
    got = stage_metrics(a, later)
    assert got["assign"]["input_read"] == {"read": "increment", "files": 1, "of_files": 2}
    assert got["dedup"]["new_rows"] == NEW and got["assign"]["new_rows"] == NEW - got["dedup"]["removed"]
    assignments = frame(str(a), "assignments")
    assignments = assignments[assignments.run_id == tree]
    assert assignments["id"].is_unique and set(ids[N:]) - set(frame(str(a), "duplicates")["id"]) <= set(assignments["id"])


def test_a_delta_input_is_read_from_the_version_the_lineage_recorded(spark, tmp_path, monkeypatch):
    x, ids = pool()
    table = str(tmp_path / "embeddings")
    write_deltalake(table, embeddings_table(x[:N // 2], ids=ids[:N // 2]))
    write_deltalake(table, embeddings_table(x[N // 2 : N], ids=ids[N // 2 : N]), mode="append")  # v1: what the tree reads
    source = {"format": "delta", "path": table}
    a = tmp_path / "a"
    tree = run(load_plan(data=fit_config(a, source, ("cluster", "sample"))), spark=spark).run_id
    write_deltalake(table, embeddings_table(x[N : N + NEW], ids=ids[N : N + NEW]), mode="append")  # v2
    DeltaTable(table).delete(f"id >= {N - 40} and id < {N}")  # v3: rewrites the second file without its last 40 rows
    b = tmp_path / "b"
    shutil.copytree(a, b)

    night = run(load_plan(data=nightly_config(a, source, ASSIGN, run_id="night")), spark=spark).run_id
    read = stage_metrics(a, night)["assign"]["input_read"]
    assert read["read"] == "increment" and read["added_after_version"] == 1 and read["version"] == 3, read
    assert read["rows"] == NEW + (N // 2 - 40 if read["files"] == 2 else 0), read  # and the rewritten file, unless a deletion vector
    with monkeypatch.context() as m:
        whole_read(m)
        run(load_plan(data=nightly_config(b, source, ASSIGN, run_id="night")), spark=spark)
    for run_id in (tree, night):
        assert run_digests(str(a), run_id) == run_digests(str(b), run_id), run_id
    assert stage_metrics(a, night)["assign"]["new_rows"] == NEW

    # the log cleaned up after a checkpoint: the commits since no longer say what they added
    write_deltalake(table, embeddings_table(x[N + NEW :], ids=ids[N + NEW :]), mode="append")  # v4
    DeltaTable(table).create_checkpoint()
    for v in (3, 4):
        os.remove(os.path.join(table, "_delta_log", f"{v:020d}.json"))
    later = run(load_plan(data=nightly_config(a, source, ASSIGN)), spark=spark).run_id
    got = stage_metrics(a, later)
    read = got["assign"]["input_read"]
    assert read["read"] == "whole" and "commit 4 of its log cannot be read" in read["why"], read
    assert got["assign"]["new_rows"] == NEW
