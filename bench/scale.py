"""Scale benchmark (issue 17): the largest published configurations scaled down, and large k.

    .venv/bin/python bench/scale.py                       # every section (~1 h on an idle 2-core machine)
    .venv/bin/python bench/scale.py --sections dinov3     # one section
    .venv/bin/python bench/scale.py --quick               # small sizes: a smoke run of every section (~4 min)

Sections:

- ``dinov3``: DINOv3's five-level curation (Simeoni et al. 2025, section 3.1: 200M / 8M / 800k /
  100k / 25k clusters over ~17B images) scaled to ``--n`` rows (1.7M: 20k / 800 / 80 / 10 / 3),
  end to end through ``lakecurate run`` (the CLI's ``main`` in a fresh process), on a generated
  long-tailed pool of d = ``--dim``. Resampling as the paper: 10 steps, r about half the mean
  cluster size of each level above 1, r = 1 at level 1; ``n_coarse: auto`` (the plan's choice).
- ``paper``: the paper's four-level web-image run (743M rows: 10M / 500k / 50k / 10k, level 1 in
  two steps of 100k coarse clusters, r = 1 / 10 / 5 / 3, 10 resampling steps) scaled the same way,
  target a tenth of the pool.
- The pool (``--pool``): ``tree`` (default) nests its concepts in groups of groups (what the upper
  levels of a tree can find, as real data's concepts nest); ``flat`` has 2000 independent concepts,
  where nothing above the concepts has structure for the upper levels to find.
- ``large_k``: level 1 at ``--large-n`` x 384 with k = 20k and 100k, one k-means (flat) against
  two steps (sqrt(k) coarse clusters), seconds per Lloyd iteration and the objective after the
  same iterations, on one cached Spark input.

For each run: per-level seconds and objective (from the ``runs`` table), the Python driver's peak
RSS, the plan's estimate beside the measured cluster stage, and the balance of the curated subset
against a uniform random subset of the same size over the pool's generated concepts. Writes
bench/results/scale.json; the figures last measured are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
DATA = os.path.join(RESULTS, "data")
sys.path.insert(0, HERE)

#: DINOv3's levels and rows (section 3.1) and the paper's web-image run (Vo et al. 2024, table 1)
DINOV3_ROWS, DINOV3_LEVELS = 17_000_000_000, [200_000_000, 8_000_000, 800_000, 100_000, 25_000]
PAPER_ROWS, PAPER_LEVELS, PAPER_COARSE = 743_000_000, [10_000_000, 500_000, 50_000, 10_000], 100_000


#: the nested concepts of the default pool: 3 groups of 3 of 8 of 10 of 3 concepts (2160)
POOL_TREE = (3, 3, 8, 10, 3)


def scaled(levels, rows_from, rows_to):
    return [max(2, int(k * rows_to / rows_from + 0.5)) for k in levels]  # half up: DINOv3's 25k -> 2.5 -> 3


def half_mean_sizes(levels):
    """r per level: 1 at level 1, about half the mean cluster size above (the paper's rule)."""
    return [1] + [max(2, round(levels[t - 1] / levels[t] / 2)) for t in range(1, len(levels))]


# ------------------------------------------------------------------ workers (one per subprocess)


def w_run(p):
    """``lakecurate run CONFIG`` in this fresh process: the CLI's own entry point."""
    import resource

    from lakecurate.cli import main

    t0 = time.perf_counter()
    rc = main(["run", p["config"]])
    return {"rc": rc, "wall_seconds": time.perf_counter() - t0,
            "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def w_large_k(p):
    """Flat vs two-step level 1 at large k on one cached input: seconds per iteration and objective."""
    import resource

    from lakecurate.config import LakeConfig
    from lakecurate.core.hierarchy import LevelParams, fit_two_step_level
    from lakecurate.core.kmeans import lloyd
    from lakecurate.lake import Lake
    from lakecurate.spark.assigner import SparkAssigner
    from lakecurate.spark.blocks import EmbeddingBlocks
    from lakecurate.spark.session import get_spark

    spark = get_spark("local[*]", "lakecurate-bench-scale", {"spark.driver.memory": "8g", "spark.sql.execution.arrow.maxRecordsPerBatch": "20000"})
    df = spark.read.parquet(p["parquet"])
    if p.get("limit"):
        df = df.where(f"id < {int(p['limit'])}")
    # the lake is where centroids too large for a task's closure travel (k = 100k x 384: 146 MiB)
    lake = Lake(spark, LakeConfig(root=os.path.join(RESULTS, "lake-large_k")))
    blocks = EmbeddingBlocks.from_dataframe(spark, df, id_column="id", embedding_column="embedding", where="bench", lake=lake)
    sa = SparkAssigner(blocks)
    out = {"n": sa.n, "d": sa.d}

    def keep():  # each k's figures as soon as they exist: a later k that fails loses only its own
        with open(p["partial"], "w") as f:
            json.dump(out, f)

    for k in p["ks"]:
        rng = np.random.default_rng(0)
        c0 = sa.sample(k, 12345)  # random init (k-means++ over 40k rows is itself O(40 k^2 d): minutes at 100k)
        if k <= p["flat_max_k"]:
            t0 = time.perf_counter()
            fit = lloyd(sa, c0, p["flat_iters"], rng)
            out[f"flat_{k}"] = {"per_iter": [it.seconds for it in fit.iterations], "objective": fit.objective,
                                "seconds": time.perf_counter() - t0, "iters": p["flat_iters"]}
        else:  # one assignment pass: what one iteration costs (its objective is the random init's)
            t0 = time.perf_counter()
            a = sa.assign(c0)
            out[f"flat_{k}"] = {"per_iter": [time.perf_counter() - t0], "objective": None, "init_objective": a.inertia, "iters": 1}
        keep()
        c = max(2, math.ceil(math.sqrt(k)))
        params = LevelParams(k, n_iter=p["flat_iters"], init="random", n_coarse=c)
        t0 = time.perf_counter()
        routed, counts, inertia, steps, _ = fit_two_step_level(sa, params, np.random.default_rng(0))
        step = steps[0]
        out[f"two_step_{k}"] = {
            "seconds": time.perf_counter() - t0, "objective": float(inertia.sum()), "coarse": c, "iters": p["flat_iters"],
            "coarse_per_iter": [it["seconds"] for it in step["iterations"]], "fine_seconds": step["fine_seconds"],
            "largest_group": step["largest_group"], "empty": int((counts == 0).sum()),
        }
        keep()
    blocks.release()
    out["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


WORKERS = {"run": w_run, "large_k": w_large_k}


def run_worker(name: str, params: dict, timeout: int = 6 * 3600) -> dict:
    out_file = os.path.join(RESULTS, f".scale-{name}-{os.getpid()}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--params", json.dumps(params), "--out", out_file]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    log_file = os.path.join(RESULTS, f"scale-{name}-{params.get('name', 'x')}.log")
    with open(log_file, "w") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not os.path.exists(out_file):
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"worker {name} failed (rc={proc.returncode}); log {log_file}")
    with open(out_file) as f:
        res = json.load(f)
    os.remove(out_file)
    res["log"] = log_file
    return res


# ------------------------------------------------------------------ the curation runs


def write_config(name: str, npy: str, levels, r, n_coarse, n_iter: int, target: int, lake: str) -> str:
    import yaml

    cfg = {
        "name": name,
        "lake": {"root": lake},
        "input": {"format": "npy", "path": npy},
        "clustering": {"n_clusters": levels, "resample_size": r, "n_resampling_steps": 10, "n_iter": n_iter,
                       "n_coarse": n_coarse, "seed": 0},
        "sampling": {"target_size": target, "strategy": "random", "seed": 0},
        "spark": {"master": "local[*]", "conf": {"spark.driver.memory": "8g"}},
        "report": {"html": True},
        "stages": ["cluster", "sample"],
    }
    path = os.path.join(RESULTS, f"scale-{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


def balance(curated_ids: np.ndarray, concepts: np.ndarray, seed: int = 0) -> dict:
    """Concept balance of the curated rows against a uniform random subset of the same size."""
    from lakecurate.core.metrics import gini

    rng = np.random.default_rng(seed)
    n_concepts = int(concepts.max()) + 1
    rand = rng.choice(concepts.size, size=curated_ids.size, replace=False)
    out = {}
    for name, ids in (("pool", np.arange(concepts.size)), ("random", rand), ("curated", curated_ids)):
        counts = np.bincount(concepts[ids], minlength=n_concepts)
        top = np.sort(counts)[::-1]
        out[name] = {"rows": int(ids.size), "concepts_covered": int((counts > 0).sum()), "gini": float(gini(counts)),
                     "top_1pct_share": float(top[: max(1, n_concepts // 100)].sum() / max(ids.size, 1)),
                     "concepts_with_10": int((counts >= 10).sum())}
    return out


def curation_run(name, npy, levels, r, n_coarse, n_iter, target, rows, dim):
    from deltalake import DeltaTable

    from lakecurate.lake import read_delta_files
    from lakecurate.plan import load_plan
    from lakecurate.sizing import Hardware, calibrate, machine_memory, size_config

    lake = os.path.join(RESULTS, f"lake-{name}")
    if os.path.exists(lake):
        import shutil

        shutil.rmtree(lake)
    config = write_config(name, npy, levels, r, n_coarse, n_iter, target, lake)
    plan = load_plan(config)
    cores = os.cpu_count() or 1
    size = size_config(plan.config, rows, dim, Hardware(cores=cores, driver_cores=cores, driver_memory=machine_memory(), **calibrate(dim, levels[0])))
    res = run_worker("run", {"config": config, "name": name})
    runs = read_delta_files(os.path.join(lake, "runs")).to_pandas()
    run_id = runs["run_id"].iloc[0]  # a fresh lake per run: its one run (the id also hashes the input's fingerprint)
    runs = runs[(runs["run_id"] == run_id) & (runs["status"] == "succeeded")]
    stage = {row["stage"]: (json.loads(row["metrics"]) if isinstance(row["metrics"], str) else row["metrics"], row["seconds"])
             for _, row in runs.iterrows()}
    cluster, cluster_s = stage["cluster"]
    curated = read_delta_files(os.path.join(lake, "curated"), columns=["id", "run_id"]).to_pandas()
    curated = curated[curated["run_id"] == run_id]["id"].to_numpy(np.int64)
    from data import concepts_path

    concepts = np.load(concepts_path(npy))
    del DeltaTable
    return {
        "name": name, "rows": rows, "dim": dim, "levels": levels, "r": r, "n_coarse": n_coarse, "n_iter": n_iter,
        "target": target, "run_id": run_id, "wall_seconds": res["wall_seconds"], "driver_peak_rss_mb": res["driver_peak_rss_mb"],
        "cluster_seconds": cluster_s, "sample_seconds": stage.get("sample", (None, None))[1],
        "cache_seconds": cluster.get("cache_seconds"), "write_seconds": cluster.get("write_seconds"),
        "per_level": cluster["levels"], "plan_seconds": size.seconds, "plan_lines": size.lines(),
        "plan_levels": [{"level": lv.level, "seconds": lv.seconds, "n_coarse": lv.n_coarse, "task_bytes": lv.task_bytes,
                         "why": lv.why} for lv in size.levels],
        "balance": balance(curated, concepts), "report": os.path.join(lake, "reports", run_id, "index.html"),
    }


# ------------------------------------------------------------------ output


def render(R: dict) -> str:
    out = [f"# lakecurate scale benchmark ({R['cores']} cores, load avg start {R['load_start']:.1f} end {R.get('load_end', 0):.1f})",
           f"command: {R['command']}", ""]
    for key in ("dinov3", "paper"):
        if key not in R:
            continue
        x = R[key]
        out += [f"## {key} ({R.get('pool', 'flat')} pool): {x['rows']:,} x {x['dim']}, levels {x['levels']}, r = {x['r']}, n_coarse = {x['n_coarse']}, "
                f"{x['n_iter']} iterations, 10 resampling steps, target {x['target']:,}",
                f"wall (lakecurate run, incl. Spark start) {x['wall_seconds']:.1f} s; cluster stage {x['cluster_seconds']:.1f} s "
                f"(plan's estimate {x['plan_seconds']:.1f} s, measured/estimate {x['cluster_seconds'] / x['plan_seconds']:.2f}); "
                f"cache {x['cache_seconds']:.1f} s; writes {x['write_seconds']:.1f} s; sample {x['sample_seconds']:.1f} s; "
                f"driver peak RSS {x['driver_peak_rss_mb']:.0f} MB", "",
                "| level | k | inputs | two-step (coarse) | seconds | plan's estimate | objective | empty | sizes |",
                "|---|---|---|---|---|---|---|---|---|"]
        for lv, pl in zip(x["per_level"], x["plan_levels"]):
            out.append(f"| {lv['level']} | {lv['n_clusters']:,} | {lv['n_inputs']:,} | {lv.get('coarse_clusters') or '-'} | "
                       f"{lv['seconds']:.1f} | {pl['seconds']:.1f} | {lv['objective']:.4g} | {lv['n_empty']} | "
                       f"{lv['smallest_cluster']}..{lv['largest_cluster']} |")
        b = x["balance"]
        out += ["", "| subset | rows | concepts covered | concepts with >= 10 rows | Gini over concepts | top 1% concepts' share |",
                "|---|---|---|---|---|---|"]
        for s in ("pool", "random", "curated"):
            out.append(f"| {s} | {b[s]['rows']:,} | {b[s]['concepts_covered']} | {b[s]['concepts_with_10']} | {b[s]['gini']:.3f} | "
                       f"{b[s]['top_1pct_share']:.3f} |")
        out += ["", f"report: {x['report']}", ""]
    if "large_k" in R:
        x = R["large_k"]
        out += [f"## Large k: level 1 at {x['n']:,} x {x['d']}, random init, {R['args']['large_iters']} Lloyd iterations each "
                f"(flat above k = {R['args']['flat_max_k']:,}: one assignment pass timed)", "",
                "| k | flat s/iter (median) | flat objective | two-step coarse | two-step s (all) | two-step s/iter equivalent | "
                "two-step objective | objective two-step / flat | largest coarse group | empty |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for k in R["args"]["ks"]:
            f, t = x[f"flat_{k}"], x[f"two_step_{k}"]
            med = float(np.median(f["per_iter"]))
            ratio = f"{t['objective'] / f['objective']:.3f}" if f.get("objective") else "-"
            out.append(f"| {k:,} | {med:.1f} | {f['objective'] if f.get('objective') is None else format(f['objective'], '.5g')} | "
                       f"{t['coarse']} | {t['seconds']:.1f} | {t['seconds'] / t['iters']:.1f} | {t['objective']:.5g} | {ratio} | "
                       f"{t['largest_group']:,} | {t['empty']} |")
        out.append(f"driver peak RSS {x['driver_peak_rss_mb']:.0f} MB")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_700_000, help="rows of the scaled-down curation runs")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--n-iter", type=int, default=20, help="Lloyd iterations per k-means in the curation runs")
    ap.add_argument("--large-n", type=int, default=1_000_000)
    ap.add_argument("--ks", default="20000,100000")
    ap.add_argument("--flat-max-k", type=int, default=20_000, help="above this k the flat k-means times one pass only")
    ap.add_argument("--large-iters", type=int, default=3)
    ap.add_argument("--sections", default="dinov3,paper,large_k")
    ap.add_argument("--pool", choices=["tree", "flat"], default="tree",
                    help="tree: concepts nested in groups (3 x 3 x 8 x 10 x 3 = 2160 leaves, what a 5-level tree can find); "
                         "flat: 2000 independent concepts (no structure above the concepts)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(RESULTS, "scale.json"))
    ap.add_argument("--render", metavar="JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        res = WORKERS[args.worker](json.loads(args.params))
        with open(args.out, "w") as f:
            json.dump(res, f)
        return 0
    if args.render:
        print(render(json.load(open(args.render))))
        return 0
    if args.quick:
        args.n, args.dim, args.n_iter, args.large_n, args.ks, args.flat_max_k, args.large_iters = 120_000, 32, 5, 60_000, "2000,8000", 2000, 2
    from data import generate

    os.makedirs(DATA, exist_ok=True)
    R = {"command": " ".join([".venv/bin/python bench/scale.py", *(argv if argv is not None else sys.argv[1:])]), "pool": args.pool,
         "cores": os.cpu_count(), "load_start": os.getloadavg()[0],
         "args": {"ks": [int(k) for k in args.ks.split(",")], "flat_max_k": args.flat_max_k, "large_iters": args.large_iters}}
    sections = args.sections.split(",")
    if "dinov3" in sections or "paper" in sections:
        npy, _ = generate(DATA, args.n, args.dim, n_concepts=2000, seed=0, tree=POOL_TREE if args.pool == "tree" else ())
    if "dinov3" in sections:
        levels = scaled(DINOV3_LEVELS, DINOV3_ROWS, args.n)
        target = round(1_689_000_000 * args.n / DINOV3_ROWS)  # DINOv3 kept 1.689B of ~17B
        R["dinov3"] = curation_run("dinov3", npy, levels, half_mean_sizes(levels), ["auto"], args.n_iter, target, args.n, args.dim)
        print(render(R), flush=True)
    if "paper" in sections:
        levels = scaled(PAPER_LEVELS, PAPER_ROWS, args.n)
        coarse = max(2, round(PAPER_COARSE * args.n / PAPER_ROWS))
        R["paper"] = curation_run("paper", npy, levels, [1, 10, 5, 3], [coarse, 0, 0, 0], args.n_iter,
                                  round(args.n / 10), args.n, args.dim)  # a tenth of the pool, as DINOv3's
    if "large_k" in sections:
        _, parquet = generate(DATA, args.large_n, 384, n_concepts=2000, seed=0)
        R["large_k"] = run_worker("large_k", {"parquet": parquet, "ks": R["args"]["ks"], "flat_max_k": args.flat_max_k,
                                              "flat_iters": args.large_iters, "name": "large_k",
                                              "partial": args.out + ".large_k.partial"})
    R["load_end"] = os.getloadavg()[0]
    with open(args.out, "w") as f:
        json.dump(R, f, indent=1)
    print(render(R))
    return 0


if __name__ == "__main__":
    sys.exit(main())
