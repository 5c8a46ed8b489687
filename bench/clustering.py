"""Clustering benchmark: lakecurate on Spark vs faiss in-process vs Spark MLlib, in one run.

    .venv/bin/python bench/clustering.py            # defaults: 1M x 384, k = 1000 (~20 min, 2 cores)
    .venv/bin/python bench/clustering.py --quick    # small sizes (~3 min): a smoke run of every section

Prints a table and writes bench/results/clustering.json. Every measurement runs in its own
subprocess (a fresh Python and, for Spark, a fresh local session), so one section's memory or
threads never leak into another and the driver's peak memory (ru_maxrss of the Python driver)
is that of the measured job alone. Data are generated once per (n, d) into bench/results/data/.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
DATA = os.path.join(RESULTS, "data")
sys.path.insert(0, HERE)

# issue 4 targets
TARGET_FAISS_RATIO = 1.3
TARGET_FAISS_RATIO_17 = 1.0  # issue 17
TARGET_MLLIB_SPEEDUP = 20.0
TARGET_INIT_ITERS = 2.0
TARGET_INIT_OBJECTIVE = 0.02
TARGET_MEMORY_SPREAD = 0.15  # "flat": peak driver RSS within 15% across the N sizes
TARGET_LINEAR_R2 = 0.98  # per-iteration time vs N: a straight line through the sizes


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _mean(v):
    return float(sum(v) / len(v))


def _median(v):
    return float(statistics.median(v)) if v else float("nan")


# ------------------------------------------------------------------ workers (one per subprocess)


def _spark(partitions_hint: int = 0):
    from lakecurate.spark.session import get_spark

    return get_spark("local[*]", "lakecurate-bench", {"spark.driver.memory": "8g", "spark.sql.execution.arrow.maxRecordsPerBatch": "20000"})


def w_gen(p):
    from data import generate

    t0 = time.perf_counter()
    npy, parquet = generate(DATA, p["n"], p["d"], seed=p.get("seed", 0))
    return {"npy": npy, "parquet": parquet, "seconds": time.perf_counter() - t0}


def w_faiss(p):
    """faiss.Kmeans in one process on every point, and lakecurate's own loop in-process."""
    import lakecurate  # noqa: F401  (first: its BLAS tuning must precede faiss's import)
    import numpy as np
    import faiss
    from lakecurate.core.in_process import NumpyAssigner
    from lakecurate.core.kmeans import init_centroids, lloyd

    x = np.load(p["npy"], mmap_mode="r")[: p["n"]]
    x = np.ascontiguousarray(x)
    k, iters = p["k"], p["iters"]
    rng = np.random.default_rng(0)
    c0 = init_centroids(NumpyAssigner(x), k, rng)
    km = faiss.Kmeans(x.shape[1], k, niter=iters, max_points_per_centroid=x.shape[0] + 1, seed=1, verbose=False)
    t0 = time.perf_counter()
    km.train(x, init_centroids=c0)
    total = time.perf_counter() - t0
    cum = [s["time"] for s in km.iteration_stats]
    per_iter = [cum[0]] + [b - a for a, b in zip(cum, cum[1:])]
    out = {"faiss_per_iter": per_iter, "faiss_total": total, "faiss_objective": float(km.iteration_stats[-1]["obj"]), "faiss_threads": faiss.omp_get_max_threads()}
    if p.get("lakecurate_inprocess", True):
        fit = lloyd(NumpyAssigner(x), c0, iters, np.random.default_rng(1))
        out["inprocess_per_iter"] = [it.seconds for it in fit.iterations]
    return out


def w_sgemm(p):
    """The machine's fp32 GEMM rate at the assignment's shapes, and the kernels' own rates.

    numpy's sgemm of a (rows x d) block by the (d x k) centroids, with every thread and with one;
    on one thread, at a Spark task's block (20k rows): faiss's k=1 search (faiss.Kmeans' kernel),
    and lakecurate's exact assignment kernel (``assign_batch``: k=2 search, re-score, float64 sums).
    Best of 5; FLOP/s count 2 x rows x k x d.
    """
    import lakecurate  # noqa: F401  (first: its BLAS tuning must precede faiss's import)
    import numpy as np
    import faiss
    import threadpoolctl

    from lakecurate.core.assign import assign_batch

    d, k = p["d"], p["k"]
    rng = np.random.default_rng(0)
    c = rng.standard_normal((k, d), dtype=np.float32)

    def best(f, rows):
        t = min(_timed(f) for _ in range(5))
        return 2.0 * rows * k * d / t / 1e9

    big = rng.standard_normal((65536, d), dtype=np.float32)
    block = rng.standard_normal((20000, d), dtype=np.float32)
    threads = os.cpu_count() or 1
    out = {"threads": threads, "sgemm_all_threads": best(lambda: big @ c.T, 65536)}
    with threadpoolctl.threadpool_limits(1):
        out["sgemm_one_thread"] = best(lambda: block @ c.T, 20000)
    faiss.omp_set_num_threads(1)
    out["faiss_knn1_one_thread"] = best(lambda: faiss.knn(block, c, 1), 20000)
    out["faiss_knn2_one_thread"] = best(lambda: faiss.knn(block, c, 2), 20000)
    out["assign_batch_one_thread"] = best(lambda: assign_batch(block, c), 20000)
    return out


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def _spark_assigner(spark, p):
    """(assigner, seconds to cache): ``p["tuning"]`` may name AssignTuning fields, ``cache`` and ``faiss_threads``."""
    from lakecurate.spark.assigner import AssignTuning, SparkAssigner
    from lakecurate.spark.blocks import EmbeddingBlocks

    df = spark.read.parquet(p["parquet"])
    if p.get("limit"):
        df = df.where(f"id < {int(p['limit'])}")
    t0 = time.perf_counter()
    tuning = dict(p.get("tuning", {}))
    blocks = EmbeddingBlocks.from_dataframe(spark, df, id_column="id", embedding_column="embedding", partitions=p.get("partitions", 0),
                                            where="bench", cache=tuning.pop("cache", "local_files"))
    blocks.faiss_threads = tuning.pop("faiss_threads", 0)
    return SparkAssigner(blocks, AssignTuning(**tuning)), time.perf_counter() - t0


