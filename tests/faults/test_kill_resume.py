"""kill -9 of the whole job (driver, JVM, Python workers) at named points, then a rerun.

Each attempt runs ``lakecurate run`` in its own process group with ``LAKECURATE_FAULT=<point>``
(:mod:`lakecurate.faults`), so the job dies exactly there; the next attempt of the same job dies at
the next point, and so on. After each kill: no table version ever held part of a run's rows, and
the ``runs`` table claims no stage that did not finish; the last attempt ends with the same tables
bit for bit as an uninterrupted run, and nothing is left behind (no unreferenced data files once
cleaned up, no block files of the dead jobs).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest
import yaml
from deltalake import DeltaTable

import lakecurate.lake as lake_module
from lakecurate.config import LakeConfig
from lakecurate.lake import Lake
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from digests import run_digests

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.spark]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = {
    "name": "faults",
    "run_id": "faults",  # one run id for every attempt of the job
    "dedup": {"eps": 0.01, "n_clusters": 4, "n_iter": 2},
    "clustering": {"n_clusters": [24, 6], "resample_size": [1, 3], "n_resampling_steps": 1, "n_iter": 3},
    "sampling": {"target_size": 150},
    "report": {"label_column": "item", "html": False},  # the HTML report reads tables only: not what a kill can break
    "spark": {"master": "local[2]", "partitions": 2, "conf": {"spark.sql.shuffle.partitions": 2}},
}
#: the job: de-duplication, clustering, sampling (and the report, automatic with a label column)
STAGES = ["dedup", "cluster", "sample"]
#: where the job is killed, in the order one job reaches them: inside a stage's work, between
#: levels, inside each kind of commit. The job is killed at the first; the same job again resumes
#: what the killed one committed and is killed at the next; and so on; the last attempt runs to the
#: end. With the stage each kill stops (a kill inside a commit: the stage writing that table).
POINTS = [
    ("dedup:pairwise", "dedup"),
    ("commit:files_written:table=duplicates", "dedup"),
    ("cluster:iteration:iteration=2:level=1", "cluster"),
    ("cluster:level_saved:level=1", "cluster"),  # between levels
    ("commit:committed:table=clusters", "cluster"),  # the tree committed, its assignments not yet
    ("commit:files_written:table=runs", "cluster"),  # the cluster stage's tables committed, its runs row not
    ("sample:quotas", "sample"),
    ("report:counted", "report"),
]
TABLES = ("duplicates", "clusters", "assignments", "curated")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A redundant pool with a label column (for the report), as a Parquet input."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lakecurate.core.synthetic import redundant_pool

    from builders import embeddings_table

    p = redundant_pool(1200, 8, 300, copies_alpha=1.1, n_concepts=20, seed=2)
    path = str(tmp_path_factory.mktemp("pool") / "pool.parquet")
    pq.write_table(embeddings_table(p.x).append_column("item", pa.array(p.item.astype("int32"))), path)
    return path


def job(pool, root, stages):
    return {**BASE, "stages": stages, "input": {"format": "parquet", "path": pool}, "lake": {"root": root}}


@pytest.fixture(scope="module")
def reference(spark, pool, tmp_path_factory):
    """Digests and row counts of an uninterrupted run of the job."""
    root = str(tmp_path_factory.mktemp("reference") / "lake")
    res = run(load_plan(data=job(pool, root, STAGES)), spark=spark)
    return run_digests(root, res.run_id), {t: len(DeltaTable(res.tables[t]).to_pandas()) for t in res.tables if t in TABLES}


def dead_block_caches():
    """Block-file folders whose executor JVM is gone (this session's own are alive or released)."""
    from lakecurate.spark.block_files import FOLDER, is_alive

    owners = glob.glob(os.path.join(tempfile.gettempdir(), "spark-*", "userFiles-*", FOLDER, "*", "owner.json"))
    return [os.path.dirname(o) for o in owners if not is_alive(json.load(open(o))["jvm_pid"])]


def killed_at(point, pool, root, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(pool, root, STAGES)))
    env = {**os.environ, "LAKECURATE_FAULT": point, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": os.path.join(ROOT, "lib") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "lakecurate.cli", "run", str(path)], env=env, cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=600, start_new_session=True)
    assert out.returncode == -signal.SIGKILL, f"the job was not killed at {point}: rc {out.returncode}\n{out.stderr[-3000:]}"


def assert_no_partial_versions(root, counts):
    for table in counts:
        path = os.path.join(root, table)
        if not DeltaTable.is_deltatable(path):
            continue
        for version in range(DeltaTable(path).version() + 1):
            runs = DeltaTable(path, version=version).to_pyarrow_table(columns=["run_id"]).column("run_id").to_pylist()
            for run_id in set(runs):
                assert runs.count(run_id) == counts[table], f"{table} version {version} holds {runs.count(run_id)} rows of {run_id}"


def succeeded(root):
    path = os.path.join(root, "runs")
    if not DeltaTable.is_deltatable(path):
        return []
    runs = DeltaTable(path).to_pandas()
    return sorted(runs[runs.status == "succeeded"]["stage"])


def test_a_job_killed_at_each_point_in_turn_resumes_to_identical_tables_and_leaves_nothing_behind(spark, pool, reference, tmp_path,
                                                                                                   monkeypatch):
    """Eight kill -9s of one job, each attempt resuming what the one before left, then the job to
    its end. After every kill: no table version holds part of a run's rows, and ``runs`` claims no
    stage that died. At the end: the tables equal an uninterrupted run's bit for bit, each stage
    succeeded once, nothing is left behind. (One case per point cost a cold job from the start
    each, plus a rerun; the chain costs one cold job per kill and starts each attempt from the
    leftovers of a killed one.)"""
    digests, counts = reference
    all_stages = [*STAGES, "report"]
    root = str(tmp_path / "lake")
    for i, (point, stage) in enumerate(POINTS):
        attempt = tmp_path / f"attempt{i}"
        attempt.mkdir()
        killed_at(point, pool, root, attempt)
        assert_no_partial_versions(root, counts)
        done = succeeded(root)
        assert stage not in done, f"killed at {point}: runs claims {stage} succeeded though the job died inside it"
        assert set(done) <= set(all_stages) and len(done) == len(set(done)), (point, done)

    # an hour later (the safety margin for writes still in flight), the same job again
    monkeypatch.setattr(lake_module.layout, "ORPHAN_AGE_SECONDS", 0.0)
    res = run(load_plan(data=job(pool, root, STAGES)), spark=spark)
    assert run_digests(root, res.run_id) == digests
    assert_no_partial_versions(root, counts)
    assert succeeded(root) == sorted(all_stages)  # each stage once: every attempt skipped what an earlier one committed
    # a killed write's files go with the next write to its table (README, "No orphans"); a table no
    # later attempt wrote again keeps them until then, or until vacuum
    lake = Lake(spark, LakeConfig(root=root))
    leftovers = {t: lake.unreferenced_files(t, older_than_seconds=0) for t in lake.table_names(with_leftovers=True)}
    for table, files in leftovers.items():
        assert all(f.startswith("_data/run_id=") for f in files), (table, files)
    lake.vacuum(apply=True, older_than_seconds=0)
    assert not any(lake.unreferenced_files(t, older_than_seconds=0) for t in lake.table_names(with_leftovers=True))
    assert run_digests(root, res.run_id) == digests
    assert not os.path.exists(os.path.join(root, "_checkpoints", res.run_id))
    assert dead_block_caches() == []
