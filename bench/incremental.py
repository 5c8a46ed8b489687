"""Nightly-run benchmark (issue 15, the parts built so far): assigning a 10% increment to an
existing tree and topping up its curated set, against re-running cluster + sample on the grown pool.

    .venv/bin/python bench/incremental.py                         # 1M + 100k rows x 384 (~8 min, 2 cores)
    .venv/bin/python bench/incremental.py --n 20000 --dim 32      # a smoke run (~1.5 min)

One process, Spark local[2], the pool from bench/data.py (long-tailed mixture) as Parquet: the
first ``n`` rows are the fitted pool, the next ``n / 10`` the increment. Timed, each as
``lakecurate.pipeline.run`` wall time on the same session:

* ``fit``: cluster + sample on the first n rows (the tree the increment joins);
* ``nightly``: assign + sample (``sampling.mode: top_up``) on the grown pool (reading it, the
  anti-join, assigning the new rows, the append, the recount, the staleness figures, the top-up);
* ``full``: cluster + sample on the grown pool, as a nightly re-cluster would.

Churn: the share of the fitted run's curated rows that are not in the new curated set, for each
path (same target size). Incremental de-duplication is not built yet (no dedup stage here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)


def link_parts(src: str, dst: str, parts: list[str]) -> str:
    os.makedirs(dst, exist_ok=True)
    for p in parts:
        target = os.path.join(dst, p)
        if not os.path.exists(target):
            os.symlink(os.path.join(src, p), target)
    return dst


def write_ranges(npy: str, folder: str, ranges: list) -> list[str]:
    """Rows [a, b) of the .npy pool as one Parquet file per range (written in chunks; reused)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lakecurate.spark.arrow import matrix_to_list_array

    os.makedirs(folder, exist_ok=True)
    x = np.load(npy, mmap_mode="r")
    names = []
    for a, b in ranges:
        name = f"rows-{a}-{b}.parquet"
        names.append(name)
        path = os.path.join(folder, name)
        if os.path.exists(path):
            continue
        schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32()))])
        with pq.ParquetWriter(path + ".tmp", schema) as w:
            for s in range(a, b, 50_000):
                e = min(b, s + 50_000)
                w.write_table(pa.table({"id": np.arange(s, e, dtype=np.int64), "embedding": matrix_to_list_array(np.asarray(x[s:e]))},
                                       schema=schema))
        os.replace(path + ".tmp", path)
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", default="1000,100")
    ap.add_argument("--n-iter", type=int, default=10)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "lakecurate-bench-incremental"))
    args = ap.parse_args(argv)
    from data import generate

    from lakecurate.pipeline import run
    from lakecurate.plan import load_plan
    from lakecurate.spark.session import get_spark

    grown_n = args.n + args.n // 10
    npy, _ = generate(args.data, grown_n, args.dim)
    rows = os.path.join(args.data, f"rows-{grown_n}-d{args.dim}")
    parts = write_ranges(npy, rows, [(0, args.n), (args.n, grown_n)])
    base = link_parts(rows, os.path.join(args.data, f"base-{args.n}-d{args.dim}"), parts[:1])
    grown = link_parts(rows, os.path.join(args.data, f"grown-{grown_n}-d{args.dim}"), parts)
    k = [int(v) for v in args.k.split(",")]
    clustering = {"n_clusters": k, "n_resampling_steps": 2, "resample_size": [1] + [3] * (len(k) - 1), "n_iter": args.n_iter,
                  "metric": "cosine"}
    spark = get_spark("local[2]", "bench-incremental", {"spark.driver.memory": "6g"})
    lake = tempfile.mkdtemp(prefix="lake-", dir=args.data)

    def timed(name, stages, path, **extra):
        cfg = {"name": name, "stages": stages, "lake": {"root": lake}, "input": {"format": "parquet", "path": path},
               "clustering": clustering, "sampling": {"target_size": args.n // 5}, **extra}
        t0 = time.perf_counter()
        res = run(load_plan(data=cfg), spark=spark)
        return time.perf_counter() - t0, res

    fit_s, fit = timed("fit", ["cluster", "sample"], base)
    assign_s, assigned = timed("nightly", ["assign", "sample"], grown, assign={"tree_run_id": fit.run_id},
                               sampling={"target_size": args.n // 5, "mode": "top_up"})
    full_s, full = timed("full", ["cluster", "sample"], grown)
    m = assigned.stages["assign"]
    from deltalake import DeltaTable

    cur = DeltaTable(os.path.join(lake, "curated")).to_pandas(columns=["run_id", "id"])
    sets = {r: set(cur.loc[cur["run_id"] == r, "id"]) for r in (fit.run_id, assigned.run_id, full.run_id)}
    churn_inc = 1 - len(sets[fit.run_id] & sets[assigned.run_id]) / len(sets[fit.run_id])
    churn_full = 1 - len(sets[fit.run_id] & sets[full.run_id]) / len(sets[fit.run_id])
    out = {"n": args.n, "increment": args.n // 10, "dim": args.dim, "k": k, "n_iter": args.n_iter, "fit_seconds": fit_s,
           "assign_seconds": assign_s, "full_seconds": full_s, "ratio": full_s / assign_s,
           "assign_metrics": {key: m[key] for key in ("new_rows", "stale_share", "seconds")},
           "top_up": {k: assigned.stages["sample"][k] for k in ("kept", "added", "dropped")},
           "churn_incremental": churn_inc, "churn_full": churn_full}
    print(f"\n### Nightly increment: {args.n // 10:,} new rows on {args.n:,} x {args.dim} (k = {k}, {args.n_iter} Lloyd iterations)\n")
    print("| path | seconds |")
    print("|---|---|")
    print(f"| fit the tree (cluster + sample on {args.n:,}) | {fit_s:.1f} |")
    print(f"| nightly: assign the increment + top-up sample (on {grown_n:,}) | {assign_s:.1f} |")
    print(f"| re-cluster (cluster + sample on {grown_n:,}) | {full_s:.1f} |")
    print(f"\nre-cluster / nightly: **{full_s / assign_s:.1f}x** (target >= 10x at 1M rows); stale share of the increment "
          f"(same distribution): {m['stale_share']:.4f}")
    print(f"churn of the curated set ({args.n // 5:,} rows): nightly top-up {100 * churn_inc:.1f}%, re-cluster "
          f"{100 * churn_full:.1f}% (top-up kept {out['top_up']['kept']:,}, added {out['top_up']['added']:,}, "
          f"dropped {out['top_up']['dropped']:,})")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "incremental.json"), "w") as f:
        json.dump(out, f, indent=1)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