def w_spark(p):
    """lakecurate level-1 k-means on Spark: cache, init (sampled k-means++), Lloyd iterations."""
    import numpy as np
    from lakecurate.core.kmeans import init_centroids, lloyd

    spark = _spark()
    sa, cache_s = _spark_assigner(spark, p)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    c0 = init_centroids(sa, p["k"], rng)
    init_s = time.perf_counter() - t0
    fit = lloyd(sa, c0, p["iters"], rng)
    sa.blocks.release()
    return {
        "n": sa.n,
        "cache_seconds": cache_s,
        "init_seconds": init_s,
        "per_iter": [it.seconds for it in fit.iterations],
        "objective": fit.objective,
        "objectives": [it.objective for it in fit.iterations],
        "centroids_digest": hashlib.blake2b(np.ascontiguousarray(fit.centroids).tobytes(), digest_size=16).hexdigest(),
        "partitions": sa.blocks.num_partitions,
        "driver_peak_rss_mb": _maxrss_mb(),
    }


def w_variants(p):
    """One optimisation at a time: per-pass assignment seconds of each variant, same session."""
    import numpy as np
    import pyarrow as pa
    from lakecurate.core.assign import Assignment, assign_batch
    from lakecurate.core.kmeans import init_centroids
    from lakecurate.spark.arrow import list_column_to_matrix
    from lakecurate.spark.assigner import AssignTuning
    from lakecurate.spark.tasks import configure_faiss, ship_to_tasks

    spark = _spark()
    sa, _ = _spark_assigner(spark, p)
    c = init_centroids(sa, p["k"], np.random.default_rng(0))
    k, d = c.shape
    reps = p["reps"]

    def time_pass(fn):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return ts

    def list_decode_pass(df):
        get, free = ship_to_tasks(c)

        def partial(batches):
            configure_faiss(0)
            acc = Assignment.zeros(k, d)
            for b in batches:
                x = list_column_to_matrix(b.column("embedding"), d)
                acc = acc + assign_batch(x, get())
            yield pa.record_batch({"counts": pa.array([acc.counts.tobytes()]), "sums": pa.array([acc.sums.tobytes()])})

        tot = np.zeros((k, d))
        for row in df.mapInArrow(partial, "counts BINARY, sums BINARY").toLocalIterator():
            tot += np.frombuffer(row["sums"], np.float64).reshape(k, d)
        free()

    out = {}
    for name, tuning in p["variants"].items():
        tuning = dict(tuning)
        # the block files exist once per cache; "spark" streams the same cached blocks instead
        sa.blocks.read_block_files = tuning.pop("cache", "local_files") != "spark"
        sa.blocks.faiss_threads = tuning.pop("faiss_threads", 0)
        sa.tuning = AssignTuning(**tuning)
        out[name] = time_pass(lambda: sa.assign(c))
    sa.blocks.read_block_files, sa.blocks.faiss_threads = True, 0
    if p.get("cache_forms", True):
        parts = sa.blocks.num_partitions
        src = spark.read.parquet(p["parquet"]).select("id", "embedding")
        if p.get("limit"):
            src = src.where(f"id < {int(p['limit'])}")
        out["cache: none (re-read Parquet, decode list<float> every pass)"] = time_pass(lambda: list_decode_pass(src.repartition(parts)))
        from pyspark import StorageLevel

        cached = src.repartition(parts).persist(StorageLevel.MEMORY_AND_DISK)
        cached.count()
        out["cache: DataFrame of list<float> rows (decode every pass)"] = time_pass(lambda: list_decode_pass(cached))
        cached.unpersist()
        import tempfile

        from lakecurate.config import LakeConfig
        from lakecurate.lake import Lake
        from lakecurate.spark.assigner import SparkAssigner
        from lakecurate.spark.blocks import EmbeddingBlocks

        with tempfile.TemporaryDirectory(prefix="bench-lake-") as tmp:  # serverless: no cache() at all
            staged = EmbeddingBlocks.from_dataframe(spark, src, id_column="id", embedding_column="embedding", partitions=parts,
                                                    where="bench", cache="lake", lake=Lake(spark, LakeConfig(root=tmp)))
            on_lake = SparkAssigner(staged)
            out["cache: none, blocks staged once in the lake, re-read every pass (spark.block_cache=lake)"] = time_pass(lambda: on_lake.assign(c))
            staged.release()
    partitions = sa.blocks.num_partitions
    sa.blocks.release()
    return {"seconds": out, "k": k, "n": sa.n, "partitions": partitions}


