"""Benchmark data: a long-tailed Gaussian mixture written once as .npy and Parquet, in chunks.

The generator never holds more than one chunk in memory, so the parent process of the benchmark
stays small and the driver-memory figures measure lakecurate, not the data generation. Concept
sizes follow the same Zipf law as :func:`lakecurate.core.synthetic.zipf_sizes`.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lakecurate.core.synthetic import zipf_sizes
from lakecurate.spark.arrow import matrix_to_list_array

CHUNK_ROWS = 50_000


def data_paths(root: str, n: int, d: int, seed: int) -> tuple[str, str]:
    stem = os.path.join(root, f"pool-n{n}-d{d}-s{seed}")
    return stem + ".npy", stem + ".parquet"


def concepts_path(npy: str) -> str:
    """The (n,) int32 concept of every row, beside the .npy."""
    return npy[: -len(".npy")] + ".concept.npy"


def concept_params(n: int, d: int, *, n_concepts: int = 2000, alpha: float = 1.1, seed: int = 0):
    """(sizes, centres, scales, rng) of :func:`generate`'s mixture: the same draws, so new rows of a
    concept (a coreset benchmark's target) come from the same distribution as the pool's."""
    rng = np.random.default_rng(seed)
    n_concepts = min(n_concepts, n)
    sizes = zipf_sizes(n, n_concepts, alpha)
    centres = rng.standard_normal((n_concepts, d), dtype=np.float32)
    scales = (0.35 * rng.uniform(0.6, 1.4, size=n_concepts)).astype(np.float32)
    return sizes, centres, scales, rng


def generate(root: str, n: int, d: int, *, n_concepts: int = 2000, alpha: float = 1.1, seed: int = 0) -> tuple[str, str]:
    """Write (id int64, embedding list<float>) Parquet and an (n, d) float32 .npy; reuse if present."""
    npy, parquet = data_paths(root, n, d, seed)
    if os.path.exists(npy) and os.path.exists(concepts_path(npy)) and os.path.exists(os.path.join(parquet, "_SUCCESS")):
        return npy, parquet
    os.makedirs(parquet, exist_ok=True)
    sizes, centres, scales, rng = concept_params(n, d, n_concepts=n_concepts, alpha=alpha, seed=seed)
    n_concepts = sizes.shape[0]
    p = sizes / sizes.sum()
    out = np.lib.format.open_memmap(npy + ".tmp", mode="w+", dtype=np.float32, shape=(n, d))
    labels = np.empty(n, np.int32)
    for i, start in enumerate(range(0, n, CHUNK_ROWS)):
        m = min(CHUNK_ROWS, n - start)
        concept = rng.choice(n_concepts, size=m, p=p)
        labels[start : start + m] = concept
        x = centres[concept] + scales[concept, None] * rng.standard_normal((m, d), dtype=np.float32)
        out[start : start + m] = x
        table = pa.table({"id": pa.array(np.arange(start, start + m, dtype=np.int64)), "embedding": matrix_to_list_array(x)})
        pq.write_table(table, os.path.join(parquet, f"part-{i:05d}.parquet"), row_group_size=10_000)
    out.flush()
    del out
    np.save(concepts_path(npy), labels)
    os.replace(npy + ".tmp", npy)
    open(os.path.join(parquet, "_SUCCESS"), "w").close()
    return npy, parquet


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
