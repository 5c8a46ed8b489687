"""The coreset and shards stages under the main path's guarantees.

* A kill inside each stage's commit in turn (``kill -9`` of the job, as in ``test_kill_resume.py``),
  the same job again after each: the stage is not claimed in ``runs``, the tables equal an
  uninterrupted run's, and no data file is left unreferenced once cleaned up.
* Two attempts of one run, and two runs of different configs, at once, both forced to compute
  their rows from one snapshot before either commits: each run's rows land once, whole, equal to
  a run alone.

(Incremental dedup, assign and the top-up: ``test_nightly.py``; the main path:
``test_kill_resume.py``, ``test_concurrent_runs.py``.)
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import lakecurate.lake as lake_module
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.lake import Lake
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import embeddings_table
from digests import run_digests
from faults.jobs import RaceAt, frame, killed_at, run_together

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.spark]

N, D = 1200, 8
STAGES = ["coreset", "cluster", "sample", "shards"]
#: the tables of the two stages, as they are compared (rows in id order, every column)
OWN = {"coreset": ["id"], "shards": ["id"]}


def job(base, root, run_id="job", target=120) -> dict:
    """The job; run ``other`` differs in its coreset too, so it writes its own tables (a run that
    changes only its sampling reuses the committed ones, when they are there)."""
    return {
        "name": "stagefaults", "run_id": run_id, "stages": STAGES, "lake": {"root": str(root)},
        "input": {"format": "parquet", "path": str(base / "pool.parquet")},
        "coreset": {"target": {"format": "parquet", "path": str(base / "target.parquet")}, "n_centroids": 4 if run_id == "job" else 5,
                    "patience": 3},
        "clustering": {"n_clusters": [12, 3], "n_resampling_steps": 1, "resample_size": [1, 2], "n_iter": 3, "seed": 2},
        "sampling": {"target_size": target},
        "shards": {"payload_columns": ["embedding", "concept"]},
        "spark": {"master": "local[2]", "partitions": 2, "conf": {"spark.sql.shuffle.partitions": 2}},
    }


def rows(root, name, run_id):
    df = frame(root, name)
    df = df[df.run_id == run_id].sort_values(OWN[name]).reset_index(drop=True)
    return df.map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)  # arrays compare as lists


def assert_same_run(root, ref_root, run_id):
    for name in OWN:
        got, want = rows(root, name, run_id), rows(ref_root, name, run_id)
        assert len(got) == len(want) > 0, (name, len(got), len(want))
        assert got.equals(want), f"{name}: the run's rows differ from an uninterrupted run's"
    assert run_digests(root, run_id) == run_digests(ref_root, run_id)


@pytest.fixture(scope="module")
def pool(spark, tmp_path_factory):
    """A pool with a payload column, a target near two of its concepts, and the tables of an
    uninterrupted run of the job (and of a second config) to compare with."""
    base = tmp_path_factory.mktemp("stagefaults")
    p = long_tailed_pool(N, D, 10, alpha=0.8, spread=0.3, seed=21)
    t = embeddings_table(p.x).append_column("concept", pa.array(p.concept.astype(np.int64)))
    pq.write_table(t, base / "pool.parquet")
    rng = np.random.default_rng(22)
    near = np.flatnonzero(np.isin(p.concept, (0, 3)))
    target = (p.x[rng.choice(near, 30, replace=False)] + rng.normal(0, 0.05, (30, D))).astype(np.float32)
    pq.write_table(embeddings_table(target, ids=np.arange(10_000, 10_030)), base / "target.parquet")
    alone = base / "alone"
    run(load_plan(data=job(base, alone)), spark=spark)
    run(load_plan(data=job(base, alone, run_id="other", target=60)), spark=spark)
    for name in OWN:
        assert set(frame(str(alone), name).run_id) == {"job", "other"}
    return base, str(alone)


def test_a_job_killed_inside_the_coreset_then_the_shards_commit_resumes_to_the_uninterrupted_tables(spark, pool, tmp_path, monkeypatch):
    """Killed inside the coreset's commit; the same job again resumes and is killed inside the
    shards' commit; the last attempt runs to the end (one cold job per kill, as in
    ``test_kill_resume.py``)."""
    base, alone = pool
    root = str(tmp_path / "lake")
    cfg = job(base, root)
    for i, point in enumerate(["commit:files_written:table=coreset", "commit:files_written:table=shards"]):
        attempt = tmp_path / f"attempt{i}"
        attempt.mkdir()
        killed_at(point, cfg, attempt)
        stage = point.split("table=")[-1]
        claimed = set()
        if DeltaTable.is_deltatable(os.path.join(root, "runs")):  # a lake's first stage killed: no runs row yet
            runs = frame(root, "runs")
            claimed = set(runs[runs.status == "succeeded"]["stage"])
        assert stage not in claimed, f"killed at {point}: runs claims the stage the kill stopped"
    monkeypatch.setattr(lake_module.layout, "ORPHAN_AGE_SECONDS", 0.0)
    res = run(load_plan(data=cfg), spark=spark)
    assert set(res.stages) == set(STAGES)
    assert_same_run(root, alone, "job")
    # a killed write's files go with the next write to its table, or with vacuum (README, "No orphans")
    lake = Lake(spark, lake_module.LakeConfig(root=root))
    leftovers = {t: lake.unreferenced_files(t, older_than_seconds=0) for t in lake.table_names(with_leftovers=True)}
    for table, files in leftovers.items():
        assert all(f.startswith("_data/run_id=") for f in files), (table, files)
    lake.vacuum(apply=True, older_than_seconds=0)
    assert not any(lake.unreferenced_files(t, older_than_seconds=0) for t in lake.table_names(with_leftovers=True))
    assert_same_run(root, alone, "job")


@pytest.mark.parametrize("ids", [("job", "job"), ("job", "other")], ids=["one-run-twice", "two-runs"])
def test_two_coreset_and_shards_runs_at_once_leave_each_run_once(spark, pool, tmp_path, monkeypatch, ids):
    base, alone = pool
    root = tmp_path / "lake"
    races = [RaceAt(monkeypatch, "coreset"), RaceAt(monkeypatch, "shards")]
    configs = {f"r{i}": job(base, root, run_id=rid, target=120 if rid == "job" else 60) for i, rid in enumerate(ids)}
    results, errors = run_together(spark, configs)
    assert [r.calls for r in races] == [2, 2], "both runs must reach each commit with rows computed from one snapshot"
    assert not errors, errors
    for rid in set(ids):
        assert_same_run(str(root), alone, rid)
    for name in OWN:
        assert set(frame(str(root), name).run_id) == set(ids)
