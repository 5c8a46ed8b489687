"""Where one assignment pass spends its time: the per-block kernels, then the Spark pass around them.

    .venv/bin/python bench/assign_profile.py                 # 20k-row blocks, d = 384, k = 1000; Spark at 250k rows
    .venv/bin/python bench/assign_profile.py --spark-n 0     # kernels only (no JVM)

Part 1, one thread, one 20 000 x 384 block (the Spark default Arrow batch), k = 1000, best of 5:
faiss's k = 1 and k = 2 searches, the row-wise exact re-score of one candidate, the float64 cluster
sums, and the whole ``assign_batch`` (what every Lloyd pass runs per block).

Part 2, ``local[*]`` on the benchmark pool's first ``--spark-n`` rows, best of 4 passes after a warm-up:
a pass that only touches each block's first column and an ``assign`` pass, each with block files
(the default) and with the blocks streamed from Spark's cache; and a job that runs an empty
function over the cached partitions (the fixed cost of one pass). Not a test: figures only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def best_ms(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * min(ts)


def kernels(rows: int, d: int, k: int) -> None:
    import faiss

    from lakecurate.core import assign as A

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, d), dtype=np.float32)
    c = x[rng.choice(rows, k, replace=False)] + 0.1 * rng.standard_normal((k, d), dtype=np.float32)
    lab = faiss.knn(x, c, 1)[1][:, 0].astype(np.int64)
    print(f"## per-block kernels: {rows} x {d}, k={k}, 1 thread (best of 5, ms)")
    for name, fn in [
        ("faiss knn k=1 (faiss's own k-means search)", lambda: faiss.knn(x, c, 1)),
        ("faiss knn k=2 (lakecurate's candidates)", lambda: faiss.knn(x, c, 2)),
        ("exact re-score of one candidate", lambda: A.rowwise_sq_dist(x, c, lab)),
        ("float64 cluster sums (sparse one-hot)", lambda: A.cluster_sums(x, lab, k)),
        ("  (for scale: one float32 -> float64 copy of the whole block)", lambda: x.astype(np.float64)),
        ("assign_batch (everything per block)", lambda: A.assign_batch(x, c)),
    ]:
        print(f"| {name} | {best_ms(fn, 5):.1f} |")


def spark_pass(n: int, d: int, k: int) -> None:
    import pyarrow as pa

    from data import generate
    from lakecurate.spark.assigner import SparkAssigner
    from lakecurate.spark.blocks import EmbeddingBlocks
    from lakecurate.spark.session import get_spark

    npy, parquet = generate(os.path.join(HERE, "results", "data"), n, d)
    spark = get_spark("local[*]", "assign-profile", {"spark.driver.memory": "8g", "spark.sql.execution.arrow.maxRecordsPerBatch": "20000"})
    blocks = EmbeddingBlocks.from_dataframe(spark, spark.read.parquet(parquet), id_column="id", embedding_column="embedding", where="profile")
    sa = SparkAssigner(blocks)
    c = np.load(npy, mmap_mode="r")[:k].copy()

    def touch(blocks, _):
        s = 0.0
        for b in blocks:
            s += float(b.vectors[:, 0].sum())
        yield pa.record_batch({"s": pa.array([np.float64(s).tobytes()])})

    def empty(batches):
        for _ in batches:
            pass
        yield pa.record_batch({"s": pa.array([1])})

    def timed(fn):
        fn()  # warm-up: Python workers, imports
        return best_ms(fn, 4) / 1000

    print(f"\n## one Spark pass: {n} x {d}, k={k}, local[*], {blocks.num_partitions} partitions (best of 4, s)")
    print(f"| empty job over the cached partitions | {timed(lambda: blocks.frame.select('part').mapInArrow(empty, 's LONG').collect()):.2f} |")
    for label, from_files in (("block files", True), ("streamed from Spark's cache", False)):
        blocks.read_block_files = from_files
        print(f"| touch every block, {label} | {timed(lambda: blocks.collect(touch, 's BINARY')):.2f} |")
        print(f"| assign pass, {label} | {timed(lambda: sa.assign(c)):.2f} |")
    blocks.release()
    spark.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000, help="rows per block in part 1")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--spark-n", type=int, default=250_000, help="rows of the Spark part (0: skip it)")
    args = ap.parse_args(argv)
    import lakecurate  # noqa: F401  (BLAS tuning before faiss loads)

    kernels(args.rows, args.dim, args.k)
    if args.spark_n:
        spark_pass(args.spark_n, args.dim, args.k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
