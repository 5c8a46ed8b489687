"""A local Spark Connect session (``spark.remote=local[n]``) when another process holds the default
port 15002: it starts on a free port and works, instead of failing with a raw Py4J BindException
(or dialling the other process's server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.spark, pytest.mark.connect]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from lakecurate.spark.session import get_spark
spark = get_spark(None, "port-test", {"spark.sql.shuffle.partitions": "2"}, remote="local[1]")
print("rows", spark.range(7).count())
spark.stop()
"""


def test_a_second_local_connect_server_takes_a_free_port(tmp_path):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 15002))
        holder.listen(1)  # a server that is not Spark: dialling it would hang or fail
    except OSError:
        holder.close()
        holder = None  # another process of the suite holds it already: busy all the same
    try:
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": os.path.join(ROOT, "lib")}
        env.pop("SPARK_REMOTE", None)
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    finally:
        if holder is not None:
            holder.close()
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "rows 7" in out.stdout
    assert "port 15002 is taken" in out.stdout and "BindException" not in out.stderr
