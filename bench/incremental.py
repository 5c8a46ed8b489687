"""Nightly-run benchmark (issue 15): de-duplicating and assigning a 10% increment to an existing
tree and topping up its curated set, against re-running dedup + cluster + sample on the grown pool.

    .venv/bin/python bench/incremental.py                         # 1M + 100k rows x 384 (~8 min, 2 cores)
    .venv/bin/python bench/incremental.py --n 20000 --dim 32      # a smoke run (~1.5 min)

One process, Spark local[2], the pool from bench/data.py (long-tailed mixture) as Parquet: the
first ``n`` rows are the fitted pool, the next ``n / 10`` the increment, added to the same folder
after the fit (so the nightly run reads only the new file: issue 32 item 2). Timed, each as
``lakecurate.pipeline.run`` wall time on the same session:

* ``fit``: dedup + cluster + sample on the first n rows (the tree the increment joins);
* ``nightly``: dedup (``mode: incremental``: the new rows against the tree's kept rows and each
  other) + assign + sample (``sampling.mode: top_up``) on the grown pool;
* ``full``: dedup + cluster + sample on the grown pool, as a nightly re-cluster would.

The issue's ratio is assign + top-up against cluster + sample (stage seconds); the whole runs'
ratio, dedup included, is printed too. Churn: the share of the fitted run's curated rows that
are not in the new curated set, for each path (same target size).
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
    ap.add_argument("--eps", type=float, default=0.05)
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
    k = [int(v) for v in args.k.split(",")]
    clustering = {"n_clusters": k, "n_resampling_steps": 2, "resample_size": [1] + [3] * (len(k) - 1), "n_iter": args.n_iter,
                  "metric": "cosine"}
    spark = get_spark("local[2]", "bench-incremental", {"spark.driver.memory": "6g"})
    lake = tempfile.mkdtemp(prefix="lake-", dir=args.data)
    pool = tempfile.mkdtemp(prefix="pool-", dir=args.data)  # one folder, grown in place after the fit, as a lake grows

    def timed(name, stages, path, **extra):
        cfg = {"name": name, "stages": stages, "lake": {"root": lake}, "input": {"format": "parquet", "path": path},
               "clustering": clustering, "sampling": {"target_size": args.n // 5}, **extra}
        t0 = time.perf_counter()
        res = run(load_plan(data=cfg), spark=spark)
        return time.perf_counter() - t0, res

    dedup = {"eps": args.eps, "n_neighbor_clusters": 1}
    fit_s, fit = timed("fit", ["dedup", "cluster", "sample"], link_parts(rows, pool, parts[:1]), dedup=dedup)
    link_parts(rows, pool, parts)
    nightly_s, nightly = timed("nightly", ["dedup", "assign", "sample"], pool, assign={"tree_run_id": fit.run_id},
                               dedup={**dedup, "mode": "incremental"}, sampling={"target_size": args.n // 5, "mode": "top_up"})
    full_s, full = timed("full", ["dedup", "cluster", "sample"], pool, dedup=dedup)
    m = nightly.stages["assign"]
    from deltalake import DeltaTable

    cur = DeltaTable(os.path.join(lake, "curated")).to_pandas(columns=["run_id", "id"])
    sets = {r: set(cur.loc[cur["run_id"] == r, "id"]) for r in (fit.run_id, nightly.run_id, full.run_id)}
    churn_inc = 1 - len(sets[fit.run_id] & sets[nightly.run_id]) / len(sets[fit.run_id])
    churn_full = 1 - len(sets[fit.run_id] & sets[full.run_id]) / len(sets[fit.run_id])
    secs = {name: {s: round(v, 1) for s, v in res.stage_seconds.items()} for name, res in (("fit", fit), ("nightly", nightly), ("full", full))}
    nightly_core = secs["nightly"]["assign"] + secs["nightly"]["sample"]
    full_core = secs["full"]["cluster"] + secs["full"]["sample"]
    dn, df_ = nightly.stages["dedup"], full.stages["dedup"]
    out = {"n": args.n, "increment": args.n // 10, "dim": args.dim, "k": k, "n_iter": args.n_iter, "eps": args.eps,
           "fit_seconds": fit_s, "nightly_seconds": nightly_s, "full_seconds": full_s, "stage_seconds": secs,
           "ratio_assign_top_up": full_core / nightly_core, "ratio_with_dedup": full_s / nightly_s,
           "assign_metrics": {key: m[key] for key in ("new_rows", "stale_share", "seconds", "input_read")},
           "dedup_nightly": {key: dn.get(key) for key in ("new_rows", "old_rows", "n_clusters", "removed", "removed_as_old", "seconds",
                                                          "cache_seconds", "coarse_seconds", "pairwise_seconds", "merge_seconds",
                                                          "old_rows_seconds", "input_read")},
           "dedup_full": {key: df_.get(key) for key in ("n_rows", "n_clusters", "removed", "seconds")},
           "top_up": {key: nightly.stages["sample"][key] for key in ("kept", "added", "dropped")},
           "churn_incremental": churn_inc, "churn_full": churn_full}
    print(f"\n### Nightly increment: {args.n // 10:,} new rows on {args.n:,} x {args.dim} (k = {k}, {args.n_iter} Lloyd iterations, "
          f"dedup eps {args.eps})\n")
    print("| path | dedup s | cluster / assign s | sample s | run s |")
    print("|---|---|---|---|---|")
    for label, name, tree in ((f"fit the tree ({args.n:,} rows)", "fit", "cluster"),
                              (f"nightly: incremental dedup + assign + top-up ({grown_n:,})", "nightly", "assign"),
                              (f"re-cluster: dedup + cluster + sample ({grown_n:,})", "full", "cluster")):
        st = secs[name]
        total = {"fit": fit_s, "nightly": nightly_s, "full": full_s}[name]
        print(f"| {label} | {st.get('dedup', 0):.1f} | {st.get(tree, 0):.1f} | {st.get('sample', 0):.1f} | {total:.1f} |")
    print(f"\nassign + top-up against cluster + sample: **{full_core / nightly_core:.1f}x** (target >= 10x at 1M rows); "
          f"whole runs, dedup included: **{full_s / nightly_s:.1f}x**")
    print(f"incremental dedup: {dn['new_rows']:,} new rows against {dn['old_rows']:,} kept, {dn['n_clusters']} coarse clusters, "
          f"removed {dn['removed']:,} ({dn['removed_as_old']:,} duplicates of kept rows); full dedup of the grown pool removed "
          f"{df_['removed']:,} with {df_['n_clusters']} coarse clusters")
    print(f"nightly reads: dedup {dn.get('input_read')}, assign {m.get('input_read')}")
    print("incremental dedup's parts (s): " + ", ".join(f"{key[:-8]} {dn[key]}" for key in (
        "cache_seconds", "coarse_seconds", "pairwise_seconds", "merge_seconds", "old_rows_seconds") if dn.get(key) is not None))
    print(f"stale share of the increment (same distribution): {m['stale_share']:.4f}")
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
