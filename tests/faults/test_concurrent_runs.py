"""Runs into one lake at the same time: the same config twice and another config, all at once.

The three meet in front of their first commit of ``clusters`` (a table none of them has created
yet), and the two that lose the race to create it meet again in front of their commit to it: the
test sees both races happen (a lost creation, a lost commit retried on a fresh snapshot) rather
than hoping the scheduler makes them."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from deltalake import DeltaTable

import lakecurate.lake as lake_module
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import save_npy
from digests import run_digests

pytestmark = [pytest.mark.faults, pytest.mark.spark]


def plan(npy, root, target):
    return load_plan(data={
        "name": "conc", "lake": {"root": root}, "input": {"format": "npy", "path": npy},
        "clustering": {"n_clusters": [12, 3], "n_iter": 3, "n_resampling_steps": 0, "seed": 4},
        "sampling": {"target_size": target}, "spark": {"master": "local[2]", "partitions": 2},
    })


class MeetBeforeCommits:
    """The n-th passage of each thread through ``commit:ready`` for ``table`` waits for
    ``counts[n]`` threads (0-based; passages past the list go through)."""

    def __init__(self, monkeypatch, table, counts):
        self.barriers = [threading.Barrier(c, timeout=120) for c in counts]
        self.passages = threading.local()
        real = lake_module.fault_point

        def point(name, **context):
            if name == "commit:ready" and context.get("table") == table:
                n = getattr(self.passages, "n", 0)
                self.passages.n = n + 1
                if n < len(self.barriers):
                    self.barriers[n].wait()
            return real(name, **context)

        monkeypatch.setattr(lake_module, "fault_point", point)


def test_same_and_different_runs_at_once_leave_each_run_once(spark, tmp_path, monkeypatch, caplog):
    npy = save_npy(tmp_path, np.random.default_rng(5).normal(size=(600, 6)).astype(np.float32))
    alone = run(plan(npy, str(tmp_path / "alone"), 100), spark=spark)
    expected = run_digests(str(tmp_path / "alone"), alone.run_id)

    root = str(tmp_path / "shared")
    MeetBeforeCommits(monkeypatch, "clusters", [3, 2])
    caplog.set_level(logging.INFO, logger="lakecurate.lake")
    results, errors = {}, []

    def go(key, target):
        try:
            results[key] = run(plan(npy, root, target), spark=spark)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=a) for a in (("a1", 100), ("a2", 100), ("b", 50))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    said = [r.getMessage() for r in caplog.records if r.name == "lakecurate.lake"]
    created = [m for m in said if m.startswith("table clusters was created by a concurrent writer")]
    lost = [m for m in said if m.startswith("commit to clusters conflicted with a concurrent commit (attempt 1 of 12")]
    assert len(created) == 2 and len(lost) >= 1, said
    assert results["a1"].run_id == results["a2"].run_id != results["b"].run_id
    assert run_digests(root, results["a1"].run_id) == expected  # the same config twice: its rows once, whole
    curated = DeltaTable(f"{root}/curated").to_pandas()
    assert curated.groupby("run_id").size().to_dict() == {results["a1"].run_id: 100, results["b"].run_id: 50}
    assignments = DeltaTable(f"{root}/assignments").to_pandas()
    assert set(assignments.groupby("run_id").size()) == {600}
