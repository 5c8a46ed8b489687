"""The nightly path (assign + top-up, incremental dedup) under the main path's guarantees.

* Two runs at once, forced to race: both compute their rows from one snapshot before either
  commits (a barrier in front of the commits), for two attempts of one run and for two runs of
  different ids. The tree's rows land once, its sizes count them, each top-up keeps its lineage
  or is refused in one line.
* A kill inside each of the nightly path's commits (``kill -9`` of the job, as in
  ``test_kill_resume.py``), one after another: each attempt of the same job resumes what the
  killed one left and is killed at the next commit; the last runs to the end, and the tables
  equal an uninterrupted run's.
* A tree whose sizes a killed run left stale is refused by a fresh sample, with nothing written,
  and repaired by the next assign, new rows or not.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import lakecurate.lake as lake_module
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.errors import TableError
from lakecurate.lake import Lake
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import embeddings_table
from digests import run_digests
from faults.jobs import RaceAt, frame, killed_at, run_together

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.spark]

N, NEW, D = 1500, 240, 8
CLUSTERING = {"n_clusters": [20, 4], "n_resampling_steps": 1, "resample_size": [1, 2], "n_iter": 3, "seed": 1}
SPARK = {"master": "local[2]", "partitions": 2, "conf": {"spark.sql.shuffle.partitions": 2}}


def nightly(root, grown, **extra) -> dict:
    return {"name": "nightly", "stages": ["dedup", "assign", "sample"], "lake": {"root": str(root)},
            "input": {"format": "parquet", "path": str(grown)}, "clustering": CLUSTERING,
            "dedup": {"mode": "incremental", "eps": 0.01, "n_iter": 2},
            "sampling": {"target_size": 360, "mode": "top_up"}, "spark": SPARK, **extra}


def fit_config(root, first, **extra) -> dict:
    return {"name": "fit", "stages": ["dedup", "cluster", "sample"], "lake": {"root": str(root)},
            "input": {"format": "parquet", "path": str(first)}, "clustering": CLUSTERING,
            "dedup": {"eps": 0.01, "n_iter": 2}, "sampling": {"target_size": 300}, "spark": SPARK, **extra}


def assign_only(root, grown, run_id) -> dict:
    return {**nightly(root, grown, run_id=run_id), "stages": ["assign"]}


@pytest.fixture(scope="module")
def fitted(spark, tmp_path_factory):
    """A lake with a tree fitted (and sampled) on the first N rows of a Parquet folder, which then
    grows in place to N + NEW (five of the new rows copies of fitted ones: the incremental dedup has
    rows to remove): each nightly run reads the new file only (``input_read``), as on a real lake."""
    base = tmp_path_factory.mktemp("nightly")
    x = long_tailed_pool(N + NEW, D, 12, alpha=0.8, spread=0.3, seed=3).x
    x[N : N + 5] = x[:5]
    ids = np.arange(N + NEW, dtype=np.int64)
    grown = base / "grown"
    grown.mkdir()
    pq.write_table(embeddings_table(x[:N], ids=ids[:N]), grown / "part-0.parquet")
    seed = base / "seed"
    fit = run(load_plan(data=fit_config(seed, grown)), spark=spark)
    pq.write_table(embeddings_table(x[N:], ids=ids[N:]), base / "part-1.parquet")
    shutil.copy2(base / "part-1.parquet", grown / "part-1.parquet")
    alone, assigned = base / "alone", base / "assigned"
    shutil.copytree(seed, alone)
    shutil.copytree(seed, assigned)
    ref = run(load_plan(data=nightly(alone, grown, run_id="nightly")), spark=spark)  # the run id names no lake root
    assert ref.stages["assign"]["input_read"] == {"read": "increment", "files": 1, "of_files": 2}
    run(load_plan(data=assign_only(assigned, grown, "grow")), spark=spark)
    n_fit = len(frame(str(seed), "assignments"))
    return {"seed": seed, "grown": grown, "increment": base / "part-1.parquet", "tree": fit.run_id, "alone": str(alone),
            "nightly_run": ref.run_id, "assigned": str(assigned), "n_fit": n_fit}


@contextlib.contextmanager
def before_growth(fitted):
    """The input folder as the tree was fitted on it (its new file away), for a run that reuses the fit."""
    os.remove(fitted["grown"] / "part-1.parquet")
    try:
        yield
    finally:
        shutil.copy2(fitted["increment"], fitted["grown"] / "part-1.parquet")  # the same bytes and mtime as before


def lake_copy(fitted, tmp_path) -> str:
    root = tmp_path / "lake"
    shutil.copytree(fitted["seed"], root)
    return str(root)


def assert_tree_counts_its_rows(root, tree):
    """Each id of the tree's assignments once, and every level's sizes counting them."""
    a = frame(root, "assignments")
    a = a[a.run_id == tree]
    assert a["id"].is_unique, f"{a['id'].duplicated().sum()} ids twice in the tree's assignments"
    c = frame(root, "clusters")
    c = c[c.run_id == tree]
    level1 = c[c.level == 1].sort_values("cluster_id")
    np.testing.assert_array_equal(level1["size"].to_numpy(), np.bincount(a["cluster"], minlength=len(level1)))
    for level in sorted(c.level.unique()):
        assert c[c.level == level]["size"].sum() == len(a)
    return len(a)


def tree_digests(fitted, root):
    """What an uninterrupted nightly run leaves: the tree's tables, and the nightly run's curated set."""
    out = run_digests(root, fitted["tree"])
    out.pop("curated", None)  # the fit's own set, which the top-up marks: compared by marks below
    return out


def marks(root, run_id):
    c = frame(root, "curated")
    c = c[c.run_id == run_id].sort_values("id")
    return list(zip(c["id"], c["dropped_in"].fillna("")))


@pytest.mark.parametrize("ids", [("nightly-a", "nightly-a"), ("nightly-a", "nightly-b")], ids=["one-run-twice", "two-runs"])
def test_two_assigns_at_once_append_the_increment_once(spark, fitted, tmp_path, monkeypatch, ids):
    root = lake_copy(fitted, tmp_path)
    race = RaceAt(monkeypatch, "assignments")
    configs = {f"r{i}": assign_only(root, fitted["grown"], run_id) for i, run_id in enumerate(ids)}
    results, errors = run_together(spark, configs)
    assert race.calls == 2, "both runs must reach the assignments commit with rows computed from one snapshot"
    assert not errors, errors
    assert assert_tree_counts_its_rows(root, fitted["tree"]) == fitted["n_fit"] + NEW
    new = sorted(r.stages["assign"]["new_rows"] for r in results.values())
    assert new == [0, NEW], f"one run appends the increment, the other finds it there: {new}"
    assert tree_digests(fitted, root) == tree_digests(fitted, fitted["assigned"])
    # the assignments table got the increment in one version: exactly one commit tagged with an increment
    tagged = [h for h in DeltaTable(os.path.join(root, "assignments")).history() if h.get("lakecurate.increment")]
    assert len(tagged) == 1


@pytest.mark.parametrize("ids", [("nightly", "nightly"), ("nightly", "nightly-b")], ids=["one-run-twice", "two-runs"])
def test_two_incremental_dedups_at_once_leave_each_runs_duplicates_once(spark, fitted, tmp_path, monkeypatch, ids):
    root = lake_copy(fitted, tmp_path)
    race = RaceAt(monkeypatch, "duplicates")
    configs = {f"r{i}": {**nightly(root, fitted["grown"], run_id=run_id), "stages": ["dedup", "assign"]} for i, run_id in enumerate(ids)}
    results, errors = run_together(spark, configs)
    assert race.calls == 2 and not errors, errors
    want = run_digests(fitted["alone"], fitted["nightly_run"])["duplicates"]
    for run_id in set(ids):
        assert run_digests(root, run_id)["duplicates"] == want  # each run's duplicates once, whole
    assert sorted(r.stages["dedup"]["removed"] for r in results.values()) == [want["rows"]] * 2
    assert_tree_counts_its_rows(root, fitted["tree"])


def test_a_rerun_after_a_race_repairs_nothing_and_appends_nothing(spark, fitted, tmp_path):
    root = lake_copy(fitted, tmp_path)
    first = run(load_plan(data=assign_only(root, fitted["grown"], "n1")), spark=spark)
    version = DeltaTable(os.path.join(root, "clusters")).version()
    again = run(load_plan(data=assign_only(root, fitted["grown"], "n2")), spark=spark)
    assert first.stages["assign"]["new_rows"] == NEW and again.stages["assign"]["new_rows"] == 0
    assert "repaired_counts" not in again.stages["assign"]
    assert DeltaTable(os.path.join(root, "clusters")).version() == version  # counts already right: no new version


def test_two_top_ups_of_one_set_at_once_keep_one_lineage_or_refuse(spark, fitted, tmp_path, monkeypatch):
    root = lake_copy(fitted, tmp_path)
    run(load_plan(data=assign_only(root, fitted["grown"], "grow")), spark=spark)
    race = RaceAt(monkeypatch, "curated")  # both top-ups' own curated sets, computed from one snapshot
    configs = {key: {**nightly(root, fitted["grown"], run_id=key), "stages": ["assign", "sample"],
                     "sampling": {"target_size": target, "mode": "top_up"}}
               for key, target in (("top-a", 200), ("top-b", 240))}  # below the fit's 300: both drop rows of its set
    results, errors = run_together(spark, configs)
    assert race.calls == 2
    assert len(results) == 1 and len(errors) == 1, (results, errors)
    (won, _), (lost, exc) = next(iter(results.items())), next(iter(errors.items()))
    assert isinstance(exc, TableError) and "topped up the same set while this one ran" in str(exc) and won in str(exc)
    fit_marks = dict(marks(root, fitted["tree"]))
    assert set(fit_marks.values()) <= {"", won}, "the fit's set carries only the winner's marks"
    dropped = sum(1 for v in fit_marks.values() if v == won)
    assert dropped == results[won].stages["sample"]["dropped"]
    runs = frame(root, "runs")
    assert set(runs[(runs.stage == "sample") & (runs.run_id == lost)]["status"]) == {"failed"}
    # the loser's rerun tops up the winner's set: its marks go there, the fit's stay the winner's
    again = run(load_plan(data=configs[lost]), spark=spark)
    assert again.stages["sample"]["previous_run_id"] == won
    assert dict(marks(root, fitted["tree"])) == fit_marks
    assert {v for _, v in marks(root, won)} <= {"", lost}


def test_two_attempts_of_one_top_up_at_once_leave_its_marks_once(spark, fitted, tmp_path, monkeypatch):
    root = lake_copy(fitted, tmp_path)
    run(load_plan(data=assign_only(root, fitted["grown"], "grow")), spark=spark)
    RaceAt(monkeypatch, "curated", count=2)  # their own sets (their marks then race without a barrier)
    cfg = {**nightly(root, fitted["grown"], run_id="top"), "stages": ["assign", "sample"]}
    results, errors = run_together(spark, {"a": cfg, "b": cfg})
    assert not errors, errors
    alone = str(tmp_path / "alone")
    shutil.copytree(fitted["assigned"], alone)
    run(load_plan(data=cfg | {"lake": {"root": alone}}), spark=spark)
    assert marks(root, fitted["tree"]) == marks(alone, fitted["tree"])
    assert run_digests(root, "top")["curated"] == run_digests(alone, "top")["curated"]


def test_a_stale_tree_is_refused_by_a_fresh_sample_and_repaired_by_the_next_assign(spark, fitted, tmp_path, monkeypatch):
    root = lake_copy(fitted, tmp_path)
    import lakecurate.stages.assign as assign_stage

    monkeypatch.setattr(assign_stage, "recount", lambda *a, **k: False)  # as if killed between the two commits
    run(load_plan(data=assign_only(root, fitted["grown"], "killed")), spark=spark)
    monkeypatch.undo()
    curated_version = DeltaTable(os.path.join(root, "curated")).version()
    fresh = fit_config(root, fitted["grown"], run_id="fresh", sampling={"target_size": 500})  # reuses the fit's tree
    with before_growth(fitted):
        with pytest.raises(TableError, match=rf"sizes its tree at {fitted['n_fit']} rows but 'assignments' holds "
                                             rf"{fitted['n_fit'] + NEW}.*assign stage again"):
            run(load_plan(data=fresh), spark=spark)
    assert DeltaTable(os.path.join(root, "curated")).version() == curated_version  # nothing written
    again = run(load_plan(data=assign_only(root, fitted["grown"], "next")), spark=spark)
    assert again.stages["assign"]["new_rows"] == 0 and again.stages["assign"]["repaired_counts"] is True
    assert assert_tree_counts_its_rows(root, fitted["tree"]) == fitted["n_fit"] + NEW
    with before_growth(fitted):
        res = run(load_plan(data=fresh), spark=spark)
    assert res.stages["sample"]["selected"] == 500


# ---------------------------------------------------------------- kill -9 inside each nightly commit

#: inside the incremental dedup's commit, the assign stage's two commits, the top-up's own set and its
#: marks, in the order one job reaches them: the job is killed at the first, then the same job again
#: is killed at the next (it resumes after the stages the killed one committed), and so on; the last
#: attempt runs to the end and must leave what an uninterrupted run leaves
POINTS = [
    "commit:files_written:table=duplicates",
    "commit:files_written:table=assignments",
    "commit:files_written:table=clusters",  # the increment committed, the tree's sizes not yet (also in-process below)
    "commit:files_written:table=curated",
    "commit:files_written:table=curated@2",  # the top-up's marks of the earlier set
]
#: the stage each point stops
DIES_IN = {"duplicates": "dedup", "assignments": "assign", "clusters": "assign", "curated": "sample"}


def test_a_nightly_job_killed_inside_each_commit_in_turn_resumes_to_the_uninterrupted_tables(spark, fitted, tmp_path, monkeypatch):
    """One job, killed inside each of its commits in turn (five kill -9s, each attempt resuming what
    the one before left), then run to the end: the tables equal an uninterrupted run's, bit for bit,
    and nothing is left behind. (Five separate kill-and-rerun cases cost five cold jobs from the
    start; the chain reaches each commit with one cold job per kill and is stricter: each attempt
    starts from the leftovers of a killed one.)"""
    root = lake_copy(fitted, tmp_path)
    cfg = nightly(root, fitted["grown"], run_id="nightly")
    for i, point in enumerate(POINTS):
        attempt = tmp_path / f"attempt{i}"
        attempt.mkdir()
        killed_at(point, cfg, attempt)
        runs = frame(root, "runs")
        stage = DIES_IN[point.split("table=")[-1].split("@")[0]]
        done = set(runs[(runs.status == "succeeded") & (runs.run_id == "nightly")]["stage"])
        assert stage not in done, f"killed at {point}: runs says {stage} succeeded"
    monkeypatch.setattr(lake_module.layout, "ORPHAN_AGE_SECONDS", 0.0)
    res = run(load_plan(data=cfg), spark=spark)
    assert res.run_id == fitted["nightly_run"]
    assert_tree_counts_its_rows(root, fitted["tree"])
    assert tree_digests(fitted, root) == tree_digests(fitted, fitted["alone"])
    assert run_digests(root, res.run_id) == run_digests(fitted["alone"], res.run_id)
    assert marks(root, fitted["tree"]) == marks(fitted["alone"], fitted["tree"])
    # a killed write's files are removed by the next write to its table (README, "No orphans"); a
    # table the finishing attempt did not write again keeps them until then, or until vacuum
    lake = Lake(spark, lake_module.LakeConfig(root=root))
    leftovers = {t: lake.unreferenced_files(t, older_than_seconds=0) for t in lake.table_names(with_leftovers=True)}
    for table, files in leftovers.items():
        assert all(f.startswith("_data/run_id=") for f in files), (table, files)  # only killed writes' folders
    lake.vacuum(apply=True, older_than_seconds=0)
    assert not any(lake.unreferenced_files(t, older_than_seconds=0) for t in lake.table_names(with_leftovers=True))
    assert tree_digests(fitted, root) == tree_digests(fitted, fitted["alone"])
    assert run_digests(root, res.run_id) == run_digests(fitted["alone"], res.run_id)
