"""The native backend's commit lock: one lakecurate process commits to a local lake at a time,
and a killed holder never leaves the lake locked (the operating system releases it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from lakecurate.lake.native import commit_lock, is_conflict

HOLD = """
import sys, time
from lakecurate.lake.native import commit_lock
with commit_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def holder(root, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_waits_for_the_first_commit(tmp_path):
    proc = holder(tmp_path, 1.5)
    t0 = time.monotonic()
    with commit_lock(str(tmp_path)):
        waited = time.monotonic() - t0
    proc.wait()
    assert waited > 0.8  # it could not commit while the other held the lock


def test_a_killed_holder_leaves_the_lake_unlocked(tmp_path):
    proc = holder(tmp_path, 600)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    with commit_lock(str(tmp_path)):
        assert time.monotonic() - t0 < 5


def test_object_store_roots_take_no_file_lock(tmp_path):
    with commit_lock("s3://bucket/lake"):
        pass
    assert not os.path.exists(tmp_path / "_locks")


def test_only_real_commit_conflicts_are_retried():
    assert is_conflict(Exception("io.delta.exceptions.ConcurrentAppendException: Files were added to partition [run_id=a]"))
    assert is_conflict(Exception("[DELTA_CONCURRENT_DELETE_READ] ConcurrentDeleteReadException"))
    assert is_conflict(Exception("Failed to commit transaction: 3"))  # Sail
    assert not is_conflict(Exception("[PATH_ALREADY_EXISTS] Path file:/lake/x already exists"))
    assert not is_conflict(Exception("[DELTA_TABLE_ALREADY_EXISTS] Table x already exists"))
