"""Target-aware coreset benchmark (issue 13): SimCore on Spark against the in-memory reference greedy.

    .venv/bin/python bench/coreset.py                    # 250k, 500k, 1M rows x 384 (about 10 min, 2 cores)
    .venv/bin/python bench/coreset.py --sizes 20000 --dim 64 --quick    # a smoke run (about 1 min)

Prints Markdown and writes bench/results/coreset.json. The pool is bench/data.py's long-tailed
mixture (2000 concepts, Zipf 1.1); the target is ``--target-rows`` new rows drawn from three
concepts of it (ranks 10, 30 and 100). Every measurement runs in its own process:

* ``reference``: the reference's greedy transcribed (``util/sampling.py: greedy``, ties to the
  lower row, the budget cut as lakecurate's): the full N x K similarity matrix, one sorted queue
  per centroid, each a deque over the sorted index array as the reference builds it; timed from
  loading the .npy to the picks; memory = the process's peak RSS (VmHWM) above its RSS after
  loading the pool. ``reference_ints``: the same with queues of Python ints (a faster transcription).
* ``pure``: :func:`lakecurate.target_coreset` in memory (candidate windows, no N x K matrix).
* ``spark``: the coreset stage (``lakecurate run``, local[2], pool and target as Parquet), timed
  as the stage's seconds (reading and caching the pool included); driver memory = the driver
  process's peak RSS above its RSS once the session was up (the executors' Python workers and
  the JVM are other processes).

Quality: precision (share of picks from the target's concepts) and recall (share of the pool's
rows of those concepts picked), beside a uniform random subset of the same size.

    .venv/bin/python bench/coreset.py --summaries        # the target summary's share of precision (about 2 min)

``--summaries`` (issue 31) measures what the target's summary alone costs: the same greedy, in
memory, from SimCore's summary (scikit-learn k-means of the unit target rows, what
``target_centroids`` makes) and from the spherical k-means lakecurate used before (its own Lloyd
loop, sampled k-means++ init), on two labelled pools with targets drawn from two of their
classes, four seeds each: scikit-learn's handwritten digits (1,797 x 64, real data shipped
inside scikit-learn; the target is 60 rows of digits 3 and 8, the pool the other rows) and the
long-tailed mixture above (200k x 384, 1,000 target rows of two concepts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
log = logging.getLogger("bench.coreset")

from data import peak_mb, rss_mb  # noqa: E402

TARGET_CONCEPTS = (10, 30, 100)
N_CENTROIDS = 100


def make_target(n: int, d: int, rows: int, seed: int = 0) -> np.ndarray:
    from data import concept_params

    _, centres, scales, _ = concept_params(n, d, seed=seed)
    rng = np.random.default_rng(seed + 99)
    concept = rng.choice(np.array(TARGET_CONCEPTS), size=rows)
    return (centres[concept] + scales[concept, None] * rng.standard_normal((rows, d), dtype=np.float32)).astype(np.float32)


# ------------------------------------------------------------------ workers (one process each)


def w_reference(p: dict, as_written: bool = True) -> dict:
    from lakecurate.core.coreset import default_budget, reference_greedy, similarities, target_centroids
    from lakecurate.core.kmeans import normalize_rows

    t0 = time.perf_counter()
    x = np.load(p["npy"])
    target = np.load(p["target_npy"])
    base = rss_mb()
    cents = target_centroids(target, N_CENTROIDS, seed=0)
    sim = similarities(normalize_rows(x), cents)
    del x
    picks, _, rounds, why = reference_greedy(sim, default_budget(len(target), sim.shape[0]), 20, 0.95, 0, as_written=as_written)
    secs = time.perf_counter() - t0
    np.save(p["out_picks"], picks)
    return {"seconds": secs, "memory_mb": peak_mb() - base, "stop_round": rounds, "stop_reason": why, "selected": int(picks.size)}


def w_pure(p: dict) -> dict:
    from lakecurate import target_coreset

    t0 = time.perf_counter()
    x = np.load(p["npy"])
    target = np.load(p["target_npy"])
    base = rss_mb()
    res = target_coreset(x, target, n_centroids=N_CENTROIDS, details=True)
    secs = time.perf_counter() - t0
    np.save(p["out_picks"], res.indices)
    return {"seconds": secs, "memory_mb": peak_mb() - base, "stop_round": res.stop_round, "stop_reason": res.stop_reason,
            "selected": int(res.indices.size), "max_candidates": res.max_candidates, "fetches": res.fetches}


def w_spark(p: dict) -> dict:
    from deltalake import DeltaTable

    from lakecurate.pipeline import run
    from lakecurate.plan import load_plan
    from lakecurate.spark.session import get_spark

    spark = get_spark("local[2]", "bench-coreset", {"spark.driver.memory": "6g"})
    spark.range(1).count()
    base = rss_mb()
    cfg = {"name": "bench", "stages": ["coreset"], "lake": {"root": p["lake"]},
           "input": {"format": "parquet", "path": p["parquet"]},
           "coreset": {"target": {"format": "parquet", "path": p["target_parquet"]}, "n_centroids": N_CENTROIDS},
           "spark": {"partitions": p.get("partitions", 0)}}
    t0 = time.perf_counter()
    result = run(load_plan(data=cfg), spark=spark)
    wall = time.perf_counter() - t0
    m = result.stages["coreset"]
    df = DeltaTable(os.path.join(p["lake"], "coreset")).to_pandas()
    picks = np.sort(df[df["run_id"] == result.run_id]["id"].to_numpy(np.int64))
    np.save(p["out_picks"], picks)
    spark.stop()
    return {"seconds": m["seconds"], "wall_seconds": wall, "greedy_seconds": m["greedy_seconds"], "memory_mb": peak_mb() - base,
            "stop_round": m["stop_round"], "stop_reason": m["stop_reason"], "selected": m["selected"],
            "max_candidates": m["max_candidates_held"], "fetches": m["fetch_passes"],
            **{k: m[k] for k in ("target_seconds", "cache_seconds", "write_seconds")}}


WORKERS = {"reference": w_reference, "reference_ints": lambda p: w_reference(p, as_written=False), "pure": w_pure, "spark": w_spark}


def run_worker(name: str, params: dict, timeout: int = 3600) -> dict:
    out = os.path.join(params["tmp"], f"worker-{name}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--params", json.dumps(params), "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"worker {name} failed (rc={proc.returncode})")
    with open(out) as f:
        return json.load(f)


def quality(picks: np.ndarray, concept: np.ndarray) -> dict:
    inside = np.isin(concept, TARGET_CONCEPTS)
    hit = int(inside[picks].sum())
    return {"precision": hit / max(picks.size, 1), "recall": hit / max(int(inside.sum()), 1)}


def one_size(n: int, d: int, target_rows: int, tmp: str, with_reference: bool, partitions: int = 0) -> dict:
    import pyarrow.parquet as pq

    from data import concepts_path, generate
    from lakecurate.spark.arrow import matrix_to_list_array
    import pyarrow as pa

    npy, parquet = generate(tmp, n, d)
    concept = np.load(concepts_path(npy))
    target = make_target(n, d, target_rows)
    target_npy = os.path.join(tmp, f"target-{n}.npy")
    np.save(target_npy, target)
    target_parquet = os.path.join(tmp, f"target-{n}.parquet")
    pq.write_table(pa.table({"id": pa.array(np.arange(target_rows, dtype=np.int64)), "embedding": matrix_to_list_array(target)}),
                   target_parquet)
    out: dict = {"n": n, "dim": d, "target_rows": target_rows, "in_domain_rows": int(np.isin(concept, TARGET_CONCEPTS).sum())}
    picks = {}
    for name in (["reference", "reference_ints"] if with_reference else []) + ["pure", "spark"]:
        log.info("n=%d: %s", n, name)
        params = {"npy": npy, "parquet": parquet, "target_npy": target_npy, "target_parquet": target_parquet, "tmp": tmp,
                  "lake": os.path.join(tmp, f"lake-{n}"), "out_picks": os.path.join(tmp, f"picks-{name}-{n}.npy"),
                  "partitions": partitions}
        res = run_worker(name, params)
        picks[name] = np.load(params["out_picks"])
        res.update(quality(picks[name], concept))
        out[name] = res
    rng = np.random.default_rng(0)
    uniform = np.sort(rng.choice(n, size=picks["spark"].size, replace=False))
    out["uniform_random"] = {"selected": int(uniform.size), **quality(uniform, concept)}
    out["spark_equals_pure"] = bool(np.array_equal(picks["spark"], picks["pure"]))
    if with_reference:
        out["spark_equals_reference"] = bool(np.array_equal(picks["spark"], picks["reference"]))
        out["spark_equals_reference_ints"] = bool(np.array_equal(picks["spark"], picks["reference_ints"]))
        out["spark_speedup_vs_reference"] = out["reference"]["seconds"] / out["spark"]["seconds"]
        out["spark_speedup_vs_reference_ints"] = out["reference_ints"]["seconds"] / out["spark"]["seconds"]
    return out


def spherical_centroids(target: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The target summary before issue 31: spherical k-means through lakecurate's own Lloyd loop."""
    from lakecurate.core.kmeans import fit_kmeans, normalize_rows

    unit = normalize_rows(target)
    fit, _, _ = fit_kmeans(unit, k, n_iter=50, metric="cosine", seed=seed)
    return normalize_rows(fit.centroids)