def w_mllib(p):
    """Spark MLlib KMeans on the same rows: per-iteration seconds from fits of 1 and 1+m iterations."""
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    spark = _spark()
    df = spark.read.parquet(p["parquet"]).where(f"id < {int(p['n'])}").select(array_to_vector(F.col("embedding")).alias("features"))
    df = df.repartition(p.get("partitions") or 2 * spark.sparkContext.defaultParallelism).cache()
    n = df.count()
    warm = df.limit(min(n, 20_000)).cache()  # warm-up (JIT, broadcast paths) on a subset: an iteration at full size costs minutes
    times = {}
    for label, data, iters in (("warm-up", warm, 1), ("one", df, 1), ("more", df, 1 + p["iters"])):
        km = KMeans(k=p["k"], maxIter=iters, tol=0.0, initMode="random", seed=1)
        t0 = time.perf_counter()
        model = km.fit(data)
        times[label] = (time.perf_counter() - t0, model.summary.numIter)
    (t1, _), (t2, it2) = times["one"], times["more"]
    per_iter = (t2 - t1) / max(1, it2 - 1)
    if per_iter <= 0:  # timing noise larger than the extra iterations: fall back to the whole fit's mean (favours lakecurate less)
        per_iter = t2 / max(1, it2)
    return {"n": n, "fit_1_iter": t1, "fit_more": t2, "iters_done": it2, "per_iter": per_iter}


