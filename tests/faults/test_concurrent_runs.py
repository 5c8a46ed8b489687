"""Runs into one lake at the same time: the same config twice and another config, all at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from deltalake import DeltaTable

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


def test_same_and_different_runs_at_once_leave_each_run_once(spark, tmp_path):
    npy = save_npy(tmp_path, np.random.default_rng(5).normal(size=(600, 6)).astype(np.float32))
    alone = run(plan(npy, str(tmp_path / "alone"), 100), spark=spark)
    expected = run_digests(str(tmp_path / "alone"), alone.run_id)

    root = str(tmp_path / "shared")
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
    assert results["a1"].run_id == results["a2"].run_id != results["b"].run_id
    assert run_digests(root, results["a1"].run_id) == expected  # the same config twice: its rows once, whole
    curated = DeltaTable(f"{root}/curated").to_pandas()
    assert curated.groupby("run_id").size().to_dict() == {results["a1"].run_id: 100, results["b"].run_id: 50}
    assignments = DeltaTable(f"{root}/assignments").to_pandas()
    assert set(assignments.groupby("run_id").size()) == {600}