def summary_precision(pool: np.ndarray, label: np.ndarray, target: np.ndarray, classes, k: int, seed: int) -> dict:
    from lakecurate.core.coreset import default_budget, greedy, in_memory_fetch, target_centroids
    from lakecurate.core.kmeans import normalize_rows

    unit = normalize_rows(pool)
    keys = np.arange(pool.shape[0], dtype=np.int64)
    out = {}
    for name, cents in (("simcore", target_centroids(target, k, seed=seed)), ("spherical", spherical_centroids(target, k, seed))):
        res = greedy(in_memory_fetch(keys, unit, cents), cents.shape[0], budget=default_budget(target.shape[0], pool.shape[0]),
                     pool_rows=pool.shape[0], patience=20, stop_threshold=0.95, seed=seed)
        picks = res.indices
        out[name] = {"precision": float(np.isin(label[picks], classes).mean()), "selected": int(picks.size)}
    return out


def summaries(tmp: str, seeds=(0, 1, 2, 3)) -> dict:
    from sklearn.datasets import load_digits

    from data import concepts_path, generate

    r = {"digits": [], "mixture": []}
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    for seed in seeds:
        rng = np.random.default_rng(seed)
        where = np.flatnonzero(np.isin(y, (3, 8)))
        t = rng.choice(where, 60, replace=False)
        rest = np.setdiff1d(np.arange(x.shape[0]), t)
        r["digits"].append({"seed": seed, **summary_precision(x[rest], y[rest], x[t], (3, 8), 10, seed)})
        log.info("digits seed %d: %s", seed, r["digits"][-1])
    n, d = 200_000, 384
    npy, _ = generate(tmp, n, d)
    pool, concept = np.load(npy), np.load(concepts_path(npy))
    two = TARGET_CONCEPTS[:2]
    for seed in seeds:
        from data import concept_params

        _, centres, scales, _ = concept_params(n, d, seed=0)
        rng = np.random.default_rng(seed + 99)
        c = rng.choice(np.array(two), size=1000)
        target = (centres[c] + scales[c, None] * rng.standard_normal((1000, d), dtype=np.float32)).astype(np.float32)
        r["mixture"].append({"seed": seed, **summary_precision(pool, concept, target, two, N_CENTROIDS, seed)})
        log.info("mixture seed %d: %s", seed, r["mixture"][-1])
    return r


