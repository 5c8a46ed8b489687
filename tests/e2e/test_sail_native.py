"""The native Delta backend on a real Delta engine: Sail, a Spark Connect server with Delta of its own.

A local Sail server (``tests/sail_server.py``, in ``.venv-sail``: Sail 0.7.2 accepts Connect
clients up to 4.2, see pyproject's ``[sail]`` extra) serves ``lakecurate`` CLI runs from the same
environment with ``lake.backend=native``: every table is written and read by Sail's Delta.

* The demo curates the tables a classic session pinned bit for bit (``pinned_demo.json``), with and
  without de-duplication; the tables open in delta-rs and polars with the same rows; the report
  reads them through the engine.
* The nightly path (fit, then incremental dedup, assign and top-up on a grown input), a coreset
  and shards: the same tables as the embedded backend (delta-rs commits) on the same engine.
* A kill inside each of the native path's commits, then the same job: the pinned tables.
* Two runs into one lake at once: serialised by the lake's commit lock, each run's rows once.
* A lake on object storage, where commits on this engine cannot be serialised: refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from builders import embeddings_table
from digests import assert_pinned, run_digests

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.spark]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAIL_PYTHON = os.path.join(ROOT, ".venv-sail", "bin", "python")
#: the demo at its e2e size (as tests/e2e/test_wheel.py): pinned as "demo-e2e"
SMALL = ["input.synthetic.n=6000", "input.synthetic.dim=16", "input.synthetic.n_concepts=40", "clustering.n_clusters=[120, 30, 8]",
         "clustering.n_iter=8", "clustering.n_resampling_steps=2", "sampling.target_size=1200"]
#: demo-redundant at its e2e size (as tests/e2e/test_spark_connect.py): pinned as "demo-redundant-e2e"
REDUNDANT = ["input.synthetic.n=2500", "input.synthetic.dim=16", "input.synthetic.n_concepts=30", "input.synthetic.n_items=1000",
             "dedup.n_clusters=4", "dedup.n_iter=2", "clustering.n_clusters=[30, 6]", "clustering.n_iter=3",
             "clustering.resample_size=[1, 3]", "clustering.n_resampling_steps=1", "sampling.target_size=400"]


def pinned(name: str) -> dict:
    with open(os.path.join(os.path.dirname(__file__), "pinned_demo.json")) as f:
        return json.load(f)[name]


@pytest.fixture(scope="module")
def sail():
    """``sc://...`` of a Sail server started for this module (its own process group, stopped after)."""
    assert os.path.exists(SAIL_PYTHON), f"{SAIL_PYTHON} is missing: scripts/setup.sh (make test) creates it"
    proc = subprocess.Popen([SAIL_PYTHON, os.path.join(ROOT, "tests", "sail_server.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True, env={**os.environ, "RUST_LOG": "error"})
    try:
        remote = proc.stdout.readline().strip()
        assert remote.startswith("sc://"), f"the Sail server did not start (exit {proc.poll()})"
        yield remote
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def sail_env(remote) -> dict:
    """This environment, less what points at the suite's own Python and Spark."""
    drop = ("PYTHONPATH", "LAKECURATE_FAULT", "SPARK_HOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "SPARK_REMOTE": remote, "RUST_LOG": "error"}


def cli(remote, *args, fault=None, check=True, background=False):
    """``lakecurate`` from the Sail environment, on the Sail server."""
    env = sail_env(remote)
    if fault:
        env["LAKECURATE_FAULT"] = fault
    cmd = [SAIL_PYTHON, "-m", "lakecurate", *args]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                                start_new_session=True)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, start_new_session=True)  # a kill takes its group
    if check:
        assert out.returncode == 0, f"{args} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


def succeeded_runs(root, name_prefix="") -> list[str]:
    if not DeltaTable.is_deltatable(os.path.join(root, "runs")):
        return []
    runs = DeltaTable(os.path.join(root, "runs")).to_pandas()
    done = runs[runs["status"] == "succeeded"]
    return sorted({r for r in done["run_id"] if r.startswith(name_prefix)})


def test_the_demo_on_sail_native_delta_gives_the_pinned_tables(sail, tmp_path):
    root = tmp_path / "lake"
    out = cli(sail, "run", "conf/demo.yaml", *SMALL, "lake.backend=native", f"lake.root={root}")
    assert "(native Delta)" in out.stderr and "table versions from the tables' Delta logs" in out.stderr
    [run_id] = succeeded_runs(root, "demo-")
    assert_pinned(run_digests(str(root), run_id), "demo-e2e")
    # the report was gathered through the engine and written
    assert os.path.exists(root / "reports" / run_id / "index.html")
    # what Sail wrote opens in delta-rs and polars with the same rows
    import polars as pl

    for name in ("clusters", "assignments", "curated", "runs"):
        rs = DeltaTable(str(root / name)).to_pyarrow_table()
        po = pl.read_delta(str(root / name)).to_arrow()
        assert po.num_rows == rs.num_rows > 0
        key = "id" if "id" in rs.column_names else rs.column_names[0]
        assert sorted(map(str, po.column(key).to_pylist())) == sorted(map(str, rs.column(key).to_pylist()))


def test_dedup_then_curation_on_sail_native_delta_gives_the_pinned_tables(sail, tmp_path):
    root = tmp_path / "lake"
    cli(sail, "run", "conf/demo-redundant.yaml", *REDUNDANT, "lake.backend=native", f"lake.root={root}")
    [run_id] = succeeded_runs(root)
    assert_pinned(run_digests(str(root), run_id), "demo-redundant-e2e")


@pytest.mark.parametrize("point", ["commit:ready:table=clusters", "commit:committed:table=assignments"])
def test_a_kill_inside_a_native_commit_then_the_same_job_gives_the_pinned_tables(sail, tmp_path, point):
    root = tmp_path / "lake"
    args = ("run", "conf/demo.yaml", *SMALL, "lake.backend=native", f"lake.root={root}")
    killed = cli(sail, *args, fault=point, check=False)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    assert succeeded_runs(root, "demo-") == [] or point.startswith("commit:committed")
    cli(sail, *args)
    [run_id] = succeeded_runs(root, "demo-")
    assert_pinned(run_digests(str(root), run_id), "demo-e2e")


def test_two_runs_into_one_lake_at_once_land_each_row_once(sail, tmp_path):
    """Two attempts of one run and a third run of another size, at once, into one lake: the lake's
    commit lock serialises their commits (Sail cannot make an append conditional on what it was
    computed from), so each run's rows land once and the first run's tables are the pinned ones."""
    root = tmp_path / "lake"
    base = ("run", "conf/demo.yaml", *SMALL, "lake.backend=native", f"lake.root={root}")
    procs = [cli(sail, *base, background=True), cli(sail, *base, background=True),
             cli(sail, *base, "sampling.target_size=900", background=True)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-1500:] for o in outs)
    runs = succeeded_runs(root, "demo-")
    assert len(runs) == 2
    digests = {r: run_digests(str(root), r) for r in runs}
    assert pinned("demo-e2e") in digests.values()
    for r in runs:
        assert digests[r]["assignments"]["rows"] == 6000
    curated = DeltaTable(str(root / "curated")).to_pandas()
    assert sorted(curated.groupby("run_id").size().tolist()) == [900, 1200]
    assert not curated.duplicated(["run_id", "id"]).any()


def test_a_lake_on_object_storage_is_refused_in_one_line_on_this_engine(sail, tmp_path):
    out = cli(sail, "run", "conf/demo.yaml", *SMALL, "lake.backend=native", "lake.root=s3://nonexistent-bucket-lakecurate/lake",
              check=False)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("lakecurate: error:") and "lake.root='s3://nonexistent-bucket-lakecurate/lake'" in last
    assert "lake.backend=embedded" in last


# ---------------------------------------------------------------- nightly, coreset, shards

N, NEW, D = 1500, 240, 8
CLUSTERING = {"n_clusters": [20, 4], "n_resampling_steps": 1, "resample_size": [1, 2], "n_iter": 3, "seed": 1}


def write_config(path, cfg: dict) -> str:
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return str(path)


@pytest.fixture(scope="module")
def grown_inputs(tmp_path_factory):
    from lakecurate.core.synthetic import long_tailed_pool

    tmp = tmp_path_factory.mktemp("sail-inputs")
    x = long_tailed_pool(N + NEW, D, 12, alpha=0.8, spread=0.3, seed=3).x.copy()
    x[N + 10: N + 20] = x[5:15]  # exact duplicates of kept rows among the new ones
    first, grown, target = tmp / "first", tmp / "grown", tmp / "target"
    for folder in (first, grown, target):
        folder.mkdir()
    pq.write_table(embeddings_table(x[:N]), first / "part-0.parquet")
    pq.write_table(embeddings_table(x[:N]), grown / "part-0.parquet")
    pq.write_table(embeddings_table(x[N:], ids=np.arange(N, N + NEW)), grown / "part-1.parquet")
    pq.write_table(embeddings_table(x[:40] + 0.01, ids=np.arange(10_000, 10_040)), target / "part-0.parquet")
    return tmp, first, grown, target


def nightly_tables(sail, tmp, first, grown, target, backend) -> tuple[str, dict]:
    root = tmp / f"lake-{backend}"
    pool = tmp / f"pool-{backend}"  # fitted with the first file, then grown in place: the nightly run reads the new file only
    pool.mkdir()
    shutil.copy2(grown / "part-0.parquet", pool / "part-0.parquet")
    common = {"lake": {"root": str(root), "backend": backend}, "clustering": CLUSTERING, "spark": {"partitions": 2}}
    fit = {"name": "fit", "stages": ["dedup", "cluster", "sample", "shards"], "input": {"format": "parquet", "path": str(pool)},
           "dedup": {"eps": 0.01, "n_iter": 2}, "sampling": {"target_size": 300}, "shards": {"payload_columns": ["embedding"]}, **common}
    nightly = {"name": "nightly", "stages": ["dedup", "assign", "sample"], "input": {"format": "parquet", "path": str(pool)},
               "dedup": {"mode": "incremental", "eps": 0.01, "n_iter": 2}, "sampling": {"target_size": 360, "mode": "top_up"}, **common}
    coreset = {"name": "coreset", "stages": ["coreset"], "input": {"format": "parquet", "path": str(pool)},
               "coreset": {"target": {"format": "parquet", "path": str(target)}, "n_centroids": 4, "patience": 3}, **common}
    cli(sail, "run", write_config(tmp / f"fit-{backend}.yaml", fit))
    shutil.copy2(grown / "part-1.parquet", pool / "part-1.parquet")
    for name, cfg in (("nightly", nightly), ("coreset", coreset)):
        cli(sail, "run", write_config(tmp / f"{name}-{backend}.yaml", cfg))
    runs = DeltaTable(str(root / "runs")).to_pandas()
    read = [json.loads(m).get("input_read", m) for m in runs[(runs.stage == "assign") & (runs.status == "succeeded")]["metrics"]]
    assert read == [{"read": "increment", "files": 1, "of_files": 2}], read
    again = cli(sail, "run", write_config(tmp / f"nightly-{backend}.yaml", nightly), "run_id=nightly-again")  # nothing new to assign
    assert "assign: 0 new rows" in again.stdout
    tables = {}
    for name in ("clusters", "assignments", "curated", "duplicates", "coreset", "shards"):
        t = DeltaTable(str(root / name)).to_pandas()
        t = t.drop(columns=[c for c in t.columns if c in ("added_in", "dropped_in", "run_id", "tree_run_id", "shard_run")])  # run ids: the backend is in the config
        key = [c for c in ("level", "cluster_id", "id", "cluster") if c in t.columns]
        # columns by name: the engines place a table's partition columns (shards: shard) differently
        tables[name] = t.sort_values(key).reset_index(drop=True)[sorted(t.columns)]
    return str(root), tables


def test_nightly_coreset_and_shards_on_native_delta_equal_the_embedded_backends(sail, grown_inputs):
    tmp, first, grown, target = grown_inputs
    native_root, native = nightly_tables(sail, tmp, first, grown, target, "native")
    _, embedded = nightly_tables(sail, tmp, first, grown, target, "embedded")
    assignments = native["assignments"]
    assert len(assignments) == assignments["id"].nunique()  # each row once, after a rerun
    clusters = native["clusters"]
    assert int(clusters[clusters["level"] == 1]["size"].sum()) == len(assignments)
    assert len(assignments) + len(native["duplicates"]) >= N + NEW - 10  # the new duplicates were removed, not assigned
    assert len(native["coreset"]) > 0 and len(native["shards"]) == 300
    for name in native:
        a, b = native[name], embedded[name]
        assert list(a.columns) == list(b.columns), name
        assert a.equals(b), name


SCHEMA_CHECK = """
import json, sys
import pyarrow as pa
from pyspark.sql import SparkSession
from lakecurate.config import LakeConfig
from lakecurate.errors import TableError
from lakecurate.lake import Lake

spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
lake = Lake(spark, LakeConfig(root=sys.argv[2], backend="native"))
lake.write_arrow(pa.table({"id": pa.array([1, 2, 3], pa.int64()), "score": pa.array([0.5, 0.25, 1.0])}), "scores", "r1")
out = {}
for what, table in (("type", pa.table({"id": pa.array(["a"]), "score": pa.array([0.5])})),
                    ("column", pa.table({"id": pa.array([4], pa.int64()), "score": pa.array([0.5]), "extra": pa.array([1])}))):
    try:
        lake.write_arrow(table, "scores", "r2", append=True)
        out[what] = None
    except TableError as exc:
        out[what] = str(exc)
out["rows"] = sorted(r["id"] for r in lake.read_small("scores"))
out["version"] = lake.version("scores")
print(json.dumps(out))
"""


def test_a_native_write_that_does_not_match_the_table_is_refused_and_nothing_is_written(sail, tmp_path):
    """Sail would append a frame of another schema as it is: the native backend checks first."""
    script = tmp_path / "schema_check.py"  # a file: under -c, pyspark-client looks for a SPARK_HOME and fails
    script.write_text(SCHEMA_CHECK)
    proc = subprocess.run([SAIL_PYTHON, str(script), sail, str(tmp_path / "lake")], capture_output=True, text=True,
                          env=sail_env(sail), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "table 'scores' has a different schema" in out["type"] and "('id', 'int64', 'string')" in out["type"]
    assert "new columns ['extra']" in out["column"]
    assert out["rows"] == [1, 2, 3] and out["version"] == 0


@pytest.mark.parametrize("backend", ["native", "embedded"])
def test_both_backends_keep_the_table_contract_on_one_engine(sail, tmp_path, backend):
    """Atomic replace of a run, time travel, an append with commit metadata, a conditional append
    refused once its run changed, concurrent appends, a schema refused, the log readable by the
    protocol reader, a non-Delta path refused: the same answers from both backends. Schema gain
    (an older table's missing columns) lands on embedded and is refused in one line on Sail."""
    proc = subprocess.run([SAIL_PYTHON, os.path.join(ROOT, "tests", "e2e", "sail_contract.py"), sail, str(tmp_path / "lake"), backend],
                          capture_output=True, text=True, env=sail_env(sail), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == backend
    assert out["replace"] == [["a", 4], ["a", 5], ["b", 10], ["b", 11]] and out["run_a"] == [["a", 4], ["a", 5]]
    assert out["time_travel"] == [["a", 1], ["a", 2], ["a", 3], ["b", 10], ["b", 11]]
    assert out["commit_metadata"] == {"lakecurate.increment": "n1"}
    assert "run 'a''s rows" in out["stale_append"] and "after version" in out["stale_append"] and "nothing was" in out["stale_append"]
    assert out["concurrent_errors"] == [] and out["concurrent"] == [[f"c{i}", 100 + i] for i in range(4)]
    assert "table 'scores' has a different schema" in out["mismatch"] and out["version_unchanged"]
    assert out["reader_rows"] == out["engine_rows"] == 2 + 2 + 2 + 4
    assert out["not_delta"].startswith("input.path=") and "plain" in out["not_delta"]
    if backend == "embedded":  # delta-rs adds the columns in one schema change, then the write lands
        assert out["gain"] == ["added_in", "cluster", "dropped_in", "id", "run_id"] and out["gain_versions"] == [0, 2]
    else:  # Sail has no ALTER TABLE ... ADD COLUMNS: refused in one line, nothing written
        assert "written by an older lakecurate without the column(s) ['added_in', 'dropped_in']" in out["gain"]
        assert out["gain_versions"] == [0, 0]
