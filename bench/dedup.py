"""De-duplication benchmark on a generated redundant pool with known ground truth (issue 5).

    .venv/bin/python bench/dedup.py            # 50k x 64 pool, Spark stage at 50k and 200k rows (~3 min idle, 2 cores)
    .venv/bin/python bench/dedup.py --quick    # small sizes (~3 min): a smoke run of every section

Prints a table and writes bench/results/dedup.json. Sections:

1. precision / recall of duplicate detection across eps (pure API, the same rule as the stage):
   a removed row is *correct* when the row kept for it copies the same item; precision = correct /
   removed, recall = correct / (rows - distinct items), the most that could be removed.
2. distinct items in a curated subset (hierarchical k-means + balanced sampling, 10% of the pool)
   with and without de-duplication first, beside a uniform random subset of the same size.
3. the Spark dedup stage (local[2]): seconds per million rows at two pool sizes.
4. cost against the largest coarse cluster: one cluster of m rows through ``dedup_cluster`` (the
   per-task work), for distinct rows and for all near-copies of one item, and the Spark stage on
   a pool whose largest cluster is chunked (``dedup.max_cluster_rows``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
log = logging.getLogger("bench.dedup")

POOL = {"dim": 64, "n_concepts": 300, "copies_alpha": 1.0, "copy_noise": 0.05, "seed": 0}


def make_pool(n: int, items_per_row: float = 0.2):
    from lakecurate.core.synthetic import redundant_pool

    return redundant_pool(n, POOL["dim"], max(1, int(n * items_per_row)), copies_alpha=POOL["copies_alpha"],
                          copy_noise=POOL["copy_noise"], n_concepts=POOL["n_concepts"], seed=POOL["seed"])


def precision_recall(pool, eps_values, n_neighbor_clusters: int = 1) -> list[dict]:
    from lakecurate.core.dedup import find_duplicates

    n = pool.x.shape[0]
    n_items = np.unique(pool.item).size
    out = []
    for eps in eps_values:
        t0 = time.perf_counter()
        res = find_duplicates(pool.x, eps=eps, n_neighbor_clusters=n_neighbor_clusters, seed=0)
        secs = time.perf_counter() - t0
        removed, kept, _ = res.duplicates()
        correct = int((pool.item[removed] == pool.item[kept]).sum())
        out.append({
            "eps": eps, "removed": int(removed.size), "precision": correct / max(removed.size, 1),
            "recall": correct / max(n - n_items, 1), "distinct_items_kept": int(np.unique(pool.item[res.keep]).size),
            "kept": int(res.keep.size), "seconds": round(secs, 2),
        })
    return out


def curated_items(pool, eps: float, fraction: float = 0.1, seed: int = 0) -> dict:
    from lakecurate import HierarchicalKMeans, balanced_sample, deduplicate

    n = pool.x.shape[0]
    target = int(n * fraction)
    levels = [max(10, n // 100), max(3, n // 1000)]

    def curate(rows):
        tree = HierarchicalKMeans(levels, resample_size=[1, 3], n_resampling_steps=3, n_iter=20, metric="cosine", seed=seed).fit(pool.x[rows])
        return rows[balanced_sample(tree, target, seed=seed)]

    t0 = time.perf_counter()
    keep = deduplicate(pool.x, eps=eps, n_neighbor_clusters=1, seed=seed)
    with_dedup = curate(keep)
    without = curate(np.arange(n))
    rng = np.random.default_rng(seed)
    uniform = rng.choice(n, target, replace=False)
    uniform_kept = rng.choice(keep, target, replace=False)
    distinct = lambda rows: int(np.unique(pool.item[rows]).size)  # noqa: E731
    return {
        "pool_rows": n, "pool_items": int(np.unique(pool.item).size), "subset": target, "eps": eps,
        "kept_after_dedup": int(keep.size),
        "curated_with_dedup": distinct(with_dedup), "curated_without_dedup": distinct(without),
        "uniform_random": distinct(uniform), "uniform_random_of_kept": distinct(uniform_kept),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def spark_stage(spark, n: int, eps: float, tmp: str, **dedup) -> dict:
    from lakecurate.pipeline import run
    from lakecurate.plan import load_plan

    pool = make_pool(n)
    npy = os.path.join(tmp, f"pool-{n}.npy")
    np.save(npy, pool.x)
    cfg = load_plan(data={
        "name": f"bench-{n}", "stages": ["dedup"], "lake": {"root": os.path.join(tmp, f"lake-{n}-{len(dedup)}")},
        "input": {"format": "npy", "path": npy},
        "dedup": {"eps": eps, "n_neighbor_clusters": 1, **dedup},
        "spark": {"master": "local[2]", "partitions": 4},
    })
    t0 = time.perf_counter()
    res = run(cfg, spark=spark)
    secs = time.perf_counter() - t0
    m = res.stages["dedup"]
    return {
        "n": n, "seconds": round(secs, 1), "seconds_per_million_rows": round(secs / n * 1e6, 1),
        "stage_seconds": m["seconds"], "coarse_seconds": m["coarse_seconds"], "pairwise_seconds": m["pairwise_seconds"],
        "merge_write_seconds": m["merge_write_seconds"], "n_clusters": m["n_clusters"], "largest_cluster": m["largest_cluster"],
        "chunked_clusters": m["chunked_clusters"], "tasks": m["tasks"], "removed": m["removed"],
    }


def cluster_cost(sizes, dim: int) -> list[dict]:
    """Seconds of one dedup_cluster call on m rows: distinct rows vs near-copies of one item."""
    from lakecurate.core.dedup import dedup_cluster, unit_rows

    rng = np.random.default_rng(0)
    out = []
    for m in sizes:
        for kind in ("distinct", "near-copies"):
            if kind == "distinct":
                x = rng.normal(size=(m, dim))
            else:
                x = rng.normal(size=dim) + 0.05 / np.sqrt(dim) * rng.normal(size=(m, dim))
            xu = unit_rows(x)
            t0 = time.perf_counter()
            res = dedup_cluster(xu, np.arange(m), np.ones(m), 0.01)
            secs = time.perf_counter() - t0
            out.append({"m": m, "kind": kind, "seconds": round(secs, 3), "removed": int((res.kept_row != np.arange(m)).sum()),
                        "ns_per_pair_dim": round(secs / (m * m / 2 * dim) * 1e9, 4)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    for noisy in ("py4j",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    n_quality = 10_000 if args.quick else 50_000
    spark_sizes = [20_000] if args.quick else [50_000, 200_000]
    cost_sizes = [2_000, 8_000] if args.quick else [5_000, 20_000, 40_000]
    eps_values = [0.002, 0.005, 0.01, 0.02, 0.05]
    results: dict = {"pool": {**POOL, "items_per_row": 0.2}, "quick": args.quick}

    pool = make_pool(n_quality)
    log.info("precision/recall on %d rows", n_quality)
    results["precision_recall"] = precision_recall(pool, eps_values)
    log.info("curated subsets")
    results["curated"] = curated_items(pool, eps=0.01)
    log.info("per-cluster cost")
    results["cluster_cost"] = cluster_cost(cost_sizes, POOL["dim"])

    from lakecurate.spark.session import get_spark

    spark = get_spark("local[2]", "bench-dedup", {"spark.sql.shuffle.partitions": "8"})
    with tempfile.TemporaryDirectory() as tmp:
        results["spark"] = [spark_stage(spark, n, 0.01, tmp) for n in spark_sizes]
        n_big = spark_sizes[-1]
        # the same pool with every coarse cluster above a small bound compared in chunks
        results["spark_chunked"] = spark_stage(spark, n_big, 0.01, tmp, max_cluster_rows=max(1000, n_big // 100))
    spark.stop()

    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "dedup.json"), "w") as f:
        json.dump(results, f, indent=2)
    _print(results)
    return 0


def _print(r: dict) -> None:
    print("\n1. duplicate detection on %d rows (%d distinct items), eps sweep" % (
        r["curated"]["pool_rows"], r["curated"]["pool_items"]))
    print(f"   {'eps':>7}{'removed':>9}{'precision':>11}{'recall':>8}{'items kept':>12}{'seconds':>9}")
    for p in r["precision_recall"]:
        print(f"   {p['eps']:>7g}{p['removed']:>9}{p['precision']:>11.4f}{p['recall']:>8.4f}{p['distinct_items_kept']:>12}{p['seconds']:>9}")
    c = r["curated"]
    print(f"\n2. distinct items in a {c['subset']}-row subset (pool: {c['pool_items']} items, eps {c['eps']})")
    for key, label in (("curated_with_dedup", "dedup + curate"), ("curated_without_dedup", "curate only"),
                       ("uniform_random", "uniform random"), ("uniform_random_of_kept", "dedup + uniform random")):
        print(f"   {label:<24}{c[key]:>8}")
    print("\n3. Spark dedup stage, local[2]")
    print(f"   {'rows':>8}{'seconds':>9}{'s/M rows':>10}{'coarse':>8}{'pairwise':>10}{'merge+write':>13}{'k':>6}{'largest':>9}{'chunked':>9}{'tasks':>7}")
    for s in [*r["spark"], r["spark_chunked"]]:
        print(f"   {s['n']:>8}{s['seconds']:>9}{s['seconds_per_million_rows']:>10}{s['coarse_seconds']:>8}{s['pairwise_seconds']:>10}"
              f"{s['merge_write_seconds']:>13}{s['n_clusters']:>6}{s['largest_cluster']:>9}{s['chunked_clusters']:>9}{s['tasks']:>7}")
    print("\n4. one coarse cluster of m rows through dedup_cluster (the per-task cost)")
    print(f"   {'m':>7}{'kind':>13}{'seconds':>9}{'removed':>9}{'ns/(pair*dim)':>15}")
    for s in r["cluster_cost"]:
        print(f"   {s['m']:>7}{s['kind']:>13}{s['seconds']:>9}{s['removed']:>9}{s['ns_per_pair_dim']:>15}")
    print(f"\nwrote {os.path.join(RESULTS, 'dedup.json')}")


if __name__ == "__main__":
    sys.exit(main())
