"""The real command line in a fresh process (the demo through `spark-submit` from the installed wheel:
test_wheel.py)."""

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.spark]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def env():
    e = dict(os.environ)
    e["PYSPARK_PYTHON"] = sys.executable
    e["PYSPARK_DRIVER_PYTHON"] = sys.executable
    e["PYTHONPATH"] = os.path.join(ROOT, "lib") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def test_bad_config_exits_2_with_the_key_named(tmp_path):
    cmd = [sys.executable, "-m", "lakecurate.cli", "run", os.path.join(ROOT, "conf", "demo.yaml"), "sampling.strategy=nearest"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=120)
    assert out.returncode == 2
    assert "sampling.strategy='nearest' is not one of" in out.stderr