def render_summaries(r: dict) -> str:
    lines = ["# The coreset's target summary: SimCore's (scikit-learn k-means) against lakecurate's earlier spherical k-means", "",
             "Same greedy (patience 20, threshold 0.95, budget 50 x target), in memory; precision = share of picks from the target's classes.", "",
             "| pool | seed | SimCore summary: precision (picked) | spherical summary: precision (picked) |", "|---|---:|---:|---:|"]
    for pool, rows in r.items():
        for row in rows:
            a, b = row["simcore"], row["spherical"]
            lines.append(f"| {pool} | {row['seed']} | {a['precision']:.4f} ({a['selected']:,}) | {b['precision']:.4f} ({b['selected']:,}) |")
        ma = np.mean([row["simcore"]["precision"] for row in rows])
        mb = np.mean([row["spherical"]["precision"] for row in rows])
        lines.append(f"| {pool} | mean | {ma:.4f} | {mb:.4f} |")
    return "\n".join(lines)


def render(r: dict) -> str:
    lines = [f"# Coreset benchmark (SimCore), {r['machine']}", "",
             f"Pool: long-tailed mixture, {r['dim']} dims, 2000 concepts; target: {r['target_rows']} new rows of concepts "
             f"{list(TARGET_CONCEPTS)}; {N_CENTROIDS} centroids, patience 20, stop threshold 0.95, budget 50 x target.", "",
             "| rows | method | picked | stop | stop round | precision | recall | seconds | memory MB | candidates held | passes |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in r["sizes"]:
        for name in ("reference", "reference_ints", "pure", "spark", "uniform_random"):
            if name not in s:
                continue
            m = s[name]
            lines.append(f"| {s['n']:,} | {name} | {m['selected']:,} | {m.get('stop_reason', '')} | {m.get('stop_round', '')} | "
                         f"{m['precision']:.4f} | {m['recall']:.4f} | {m['seconds']:.1f} | " if "seconds" in m else
                         f"| {s['n']:,} | {name} | {m['selected']:,} |  |  | {m['precision']:.4f} | {m['recall']:.4f} |  |  |  |  |")
            if "seconds" in m:
                lines[-1] += f"{m['memory_mb']:.0f} | {m.get('max_candidates', '')} | {m.get('fetches', '')} |"
    lines.append("")
    for s in r["sizes"]:
        bits = [f"n={s['n']:,}: Spark picks == pure API picks: {s['spark_equals_pure']}"]
        if "spark_equals_reference" in s:
            bits.append(f"== reference picks: {s['spark_equals_reference']}")
            bits.append(f"Spark stage {s['spark_speedup_vs_reference']:.2f}x the reference's speed "
                        f"({s['spark_speedup_vs_reference_ints']:.2f}x the Python-int transcription's)")
        lines.append("- " + "; ".join(bits))
    for s in r["sizes"]:
        m = s["spark"]
        lines.append(f"- n={s['n']:,}: Spark stage {m['seconds']:.1f} s = target {m['target_seconds']:.1f} + pool read and cache "
                     f"{m['cache_seconds']:.1f} + greedy {m['greedy_seconds']:.1f} + write {m['write_seconds']:.1f} (+ the rest)")
    mem = [s["spark"]["memory_mb"] for s in r["sizes"]]
    lines.append(f"- Spark driver memory above its start across sizes: {', '.join(f'{m:.0f}' for m in mem)} MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="250000,500000,1000000")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--target-rows", type=int, default=2000)
    ap.add_argument("--no-reference-above", type=int, default=10**9, help="skip the reference above this many rows")
    ap.add_argument("--quick", action="store_true", help="results go to coreset-quick.json")
    ap.add_argument("--spark-partitions", type=int, default=0, help="spark.partitions of the stage (0: 2 x the cores)")
    ap.add_argument("--data", default=None, help="folder for the generated data (default: a temporary folder)")
    ap.add_argument("--summaries", action="store_true", help="only the target summary's precision, SimCore's vs spherical")
    ap.add_argument("--worker")
    ap.add_argument("--params")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.worker:
        logging.basicConfig(level=logging.WARNING)
        res = WORKERS[args.worker](json.loads(args.params))
        with open(args.out, "w") as f:
            json.dump(res, f)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    import platform

    if args.summaries:
        with tempfile.TemporaryDirectory(dir=args.data) as tmp:
            r = summaries(tmp)
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "coreset-summaries.json"), "w") as f:
            json.dump(r, f, indent=2)
        print(render_summaries(r))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    r = {"machine": f"{os.cpu_count()} cores, {platform.machine()}", "dim": args.dim, "target_rows": args.target_rows, "sizes": []}
    with tempfile.TemporaryDirectory(dir=args.data) as tmp:
        for n in sizes:
            r["sizes"].append(one_size(n, args.dim, args.target_rows, tmp, n <= args.no_reference_above, args.spark_partitions))
    os.makedirs(RESULTS, exist_ok=True)
    name = "coreset-quick" if args.quick else "coreset"
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(r, f, indent=2)
    text = render(r)
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
