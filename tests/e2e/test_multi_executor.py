"""Several executors, each with its own work directory (Spark's ``local-cluster`` master).

Block files live in the executor that cached a partition; these tests show that k-means passes
find them there (no fallback), that the tree equals the in-process one, that releasing the cache
deletes them on every executor, and that a whole ``lakecurate run`` commits its tables. Both run
in one local-cluster application (starting one costs ~20 s).
"""

import json
import os
import subprocess
import sys

import pytest
from deltalake import DeltaTable

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.spark]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MASTER = "local-cluster[2,1,1024]"  # 2 executor JVMs, 1 core and 1 GiB each

SCRIPT = r"""
import json, os, sys
import numpy as np, pyarrow as pa
from lakecurate.core.in_process import NumpyAssigner
from lakecurate.core.hierarchy import LevelParams, fit_hierarchy
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.spark.arrow import matrix_to_list_array
from lakecurate.spark.assigner import SparkAssigner
from lakecurate.spark.blocks import EmbeddingBlocks
from lakecurate.spark.session import get_spark

# a task waits for the executor that cached its partition (Spark gives up after 3 s by default, which a
# loaded machine reaches: the pass is then right but re-runs the partition on streamed blocks)
spark = get_spark(sys.argv[1], "multi-executor-test", {"spark.driver.memory": "1g", "spark.locality.wait": "60s"})
x = long_tailed_pool(4000, 12, 30, seed=3).x
df = spark.createDataFrame(pa.table({"id": pa.array(np.arange(len(x), dtype=np.int64)), "embedding": matrix_to_list_array(x)}).to_pandas())
params = [LevelParams(40, n_iter=6), LevelParams(8, resample_size=3, n_resampling_steps=1, n_iter=6)]
ref = fit_hierarchy(NumpyAssigner(x), params, 11)
blocks = EmbeddingBlocks.from_dataframe(spark, df, id_column="id", embedding_column="embedding", partitions=4)
got = fit_hierarchy(SparkAssigner(blocks), params, 11)

def files_here(batches):
    from pyspark import SparkFiles
    for _ in batches:
        pass
    root = os.path.join(SparkFiles.getRootDirectory(), "lakecurate-blocks")
    n = sum(len(f) for _, _, f in os.walk(root)) if os.path.isdir(root) else 0
    yield pa.record_batch({"workdir": pa.array([os.path.abspath(SparkFiles.getRootDirectory())]), "files": pa.array([n])})

before = [r.asDict() for r in blocks.frame.select("part").mapInArrow(files_here, "workdir STRING, files LONG").collect()]
passes, fallback = blocks.passes, blocks.fallback_partitions
blocks.release()

def files_now(_):
    import time
    from pyspark import SparkFiles
    time.sleep(0.2)  # keep both executors busy so both get tasks
    root = os.path.join(SparkFiles.getRootDirectory(), "lakecurate-blocks")
    yield {"workdir": os.path.abspath(SparkFiles.getRootDirectory()), "files": sum(len(f) for _, _, f in os.walk(root)) if os.path.isdir(root) else 0}

after = spark.sparkContext.parallelize(range(16), 16).mapPartitions(files_now).collect()
same = all(np.array_equal(a.centroids, b.centroids) and np.array_equal(a.sizes, b.sizes) and a.objective == b.objective for a, b in zip(ref, got))
print("RESULT " + json.dumps({"executors": spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1,
      "passes": passes, "fallback": fallback, "same": bool(same), "before": before, "after": after}))

# then a whole `lakecurate run` in the same application (the CLI reuses the active session)
from lakecurate.cli import main
print("RUN_RC", main(["run", *sys.argv[2:]]))
spark.stop()
"""

RUN_ARGS = [
    os.path.join(ROOT, "conf", "demo.yaml"), f"spark.master={MASTER}",
    "input.synthetic.n=4000", "input.synthetic.dim=16", "input.synthetic.n_concepts=30",
    "clustering.n_clusters=[80,20,5]", "clustering.resample_size=[1,3,2]", "clustering.n_iter=5",
    "clustering.n_resampling_steps=1", "sampling.target_size=800",
]


def env(tmp_path):
    e = dict(os.environ)
    e["PYSPARK_PYTHON"] = sys.executable
    e["PYSPARK_DRIVER_PYTHON"] = sys.executable
    e["PYTHONPATH"] = os.path.join(ROOT, "lib") + os.pathsep + e.get("PYTHONPATH", "")
    return e


@pytest.fixture(scope="module", autouse=True)
def _remove_executor_work_dirs():
    """local-cluster executors work in $SPARK_HOME/work/app-*/ (logs, SparkFiles); remove the new ones."""
    import shutil

    import pyspark

    work = os.path.join(os.path.dirname(pyspark.__file__), "work")
    before = set(os.listdir(work)) if os.path.isdir(work) else set()
    yield
    if os.path.isdir(work):
        for name in set(os.listdir(work)) - before:
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
        if not os.listdir(work):
            os.rmdir(work)


@pytest.fixture(scope="module")
def two_executors(tmp_path_factory):
    """(the script's output, the lake root of its `lakecurate run`)."""
    tmp = tmp_path_factory.mktemp("multi")
    root = str(tmp / "lake")
    cmd = [sys.executable, "-c", SCRIPT, MASTER, *RUN_ARGS, f"lake.root={root}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(tmp), timeout=900, cwd=str(tmp)), root


def test_block_files_stay_with_their_executor_and_give_the_in_process_tree(two_executors):
    out, _ = two_executors
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, out.stderr[-4000:]
    r = json.loads(lines[0][len("RESULT "):])
    assert r["executors"] == 2
    assert r["same"] and r["passes"] > 5 and r["fallback"] == 0  # every pass found its files locally
    workdirs = {b["workdir"] for b in r["before"]}
    assert len(workdirs) == 2  # partitions were cached (and their files written) on both executors
    assert all(b["files"] > 0 for b in r["before"])
    assert {a["workdir"] for a in r["after"]} == workdirs  # looked again on both executors ...
    assert all(a["files"] == 0 for a in r["after"])  # ... release() deleted the files everywhere


def test_lakecurate_run_on_two_executors_commits_its_tables(two_executors):
    out, root = two_executors
    assert "RUN_RC 0" in out.stdout, out.stderr[-4000:]
    curated = DeltaTable(os.path.join(root, "curated")).to_pandas()
    assignments = DeltaTable(os.path.join(root, "assignments")).to_pandas()
    assert len(curated) == 800 and curated["id"].is_unique
    assert len(assignments) == 4000 and assignments["id"].is_unique
    runs = DeltaTable(os.path.join(root, "runs")).to_pandas()
    cluster = json.loads(runs[runs.stage == "cluster"].metrics.iloc[-1])
    assert cluster["block_cache"] == "local_files" and cluster["block_file_fallback_partitions"] == 0
