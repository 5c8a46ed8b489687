"""The wheel is all a cluster needs: built from this checkout, installed into a fresh venv, it
carries the job files and the bundled configs, and runs the demo through ``spark-submit`` as the
README writes it (and through ``python -m lakecurate``).

The fresh venv gets lakecurate from the wheel alone (``--no-deps``, no editable install, no
PYTHONPATH); its dependencies (pyspark, faiss, deltalake, ...) come from the project's ``.venv``
through a ``.pth`` file, as a cluster's preinstalled libraries would: installing pyspark and
torch again would cost minutes and gives no more coverage of what this project builds.
"""

from __future__ import annotations

import glob
import json
import os
import site
import subprocess
import sys
import zipfile

import pytest
from deltalake import DeltaTable

from digests import assert_pinned, run_digests

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.spark]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEV_BIN = os.path.dirname(sys.executable)
#: the demo at its e2e size: its tables are pinned bit for bit in pinned_demo.json ("demo-e2e")
SMALL = ["input.synthetic.n=6000", "input.synthetic.dim=16", "input.synthetic.n_concepts=40", "clustering.n_clusters=[120, 30, 8]",
         "clustering.n_iter=8", "clustering.n_resampling_steps=2", "sampling.target_size=1200"]


def sh(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    clean = venv_env(tmp / "venv")  # no PYTHONPATH: pip must not see the checkout's lakecurate as installed
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), ROOT], cwd=str(tmp), env=clean)
    wheel = glob.glob(str(tmp / "dist" / "lakecurate-*.whl"))
    assert len(wheel) == 1, wheel
    venv = tmp / "venv"
    sh([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=clean)
    purelib = glob.glob(str(venv / "lib" / "python3*" / "site-packages"))[0]
    with open(os.path.join(purelib, "dev-deps.pth"), "w") as f:  # the dependencies, not lakecurate (its editable hook is not run)
        f.write("\n".join(p for p in site.getsitepackages() if p.startswith(os.path.dirname(DEV_BIN))) + "\n")
    sh([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-index", wheel[0]], env=clean)
    return tmp, venv, wheel[0]


def venv_env(venv) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_HOME", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), DEV_BIN, env.get("PATH", "")])  # spark-submit: the [spark] extra's script
    return env


def test_the_wheel_carries_jobs_and_configs(fresh_venv):
    _, venv, wheel = fresh_venv
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("lakecurate/jobs/curate.py", "lakecurate/jobs/embed.py", "lakecurate/conf/demo.yaml", "lakecurate/conf/curate.yaml",
                   "lakecurate/spark/log4j2-local.properties", "lakecurate/__main__.py"):
        assert member in names, member
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist: pyspark")]
    assert requires and all("extra ==" in line for line in requires), requires  # Spark only with [spark]
    env = venv_env(venv)
    where = sh([str(venv / "bin" / "python"), "-c", "import lakecurate; print(lakecurate.__file__)"], env=env).stdout.strip()
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout
    assert sh([str(venv / "bin" / "python"), "-m", "lakecurate", "--version"], env=env).stdout.strip().startswith("lakecurate 0.")
    job = sh([str(venv / "bin" / "lakecurate"), "where", "curate"], env=env).stdout.strip()
    assert job.startswith(str(venv)) and os.path.isfile(job)


def test_spark_submit_runs_the_demo_from_the_installed_wheel(fresh_venv):
    tmp, venv, _ = fresh_venv
    root = str(tmp / "lake")
    # as the README writes it, in a shell where the venv is active; a bundled config by name
    line = f'spark-submit --master "local[2]" "$(lakecurate where curate)" demo lake.root={root} ' + " ".join(f"'{o}'" for o in SMALL)
    out = sh(["bash", "-c", f". {venv}/bin/activate && {line}"], env=venv_env(venv), cwd=str(tmp))
    runs = DeltaTable(os.path.join(root, "runs")).to_pandas()
    assert set(runs["stage"]) == {"cluster", "sample", "report"} and (runs["status"] == "succeeded").all()
    assert json.loads(runs["config"].iloc[0])["spark"]["master"] is None  # spark-submit's master won, not the YAML's
    assert DeltaTable(os.path.join(root, "curated")).to_pyarrow_table().num_rows == 1200
    # the summary's balance table: columns name rows covered entropy eff-concepts largest-share kl
    assert "balance over 'concept'" in out.stdout
    lines = {ln.split()[0]: ln.split() for ln in out.stdout.splitlines()
             if ln.strip().startswith(("random ", "curated ")) and len(ln.split()) == 7}
    assert float(lines["curated"][3]) > float(lines["random"][3])  # higher concept entropy
    assert float(lines["curated"][5]) < float(lines["random"][5])  # smaller head share
    assert "level 1 step 0 iter" in out.stdout + out.stderr  # progress was visible (spark-submit merges the driver's stderr into stdout)
    # the same tree, assignments and curated ids, bit for bit, as the code before the issue-10 refactor
    assert_pinned(run_digests(root, runs["run_id"].iloc[0]), "demo-e2e")
