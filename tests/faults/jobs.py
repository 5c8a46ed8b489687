"""What the fault tests share: reading a table, two runs forced to race in one session, a job
killed at a named point in a process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import yaml
from deltalake import DeltaTable

import lakecurate.lake as lake_module
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def frame(root, name):
    return DeltaTable(os.path.join(root, name)).to_pandas()


class RaceAt:
    """Makes ``count`` writers of ``table`` wait for each other right before their (first) commit,
    so each computed its rows from the same snapshot: the race the commit must survive."""

    def __init__(self, monkeypatch, table, count=2):
        self.table, self.barrier, self.calls = table, threading.Barrier(count, timeout=120), 0
        real = lake_module.Lake._write
        race = self

        def write(lake, df, name, **kw):
            if name == race.table and race.calls < count:
                race.calls += 1
                df = df.cache()
                df.count()  # the rows computed before either commits
                race.barrier.wait()
            return real(lake, df, name, **kw)

        monkeypatch.setattr(lake_module.Lake, "_write", write)


def run_together(spark, configs):
    results, errors = {}, {}

    def go(key, cfg):
        try:
            results[key] = run(load_plan(data=cfg), spark=spark)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors[key] = exc

    threads = [threading.Thread(target=go, args=(k, c)) for k, c in configs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def killed_at(point, cfg, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "LAKECURATE_FAULT": point, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": os.path.join(ROOT, "lib") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "lakecurate.cli", "run", str(path)], env=env, cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=600, start_new_session=True)
    assert out.returncode == -signal.SIGKILL, f"the job was not killed at {point}: rc {out.returncode}\n{out.stderr[-3000:]}"
