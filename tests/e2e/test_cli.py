"""The real command line, end to end, in fresh processes: `lakecurate run` and `spark-submit`."""

import json
import os
import subprocess
import sys

import pytest
from deltalake import DeltaTable

from digests import run_digests

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.spark]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def env():
    e = dict(os.environ)
    e["PYSPARK_PYTHON"] = sys.executable
    e["PYSPARK_DRIVER_PYTHON"] = sys.executable
    e["PYTHONPATH"] = os.path.join(ROOT, "lib") + os.pathsep + e.get("PYTHONPATH", "")
    return e


SMALL = [
    "input.synthetic.n=6000",
    "input.synthetic.dim=16",
    "input.synthetic.n_concepts=40",
    "clustering.n_clusters=[120, 30, 8]",
    "clustering.n_iter=8",
    "clustering.n_resampling_steps=2",
    "sampling.target_size=1200",
    "spark.master=local[2]",
]


def test_demo_config_through_the_cli(tmp_path):
    root = str(tmp_path / "lake")
    cmd = [sys.executable, "-m", "lakecurate.cli", "run", os.path.join(ROOT, "conf", "demo.yaml"), f"lake.root={root}", *SMALL]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "balance over 'concept'" in out.stdout
    lines = {
        l.split()[0]: l.split()
        for l in out.stdout.splitlines()
        if l.strip().startswith(("random ", "curated ")) and len(l.split()) == 7
    }
    # columns: name rows covered entropy eff-concepts largest-share kl
    assert float(lines["curated"][3]) > float(lines["random"][3])  # higher concept entropy
    assert float(lines["curated"][5]) < float(lines["random"][5])  # smaller head share
    assert DeltaTable(os.path.join(root, "curated")).to_pyarrow_table().num_rows == 1200
    # progress was visible while it ran
    assert "level 1 step 0 iter" in out.stderr
    # the same tree, assignments and curated ids, bit for bit, as the code before the issue-10 refactor
    run_id = DeltaTable(os.path.join(root, "runs")).to_pandas()["run_id"].iloc[0]
    with open(os.path.join(os.path.dirname(__file__), "pinned_demo.json")) as f:
        pinned = json.load(f)["demo-e2e"]
    got = run_digests(root, run_id)
    assert got == pinned, f"demo tables changed: got {got}, pinned {pinned} (recorded on an x86-64 AVX-512 machine)"


def test_bad_config_exits_2_with_the_key_named(tmp_path):
    cmd = [sys.executable, "-m", "lakecurate.cli", "run", os.path.join(ROOT, "conf", "demo.yaml"), "sampling.strategy=nearest"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=120)
    assert out.returncode == 2
    assert "sampling.strategy='nearest' is not one of" in out.stderr


def test_spark_submit_job(tmp_path):
    spark_submit = os.path.join(BIN, "spark-submit")
    if not os.path.exists(spark_submit):
        pytest.fail(f"spark-submit not found next to {sys.executable}")
    root = str(tmp_path / "lake")
    cmd = [spark_submit, "--master", "local[2]", os.path.join(ROOT, "jobs", "curate.py"),
           os.path.join(ROOT, "conf", "demo.yaml"), f"lake.root={root}", *SMALL[:-1], "report.label_column=null"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    runs = DeltaTable(os.path.join(root, "runs")).to_pandas()
    assert set(runs["stage"]) == {"cluster", "sample"} and (runs["status"] == "succeeded").all()
    cfg = json.loads(runs["config"].iloc[0])
    assert cfg["spark"]["master"] is None  # spark-submit's master won, not the YAML's
