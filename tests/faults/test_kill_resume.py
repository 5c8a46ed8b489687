"""kill -9 of the whole job (driver, JVM, Python workers) at named points, then a rerun.

Each case runs ``lakecurate run`` in its own process group with ``LAKECURATE_FAULT=<point>``
(:mod:`lakecurate.faults`), so the job dies exactly there, then checks what a lake owner cares
about: no table version ever held part of a run's rows, the ``runs`` table claims no stage that did
not finish, the rerun ends with the same tables bit for bit as an uninterrupted run, and nothing is
left behind (no unreferenced data files once the next run has cleaned up, no block files of the
dead job).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import shutil
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
    "run_id": "faults",  # one run id for a job and its seeded prefix (below)
    "dedup": {"eps": 0.01, "n_clusters": 4, "n_iter": 2},
    "clustering": {"n_clusters": [24, 6], "resample_size": [1, 3], "n_resampling_steps": 1, "n_iter": 3},
    "sampling": {"target_size": 150},
    "report": {"label_column": "item", "html": False},  # the HTML report reads tables only: not what a kill can break
    "spark": {"master": "local[2]", "partitions": 2, "conf": {"spark.sql.shuffle.partitions": 2}},
}
#: the job for kills inside de-duplication, and the (cheaper) one for kills after it
WITH_DEDUP = ["dedup", "cluster", "sample"]
WITHOUT_DEDUP = ["cluster", "sample"]
#: where the job is killed: inside a stage's work, between levels, inside each kind of commit
POINTS = [
    ("dedup:pairwise", WITH_DEDUP),
    ("commit:files_written:table=duplicates", WITH_DEDUP),
    ("cluster:iteration:iteration=2:level=1", WITHOUT_DEDUP),
    ("cluster:level_saved:level=1", WITHOUT_DEDUP),  # between levels
    ("commit:committed:table=clusters", WITHOUT_DEDUP),  # the tree committed, its assignments not yet
    ("sample:quotas", WITHOUT_DEDUP),
    ("report:counted", WITHOUT_DEDUP),
    ("commit:files_written:table=runs", WITHOUT_DEDUP),  # a stage's tables committed, its runs row not
]
TABLES = ("duplicates", "clusters", "assignments", "curated")
#: the stage a kill inside a commit stops: the one writing that table (the runs row: the first stage
#: the seeded job runs, sample, whose success row it is)
DIED_IN = {"commit:files_written:table=duplicates": "dedup", "commit:committed:table=clusters": "cluster",
           "commit:files_written:table=runs": "sample"}
#: points after the cluster stage: the killed job starts from a lake in which the stages before
#: are already committed under its run id (as an earlier attempt of the same job leaves it), so
#: it skips them and dies sooner; the lake is built once and copied
SEEDED = {"sample:quotas": ("cluster",), "commit:files_written:table=runs": ("cluster",), "report:counted": ("cluster", "sample")}


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
    """Digests and row counts of uninterrupted runs of both jobs."""
    out = {}
    for stages in (WITH_DEDUP, WITHOUT_DEDUP):
        root = str(tmp_path_factory.mktemp("reference") / "lake")
        res = run(load_plan(data=job(pool, root, stages)), spark=spark)
        out[tuple(stages)] = run_digests(root, res.run_id), {t: len(DeltaTable(res.tables[t]).to_pandas()) for t in res.tables if t in TABLES}
    return out


@pytest.fixture(scope="module")
def seeded(spark, pool, tmp_path_factory):
    """Lakes where the job's first stages are committed (no report: it runs only with the whole job)."""
    out = {}
    for stages in sorted(set(SEEDED.values())):
        root = str(tmp_path_factory.mktemp("seeded") / "lake")
        run(load_plan(data={**job(pool, root, list(stages)), "report": {}}), spark=spark)
        out[stages] = root
    return out


def dead_block_caches():
    """Block-file folders whose executor JVM is gone (this session's own are alive or released)."""
    from lakecurate.spark.block_files import FOLDER, is_alive

    owners = glob.glob(os.path.join(tempfile.gettempdir(), "spark-*", "userFiles-*", FOLDER, "*", "owner.json"))
    return [os.path.dirname(o) for o in owners if not is_alive(json.load(open(o))["jvm_pid"])]


def killed_at(point, pool, stages, tmp_path, seed=None):
    root = str(tmp_path / "lake")
    if seed is not None:
        shutil.copytree(seed, root)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(pool, root, stages)))
    env = {**os.environ, "LAKECURATE_FAULT": point, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": os.path.join(ROOT, "lib") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "lakecurate.cli", "run", str(path)], env=env, cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=600, start_new_session=True)
    assert out.returncode == -signal.SIGKILL, f"the job was not killed at {point}: rc {out.returncode}\n{out.stderr[-3000:]}"
    return root


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


@pytest.mark.parametrize("point, stages", POINTS, ids=[p for p, _ in POINTS])
def test_killed_job_resumes_to_identical_tables_and_leaves_nothing_behind(spark, pool, reference, seeded, tmp_path, monkeypatch,
                                                                          point, stages):
    digests, counts = reference[tuple(stages)]
    all_stages = [*stages, "report"]
    root = killed_at(point, pool, stages, tmp_path, seeded[SEEDED[point]] if point in SEEDED else None)
    assert_no_partial_versions(root, counts)
    done = succeeded(root)
    stage = DIED_IN.get(point, point.split(":")[0])
    assert stage in all_stages
    assert stage not in done, f"runs claims {stage} succeeded though the job died inside it"
    assert set(done) <= set(all_stages) and len(done) == len(set(done))

    # an hour later (the safety margin for writes still in flight), the same job again
    monkeypatch.setattr(lake_module.layout, "ORPHAN_AGE_SECONDS", 0.0)
    res = run(load_plan(data=job(pool, root, stages)), spark=spark)
    assert run_digests(root, res.run_id) == digests
    assert_no_partial_versions(root, counts)
    assert succeeded(root) == sorted(all_stages)  # each stage once: the rerun skips what the killed job committed
    lake = Lake(spark, LakeConfig(root=root))
    leftovers = {t: lake.unreferenced_files(t, older_than_seconds=0) for t in lake.table_names(with_leftovers=True)}
    assert all(not v for v in leftovers.values()), leftovers
    assert not os.path.exists(os.path.join(root, "_checkpoints", res.run_id))
    assert dead_block_caches() == []
