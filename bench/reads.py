"""Caching an input as blocks, against pyarrow reading the same files into one float32 matrix.

Issue 32's target: a Parquet or Delta input cached as embedding blocks in at most 3x the time
pyarrow takes to read the same files into one float32 matrix. One process, one ``local[*]``
session, measured side by side: pyarrow alone; the tasks reading the files themselves
(``EmbeddingBlocks.from_files``, what every stage uses for an input that is files); the read
through Spark (``from_dataframe``: the JVM decodes ``list<float>``, then Arrow to Python), each
``--repeat`` times, best and all figures printed.

    .venv/bin/python bench/reads.py                      # 400k x 384 (1 min idle, once the data exists)
    .venv/bin/python bench/reads.py --n 1000000 --cache spark
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from data import generate  # noqa: E402

from lakecurate.spark.arrow import list_column_to_matrix  # noqa: E402


def pyarrow_matrix(folder: str, d: int) -> np.ndarray:
    """The reference: every file's embedding column into one (n, d) float32 matrix."""
    parts = [list_column_to_matrix(pq.read_table(f, columns=["embedding"]).column("embedding"), d)
             for f in sorted(glob.glob(os.path.join(folder, "*.parquet")))]
    return np.concatenate(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cache", default="auto", help="block cache mode (auto, local_files, spark, lake)")
    ap.add_argument("--root", default=os.path.join(HERE, "results", "data"))
    args = ap.parse_args()

    _, folder = generate(args.root, args.n, args.d)
    from lakecurate.config import LakeConfig
    from lakecurate.lake import Lake
    from lakecurate.spark.blocks import EmbeddingBlocks
    from lakecurate.spark.session import get_spark

    figures: dict[str, list[float]] = {"pyarrow": [], "files": [], "spark": []}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        x = pyarrow_matrix(folder, args.d)
        figures["pyarrow"].append(time.perf_counter() - t0)
        assert x.shape == (args.n, args.d)
        del x

    spark = get_spark(conf={"spark.driver.memory": "8g", "spark.ui.enabled": "false"})
    lake = Lake(spark, LakeConfig(root=os.path.join(HERE, "results", "reads-lake")))
    files, why = lake.input_files("parquet", ["id", "embedding"], path=folder)
    assert files is not None, why
    for _ in range(args.repeat):
        for how in ("files", "spark"):
            t0 = time.perf_counter()
            if how == "files":
                blocks = EmbeddingBlocks.from_files(spark, files, id_column="id", embedding_column="embedding", cache=args.cache, lake=lake)
            else:
                blocks = EmbeddingBlocks.from_dataframe(spark, spark.read.parquet(folder), id_column="id", embedding_column="embedding",
                                                        cache=args.cache, lake=lake)
            figures[how].append(time.perf_counter() - t0)
            assert blocks.n == args.n
            blocks.release()
    spark.stop()

    best = {k: min(v) for k, v in figures.items()}
    size = sum(os.path.getsize(f) for f in glob.glob(os.path.join(folder, "*.parquet"))) / 1e6
    print(f"\n## Caching {args.n:,} x {args.d} ({size:,.0f} MB of Parquet, {len(files.pieces)} files) as blocks, cache={args.cache}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}\n")
    print("| read | best s | all s | x pyarrow |")
    print("|---|---:|---:|---:|")
    for k, label in (("pyarrow", "pyarrow into one float32 matrix (reference)"), ("files", "tasks read the files (from_files)"),
                     ("spark", "through Spark's reader (from_dataframe)")):
        print(f"| {label} | {best[k]:.2f} | {', '.join(f'{v:.2f}' for v in figures[k])} | {best[k] / best['pyarrow']:.2f} |")
    verdict = "met" if best["files"] <= 3 * best["pyarrow"] else "NOT met"
    print(f"\ntarget (issue 32): blocks from files in at most 3x pyarrow: {best['files'] / best['pyarrow']:.2f}x, {verdict}; "
          f"from_files is {best['spark'] / best['files']:.1f}x faster than the read through Spark")


if __name__ == "__main__":
    main()
