"""The table-I/O contract, run on a Sail server with one backend (``.venv-sail``'s Python):
prints one JSON line of what happened, which ``test_sail_native.py`` checks for both backends.

    .venv-sail/bin/python tests/e2e/sail_contract.py sc://HOST:PORT ROOT native|embedded
"""

from __future__ import annotations

import json
import os
import sys
import threading

import pyarrow as pa
from pyspark.sql import SparkSession

from lakecurate.config import LakeConfig
from lakecurate.errors import RunChangedError, TableError
from lakecurate.lake import Lake
from lakecurate.lake.delta import Snapshot


def rows(lake, name, run_id=None, version=None):
    df = lake.read(name, run_id, version=version)
    return sorted((r["run_id"], r["id"]) for r in df.select("run_id", "id").collect())


def main(remote: str, root: str, backend: str) -> None:
    spark = SparkSession.builder.remote(remote).getOrCreate()
    lake = Lake(spark, LakeConfig(root=root, backend=backend))
    t = lambda ids: pa.table({"id": pa.array(ids, pa.int64()), "score": pa.array([float(i) / 2 for i in ids])})  # noqa: E731
    out: dict = {"backend": lake.backend}

    # atomic replace of a run: run a's rows replaced, run b's untouched
    lake.write_arrow(t([1, 2, 3]), "scores", "a")
    lake.write_arrow(t([10, 11]), "scores", "b")
    v_before = lake.version("scores")
    lake.write_arrow(t([4, 5]), "scores", "a")
    out["replace"] = rows(lake, "scores")
    out["run_a"] = rows(lake, "scores", "a")
    # time travel: the version before the replace still reads the old rows
    out["time_travel"] = rows(lake, "scores", version=v_before)

    # append with commit metadata, found in the table's log
    info = lake.append_run(spark.createDataFrame(t([6])), "scores", "a", commit_metadata={"lakecurate.increment": "n1"})
    log_dir = os.path.join(root, "scores", "_delta_log")
    with open(os.path.join(log_dir, f"{info.version:020d}.json")) as f:
        commit = [json.loads(line)["commitInfo"] for line in f if '"commitInfo"' in line][0]
    meta = commit.get("userMetadata") or json.dumps({k: v for k, v in commit.items() if k.startswith("lakecurate.")})
    out["commit_metadata"] = json.loads(meta) if isinstance(meta, str) else meta

    # an append conditional on the version it was computed from: refused once the run changed
    since = lake.version("scores")
    lake.append_run(spark.createDataFrame(t([7])), "scores", "a")
    try:
        lake.append_run(spark.createDataFrame(t([8])), "scores", "a", unchanged_since=since)
        out["stale_append"] = "committed"
    except RunChangedError as exc:
        out["stale_append"] = str(exc)

    # concurrent writers: four appends to four runs from four threads, each lands once
    errors = []

    def append(i):
        try:
            lake.append_run(spark.createDataFrame(t([100 + i])), "scores", f"c{i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(str(exc))

    threads = [threading.Thread(target=append, args=(i,)) for i in range(4)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    out["concurrent_errors"] = errors
    out["concurrent"] = [r for r in rows(lake, "scores") if r[0].startswith("c")]

    # a schema that does not match: refused, nothing written
    version = lake.version("scores")
    try:
        lake.write_arrow(pa.table({"id": pa.array(["x"]), "score": pa.array([1.0])}), "scores", "d")
        out["mismatch"] = "committed"
    except TableError as exc:
        out["mismatch"] = str(exc)
    out["version_unchanged"] = lake.version("scores") == version

    # schema gain: a curated table an older lakecurate wrote, without added_in/dropped_in
    # (tables.ADDED_COLUMNS), then a write that has them
    old = pa.table({"id": pa.array([1], pa.int64()), "cluster": pa.array([0], pa.int32())})
    lake.write_arrow(old, "curated", "v0")
    before = lake.version("curated")
    new = old.append_column("added_in", pa.array(["v1"])).append_column("dropped_in", pa.array([None], pa.string()))
    try:
        lake.write_arrow(new, "curated", "v1")
        out["gain"] = sorted(lake.columns("curated"))
    except TableError as exc:
        out["gain"] = str(exc)
    out["gain_versions"] = [before, lake.version("curated")]

    # reading features: the log the engine wrote is one the protocol reader reads
    out["reader_rows"] = Snapshot(os.path.join(root, "scores")).live_rows()
    out["engine_rows"] = len(rows(lake, "scores"))

    # a path that is not a Delta table
    os.makedirs(os.path.join(root, "plain"), exist_ok=True)
    try:
        lake.read_source("delta", path=os.path.join(root, "plain"), key="input").schema
        out["not_delta"] = "read"
    except TableError as exc:
        out["not_delta"] = str(exc)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