def w_init(p):
    """Sampled k-means++ (as core/kmeans.init_centroids) vs exact k-means++ on all rows, then Lloyd."""
    import numpy as np
    from lakecurate.core.in_process import NumpyAssigner
    from lakecurate.core.kmeans import init_centroids, kmeans_plusplus, lloyd

    x = np.ascontiguousarray(np.load(p["npy"], mmap_mode="r")[: p["n"]])
    a = NumpyAssigner(x)
    out = {"n": x.shape[0], "seeds": []}
    for seed in range(p["seeds"]):
        row = {}
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        c_s = init_centroids(a, p["k"], rng)
        row["sample_init_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        c_e = kmeans_plusplus(x, p["k"], np.random.default_rng(seed))
        row["exact_init_seconds"] = time.perf_counter() - t0
        if p.get("sklearn"):
            from sklearn.cluster import kmeans_plusplus as sk_kpp

            t0 = time.perf_counter()
            sk_kpp(x, p["k"], random_state=seed)
            row["sklearn_greedy_init_seconds"] = time.perf_counter() - t0
        f_s = lloyd(a, c_s, p["iters"], np.random.default_rng(100 + seed))
        f_e = lloyd(a, c_e, p["iters"], np.random.default_rng(100 + seed))
        row["sample_objective"] = f_s.objective
        row["exact_objective"] = f_e.objective
        row["iter_seconds"] = _median([it.seconds for it in f_s.iterations + f_e.iterations])
        out["seeds"].append(row)
    return out


def w_e2e(p):
    """`lakecurate run` (pipeline.run) on the Parquet pool: wall time by stage and level."""
    import shutil

    import lakecurate.pipeline as pipeline
    from lakecurate.plan import load_plan

    lake_root = os.path.join(RESULTS, f"lake-e2e-n{p['n']}")
    shutil.rmtree(lake_root, ignore_errors=True)
    cfg = load_plan(data={
        "name": "bench",
        "input": {"format": "parquet", "path": p["parquet"]},
        "lake": {"root": lake_root},
        "clustering": {"n_clusters": p["levels"], "n_resampling_steps": p["resampling_steps"], "resample_size": p["resample_size"], "n_iter": p["iters"]},
        "sampling": {"target_size": p["target"]},
        "spark": {"master": "local[*]", "conf": {"spark.driver.memory": "8g"}},
    })
    t0 = time.perf_counter()
    res = pipeline.run(cfg)
    wall = time.perf_counter() - t0
    cl = res.stages.get("cluster", {})
    levels = [{"level": lv["level"], "k": lv["n_clusters"], "inputs": lv["n_inputs"], "seconds": lv["seconds"],
               "init_seconds": sum(s["init_seconds"] for s in lv["steps"])} for lv in cl.get("levels", [])]
    shutil.rmtree(lake_root, ignore_errors=True)
    return {"wall_seconds": wall, "stage_seconds": res.stage_seconds, "cache_seconds": cl.get("cache_seconds"),
            "write_seconds": cl.get("write_seconds"), "levels": levels, "n_rows": cl.get("n_rows"),
            "driver_peak_rss_mb": _maxrss_mb()}


def w_blas(p):
    """faiss knn seconds under this process's BLAS setting (the parent sets LAKECURATE_BLAS_TUNING)."""
    import lakecurate  # noqa: F401  (first: its BLAS tuning must precede faiss's import)
    import numpy as np
    import faiss

    x = np.ascontiguousarray(np.load(p["npy"], mmap_mode="r")[: p["n"]])
    c = x[: p["k"]].copy()
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        faiss.knn(x, c, 2)
        ts.append(time.perf_counter() - t0)
    return {"knn_seconds": ts, "coretype": os.environ.get("OPENBLAS_CORETYPE", "(OpenBLAS default)")}


WORKERS = {name[2:]: fn for name, fn in globals().items() if name.startswith("w_")}


def run_worker(name: str, params: dict, env: dict | None = None, timeout: int = 3600) -> dict:
    out_file = os.path.join(RESULTS, f".worker-{name}-{os.getpid()}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--params", json.dumps(params), "--out", out_file]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not os.path.exists(out_file):
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"worker {name} failed (rc={proc.returncode})")
    with open(out_file) as f:
        res = json.load(f)
    os.remove(out_file)
    res["process_seconds"] = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------ the benchmark


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _linear_fit(ns, ts):
    import numpy as np

    ns, ts = np.asarray(ns, float), np.asarray(ts, float)
    slope, icpt = np.polyfit(ns, ts, 1)
    pred = slope * ns + icpt
    r2 = 1 - ((ts - pred) ** 2).sum() / max(((ts - ts.mean()) ** 2).sum(), 1e-12)
    return float(slope), float(icpt), float(r2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="rows of the headline comparison")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=5, help="Lloyd iterations timed per run")
    ap.add_argument("--mllib-n", type=int, default=250_000,
                    help="rows for the MLlib comparison: MLlib's fits (1 and 1 + mllib-iters iterations) take ~4 min at 250k")
    ap.add_argument("--mllib-iters", type=int, default=2)
    ap.add_argument("--init-n", type=int, default=200_000, help="rows for exact vs sampled k-means++")
    ap.add_argument("--init-iters", type=int, default=20)
    ap.add_argument("--init-seeds", type=int, default=1)
    ap.add_argument("--sklearn", action="store_true", help="also time sklearn's greedy k-means++ (slow)")
    ap.add_argument("--scale-n", default="125000,250000,500000,1000000")
    ap.add_argument("--scale-k", default="250,1000,4000")
    ap.add_argument("--scale-k-n", type=int, default=250_000)
    ap.add_argument("--scale-iters", type=int, default=3)
    ap.add_argument("--e2e-n", type=int, default=1_000_000)
    ap.add_argument("--e2e-levels", default="2000,500,100")
    ap.add_argument("--e2e-iters", type=int, default=10)
    ap.add_argument("--e2e-target", type=int, default=100_000)
    ap.add_argument("--variants-n", type=int, default=250_000)
    ap.add_argument("--variants-big-k", type=int, default=10_000, help="k for the partial-aggregation comparison")
    ap.add_argument("--variants-big-k-n", type=int, default=100_000)
    ap.add_argument("--sections", default="blas,headline,mllib,init,e2e,scale_n,scale_k,variants")
    ap.add_argument("--quick", action="store_true", help="small sizes: every section in a few minutes")
    ap.add_argument("--out", default=os.path.join(RESULTS, "clustering.json"))
    ap.add_argument("--render", metavar="JSON", help="print the tables of a results file and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.render:
        with open(args.render) as f:
            print(render(json.load(f)))
        return 0
    if args.worker:
        res = WORKERS[args.worker](json.loads(args.params))
        with open(args.out, "w") as f:
            json.dump(res, f)
        return 0

    if args.quick:
        args.n, args.dim, args.iters = 100_000, 128, 3
        args.mllib_n, args.mllib_iters = 20_000, 1
        args.init_n, args.init_iters = 20_000, 10
        args.scale_n, args.scale_k, args.scale_k_n, args.scale_iters = "25000,50000,75000,100000", "100,400", 50_000, 2
        args.e2e_n, args.e2e_levels, args.e2e_iters, args.e2e_target = 100_000, "500,100,20", 5, 10_000
        args.variants_n, args.variants_big_k, args.variants_big_k_n = 50_000, 2000, 20_000
        if args.k == 1000:
            args.k = 200
    os.makedirs(DATA, exist_ok=True)
    sections = set(args.sections.split(","))
    scale_n = [int(v) for v in args.scale_n.split(",")]
    need = max([args.n, args.mllib_n, args.init_n, args.e2e_n, args.variants_n, args.scale_k_n, args.variants_big_k_n] + scale_n)
    started = time.time()
    print(f"generating/reusing data: {need} x {args.dim} ...", flush=True)
    data = run_worker("gen", {"n": need, "d": args.dim})
    npy, parquet = data["npy"], data["parquet"]
    base = {"npy": npy, "parquet": parquet}
    R: dict = {"command": " ".join([os.path.relpath(sys.executable, ROOT), "bench/clustering.py"] + (argv if argv is not None else sys.argv[1:])),
               "args": vars(args), "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "sections": {}}
    S = R["sections"]
    verdicts = []

    def lim(n):
        return {} if n >= need else {"limit": n}

    if "blas" in sections:
        print("blas: faiss knn with and without OPENBLAS_CORETYPE tuning ...", flush=True)
        p = {**base, "n": min(args.n, 200_000), "k": args.k}
        tuned = run_worker("blas", p)
        plain = run_worker("blas", p, env={"LAKECURATE_BLAS_TUNING": "0"})
        S["blas"] = {"n": p["n"], "k": args.k, "tuned": tuned, "untuned": plain, "speedup": min(plain["knn_seconds"]) / min(tuned["knn_seconds"])}

    if "headline" in sections:
        print(f"headline: {args.n} x {args.dim}, k={args.k}, {args.iters} iterations: faiss in-process ...", flush=True)
        f = run_worker("faiss", {**base, "n": args.n, "k": args.k, "iters": args.iters})
        print("headline: lakecurate on Spark ...", flush=True)
        s = run_worker("spark", {**base, **lim(args.n), "k": args.k, "iters": args.iters})
        print("headline: lakecurate on Spark without group bounds ...", flush=True)
        s_off = run_worker("spark", {**base, **lim(args.n), "k": args.k, "iters": args.iters, "tuning": {"prune": False}})
        print("headline: the machine's sgemm rate at the assignment's shapes ...", flush=True)
        g = run_worker("sgemm", {"d": args.dim, "k": args.k})
        # the mean over the fit: with group bounds an iteration's cost falls as the centroids settle,
        # so the best iteration would flatter; faiss's iterations all cost the same
        ratio = _mean(s["per_iter"]) / _mean(f["faiss_per_iter"])
        S["headline"] = {"faiss": f, "spark": s, "spark_no_bounds": s_off, "sgemm": g, "ratio": ratio,
                         "ratio_best": min(s["per_iter"]) / min(f["faiss_per_iter"]),
                         "ratio_no_bounds": _mean(s_off["per_iter"]) / _mean(f["faiss_per_iter"])}
        same = s.get("objectives") == s_off.get("objectives") and s.get("centroids_digest") == s_off.get("centroids_digest")
        verdicts.append(("group bounds give the full search's fit (every iteration's objective and the centroids, bit for bit)",
                         "same" if same else f"differs (final objective {s['objective']!r} vs {s_off['objective']!r})", _verdict(same)))
        for target in (TARGET_FAISS_RATIO, TARGET_FAISS_RATIO_17):
            verdicts.append((f"Spark per-iteration (mean of {args.iters}) <= {target}x faiss in-process ({args.n} x {args.dim}, k={args.k})",
                             f"{ratio:.2f}x", _verdict(ratio <= target)))

    if "mllib" in sections:
        print(f"mllib: Spark MLlib KMeans at {args.mllib_n} x {args.dim}, k={args.k} ...", flush=True)
        m = run_worker("mllib", {**base, "n": args.mllib_n, "k": args.k, "iters": args.mllib_iters})
        s = run_worker("spark", {**base, **lim(args.mllib_n), "k": args.k, "iters": max(3, args.mllib_iters)})
        speed = m["per_iter"] / min(s["per_iter"])
        S["mllib"] = {"mllib": m, "spark": s, "speedup": speed}
        verdicts.append((f"lakecurate >= {TARGET_MLLIB_SPEEDUP:g}x faster per iteration than MLlib ({args.mllib_n} x {args.dim}, k={args.k})",
                         f"{speed:.1f}x", _verdict(speed >= TARGET_MLLIB_SPEEDUP)))

    if "init" in sections:
        print(f"init: sampled vs exact k-means++ at {args.init_n} x {args.dim}, k={args.k}, then {args.init_iters} iterations ...", flush=True)
        i = run_worker("init", {**base, "n": args.init_n, "k": args.k, "iters": args.init_iters, "seeds": args.init_seeds, "sklearn": args.sklearn})
        rows = i["seeds"]
        gap = max(r["sample_objective"] / r["exact_objective"] - 1 for r in rows)
        S["init"] = {**i, "objective_gap": gap}
        verdicts.append((f"sampled-init objective within {TARGET_INIT_OBJECTIVE:.0%} of exact k-means++ after {args.init_iters} iterations",
                         f"{gap:+.2%}", _verdict(gap <= TARGET_INIT_OBJECTIVE)))
        if "headline" in S:
            s = S["headline"]["spark"]
            in_iters = s["init_seconds"] / min(s["per_iter"])
            S["init"]["spark_init_in_iterations"] = in_iters
            verdicts.append((f"init (on Spark, {args.n} rows) <= {TARGET_INIT_ITERS:g} Lloyd iterations",
                             f"{in_iters:.2f} iters ({s['init_seconds']:.1f}s)", _verdict(in_iters <= TARGET_INIT_ITERS)))

    if "e2e" in sections:
        levels = [int(v) for v in args.e2e_levels.split(",")]
        print(f"e2e: lakecurate run, {args.e2e_n} rows, levels {levels}, target {args.e2e_target} ...", flush=True)
        e = run_worker("e2e", {"parquet": parquet if args.e2e_n >= need else _subset_parquet(parquet, args.e2e_n), "n": args.e2e_n, "levels": levels,
                               "resampling_steps": 3, "resample_size": [1] + [max(2, (levels[i - 1] // levels[i]) // 2) for i in range(1, len(levels))],
                               "iters": args.e2e_iters, "target": args.e2e_target})
        S["e2e"] = e

    if "scale_n" in sections:
        S["scale_n"] = []
        for n in scale_n:
            print(f"scale_n: lakecurate on Spark at N={n}, k={args.k} ...", flush=True)
            s = run_worker("spark", {**base, **lim(n), "k": args.k, "iters": args.scale_iters})
            S["scale_n"].append({"n": n, "per_iter": min(s["per_iter"]), "per_iter_median": _median(s["per_iter"]), "cache_seconds": s["cache_seconds"], "init_seconds": s["init_seconds"], "driver_peak_rss_mb": s["driver_peak_rss_mb"]})
        mems = [r["driver_peak_rss_mb"] for r in S["scale_n"]]
        spread = (max(mems) - min(mems)) / min(mems)
        slope, icpt, r2 = _linear_fit([r["n"] for r in S["scale_n"]], [r["per_iter"] for r in S["scale_n"]])
        S["scale_n_fit"] = {"seconds_per_million_rows": slope * 1e6, "intercept": icpt, "r2": r2, "memory_spread": spread}
        verdicts.append((f"driver peak memory flat in N (spread <= {TARGET_MEMORY_SPREAD:.0%})",
                         f"{min(mems):.0f}-{max(mems):.0f} MB ({spread:.0%})", _verdict(spread <= TARGET_MEMORY_SPREAD)))
        verdicts.append((f"per-iteration time linear in N (R^2 >= {TARGET_LINEAR_R2})",
                         f"R^2={r2:.3f}, {slope * 1e6:.2f}s/1M rows + {icpt:.2f}s", _verdict(r2 >= TARGET_LINEAR_R2)))

    if "scale_k" in sections:
        S["scale_k"] = []
        for k in [int(v) for v in args.scale_k.split(",")]:
            print(f"scale_k: N={args.scale_k_n}, k={k} ...", flush=True)
            s = run_worker("spark", {**base, **lim(args.scale_k_n), "k": k, "iters": args.scale_iters})
            S["scale_k"].append({"k": k, "per_iter": min(s["per_iter"]), "init_seconds": s["init_seconds"]})

    if "variants" in sections:
        print(f"variants: one optimisation at a time at {args.variants_n} x {args.dim}, k={args.k} ...", flush=True)
        base_variants = {
            "default (block files, faiss threads = task cores, sparse one-hot sums, sparse partials)": {},
            "cache: blocks streamed from Spark's cache every pass (spark.block_cache=spark)": {"cache": "spark"},
            "faiss threads: faiss default (all cores in every task)": {"faiss_threads": -1},
            "sums: np.add.at": {"sums": "add_at"},
            "partials: dense k x d per partition": {"partials": "dense"},
            "partials: shuffle per-cluster rows": {"partials": "shuffle"},
        }
        v = run_worker("variants", {**base, **lim(args.variants_n), "k": args.k, "reps": 3, "variants": base_variants})
        print(f"variants: partial aggregation at k={args.variants_big_k}, {args.variants_big_k_n} rows, 16 partitions ...", flush=True)
        big = run_worker("variants", {**base, **lim(args.variants_big_k_n), "k": args.variants_big_k, "reps": 2, "partitions": 16, "cache_forms": False,
                                      "variants": {"partials: dense k x d per partition": {"partials": "dense"},
                                                   "partials: sparse (non-empty clusters only)": {"partials": "sparse"},
                                                   "partials: shuffle per-cluster rows": {"partials": "shuffle"}}})
        S["variants"] = {"k_small": v, "k_large": big}

    R["machine"]["loadavg_end"] = os.getloadavg()
    R["wall_seconds"] = time.time() - started
    R["verdicts"] = [{"target": t, "measured": m, "verdict": v} for t, m, v in verdicts]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(R, f, indent=1, default=str)
    print(render(R))
    print(f"\nwrote {os.path.relpath(args.out, ROOT)} ({R['wall_seconds']:.0f}s)")
    return 0


def _subset_parquet(parquet: str, n: int) -> str:
    """The first n rows of the pool as their own Parquet directory (for pipeline.run's input)."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    out = parquet.replace(".parquet", f"-first{n}.parquet")
    if os.path.exists(os.path.join(out, "_SUCCESS")):
        return out
    os.makedirs(out, exist_ok=True)
    table = ds.dataset(parquet, format="parquet").to_table(filter=ds.field("id") < n)
    pq.write_table(table, os.path.join(out, "part-00000.parquet"), row_group_size=10_000)
    open(os.path.join(out, "_SUCCESS"), "w").close()
    return out


def render(R: dict) -> str:
    S, a = R["sections"], R["args"]
    L = [f"# lakecurate clustering benchmark  ({R['machine']['cpus']} cores, load avg start {R['machine']['loadavg_start'][0]:.1f} end {R['machine']['loadavg_end'][0]:.1f})",
         f"command: {R['command']}", ""]

    def row(*cells):
        L.append("| " + " | ".join(str(c) for c in cells) + " |")

    if "blas" in S:
        b = S["blas"]
        L += [f"## BLAS kernel (faiss knn k=2, {b['n']} x {a['dim']}, {b['k']} centroids, best of 3)", "| setting | seconds |", "|---|---|"]
        row(f"OPENBLAS_CORETYPE={b['tuned']['coretype']} (lakecurate/_blas.py)", f"{min(b['tuned']['knn_seconds']):.2f}")
        row("LAKECURATE_BLAS_TUNING=0 (bundled OpenBLAS's own choice)", f"{min(b['untuned']['knn_seconds']):.2f}")
        row("speed-up", f"{b['speedup']:.2f}x")
        L.append("")
    if "headline" in S:
        h = S["headline"]
        L += [f"## Level-1 k-means per Lloyd iteration: {a['n']} x {a['dim']}, k={a['k']}, {a['iters']} iterations (mean / best / median s/iter)",
              "| implementation | mean s/iter | best | median | vs faiss (mean) | every iteration, s |", "|---|---|---|---|---|---|"]
        fmean = _mean(h["faiss"]["faiss_per_iter"])

        def impl(name, per_iter):
            row(name, f"{_mean(per_iter):.2f}", f"{min(per_iter):.2f}", f"{_median(per_iter):.2f}", f"{_mean(per_iter) / fmean:.2f}x",
                " ".join(f"{v:.1f}" for v in per_iter))

        impl(f"faiss.Kmeans in-process ({h['faiss']['faiss_threads']} threads, every point)", h["faiss"]["faiss_per_iter"])
        if "inprocess_per_iter" in h["faiss"]:
            impl("lakecurate Lloyd in-process (NumpyAssigner: exact recompute, float64 sums)", h["faiss"]["inprocess_per_iter"])
        impl(f"lakecurate on Spark local[*] ({h['spark']['partitions']} partitions), group bounds (default)", h["spark"]["per_iter"])
        if "spark_no_bounds" in h:
            impl("lakecurate on Spark, without group bounds (`AssignTuning(prune=False)`)", h["spark_no_bounds"]["per_iter"])
        fb, sb = min(h["faiss"]["faiss_per_iter"]), (h["spark_no_bounds"] if "spark_no_bounds" in h else h["spark"])["per_iter"]
        sb = min(sb)  # the sgemm shares below: a full pass (no bounds), best iteration
        L.append(f"Spark one-off costs: cache {h['spark']['cache_seconds']:.1f}s, sampled k-means++ init {h['spark']['init_seconds']:.1f}s; driver peak RSS {h['spark']['driver_peak_rss_mb']:.0f} MB")
        L.append("")
        if "sgemm" in h:
            g = h["sgemm"]
            flops = 2.0 * a["n"] * a["k"] * a["dim"] / 1e9  # one Lloyd iteration's assignment
            rate = g["sgemm_all_threads"]
            L += [f"### Share of the machine's sgemm rate ({a['dim']} x {a['k']} centroids; numpy sgemm {rate:.1f} GFLOP/s on "
                  f"{g['threads']} threads, {g['sgemm_one_thread']:.1f} on one)",
                  "| kernel | GFLOP/s | share of sgemm |", "|---|---|---|"]
            one = g["sgemm_one_thread"]
            for name, v, ref in [
                ("faiss.Kmeans, one iteration (best), all threads", flops / fb, rate),
                ("lakecurate on Spark without bounds, one iteration (best), all cores", flops / sb, rate),
                ("faiss knn k=1 (faiss.Kmeans' search), one thread, 20k-row block", g["faiss_knn1_one_thread"], one),
                ("faiss knn k=2 (lakecurate's search), one thread", g["faiss_knn2_one_thread"], one),
                ("lakecurate assignment kernel (assign_batch), one thread", g["assign_batch_one_thread"], one),
            ]:
                row(name, f"{v:.1f}", f"{v / ref:.0%}")
            L.append("")
    if "mllib" in S:
        m = S["mllib"]
        L += [f"## vs Spark MLlib KMeans: {m['mllib']['n']} x {a['dim']}, k={a['k']} (initMode=random, tol=0)", "| implementation | s/iter |", "|---|---|"]
        row("Spark MLlib KMeans", f"{m['mllib']['per_iter']:.2f}")
        row("lakecurate on Spark (best iteration)", f"{min(m['spark']['per_iter']):.2f}")
        row("speed-up", f"{m['speedup']:.1f}x")
        L.append("")
    if "init" in S:
        i = S["init"]
        L += [f"## Initialisation: {i['n']} x {a['dim']}, k={a['k']}, objective after {a['init_iters']} Lloyd iterations (in-process)",
              "| seed | sampled k-means++ s | exact k-means++ s | Lloyd s/iter | objective sampled | objective exact | gap |", "|---|---|---|---|---|---|---|"]
        for sd, r in enumerate(i["seeds"]):
            row(sd, f"{r['sample_init_seconds']:.2f}", f"{r['exact_init_seconds']:.1f}" + (f" (sklearn greedy {r['sklearn_greedy_init_seconds']:.0f})" if "sklearn_greedy_init_seconds" in r else ""),
                f"{r['iter_seconds']:.2f}", f"{r['sample_objective']:.6g}", f"{r['exact_objective']:.6g}", f"{r['sample_objective'] / r['exact_objective'] - 1:+.2%}")
        if "spark_init_in_iterations" in i:
            L.append(f"On Spark at {a['n']} rows the sampled init (2 Spark passes + k-means++ on {40 * a['k']} rows) cost {i['spark_init_in_iterations']:.2f} Lloyd iterations.")
        L.append("")
    if "e2e" in S:
        e = S["e2e"]
        L += [f"## End to end: lakecurate run, {e['n_rows']} rows x {a['dim']}, levels {a['e2e_levels']}, {a['e2e_iters']} iterations, 3 resampling steps above level 1, target {a['e2e_target']}",
              "| part | seconds |", "|---|---|"]
        row("**wall (pipeline.run, incl. Spark session start)**", f"**{e['wall_seconds']:.1f}**")
        for st, sec in e["stage_seconds"].items():
            row(f"stage {st}", f"{sec:.1f}")
        row("  cluster: validate + cache blocks", f"{e['cache_seconds']:.1f}")
        for lv in e["levels"]:
            row(f"  cluster: level {lv['level']} (k={lv['k']}, {lv['inputs']} inputs; init {lv['init_seconds']:.1f}s)", f"{lv['seconds']:.1f}")
        row("  cluster: write assignments + clusters", f"{e['write_seconds']:.1f}")
        row("driver peak RSS (Python driver process)", f"{e['driver_peak_rss_mb']:.0f} MB")
        L.append("")
    if "scale_n" in S:
        L += [f"## Scaling with N (k={a['k']}, {a['scale_iters']} iterations, best)", "| N | s/iter | s/iter per 1M rows | cache s | driver peak RSS MB |", "|---|---|---|---|---|"]
        for r in S["scale_n"]:
            row(r["n"], f"{r['per_iter']:.2f}", f"{r['per_iter'] / r['n'] * 1e6:.2f}", f"{r['cache_seconds']:.1f}", f"{r['driver_peak_rss_mb']:.0f}")
        f = S["scale_n_fit"]
        L.append(f"linear fit: {f['seconds_per_million_rows']:.2f} s per 1M rows + {f['intercept']:.2f} s fixed per iteration (R^2 {f['r2']:.3f})")
        L.append("")
    if "scale_k" in S:
        L += [f"## Scaling with k (N={a['scale_k_n']})", "| k | s/iter | init s |", "|---|---|---|"]
        for r in S["scale_k"]:
            row(r["k"], f"{r['per_iter']:.2f}", f"{r['init_seconds']:.1f}")
        L.append("")
    if "variants" in S:
        for key in ("k_small", "k_large"):
            v = S["variants"][key]
            L += [f"## One optimisation at a time: seconds per assignment pass ({v['n']} rows x {a['dim']}, k={v['k']}, {v['partitions']} partitions; median of reps)",
                  "| variant | s/pass | vs first row |", "|---|---|---|"]
            names = list(v["seconds"])
            ref = _median(v["seconds"][names[0]])
            for nm in names:
                md = _median(v["seconds"][nm])
                row(nm, f"{md:.2f}", f"{md / ref:.2f}x")
            L.append("")
    if R.get("verdicts"):
        L += ["## Targets (issues 4 and 17)", "| target | measured | verdict |", "|---|---|---|"]
        for vd in R["verdicts"]:
            row(vd["target"], vd["measured"], vd["verdict"])
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
