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


def data_paths(root: str, n: int, d: int, seed: int, tree: tuple = ()) -> tuple[str, str]:
    stem = os.path.join(root, f"pool-n{n}-d{d}-s{seed}" + (f"-tree{'x'.join(map(str, tree))}" if tree else ""))
    return stem + ".npy", stem + ".parquet"


def concepts_path(npy: str) -> str:
    """The (n,) int32 concept of every row, beside the .npy."""
    return npy[: -len(".npy")] + ".concept.npy"


#: offset scale of each level of a concept tree (top first), per dimension: siblings at the finest
#: level sit ~0.5 * sqrt(2 d) apart, beyond a concept's own spread (0.35 * sqrt(d))
TREE_SCALES = (8.0, 4.0, 2.0, 1.0, 0.5)


def tree_centres(tree: tuple, d: int, rng) -> np.ndarray:
    """Concept centres with a hierarchy: ``tree[0]`` top groups, each with ``tree[1]`` children, ...;
    a centre is the sum of its path's offsets, shrinking level by level (:data:`TREE_SCALES`)."""
    centres = np.zeros((1, d), np.float32)
    for depth, branching in enumerate(tree):
        scale = TREE_SCALES[depth] if depth < len(TREE_SCALES) else TREE_SCALES[-1] / 2 ** (depth - len(TREE_SCALES) + 1)
        offsets = scale * rng.standard_normal((centres.shape[0] * branching, d), dtype=np.float32)
        centres = np.repeat(centres, branching, axis=0) + offsets
    return centres


def concept_params(n: int, d: int, *, n_concepts: int = 2000, alpha: float = 1.1, seed: int = 0, tree: tuple = ()):
    """(sizes, centres, scales, rng) of :func:`generate`'s mixture: the same draws, so new rows of a
    concept (a coreset benchmark's target) come from the same distribution as the pool's. With
    ``tree`` the concepts are its leaves (prod(tree) of them, Zipf sizes in a random order), their
    centres nested groups (:func:`tree_centres`); without, independent standard normal centres."""
    rng = np.random.default_rng(seed)
    if tree:
        n_concepts = int(np.prod(tree))
    n_concepts = min(n_concepts, n)
    sizes = zipf_sizes(n, n_concepts, alpha)
    if tree:
        centres = tree_centres(tree, d, rng)[:n_concepts]
        sizes = sizes[rng.permutation(n_concepts)]  # the head concepts anywhere in the tree
    else:
        centres = rng.standard_normal((n_concepts, d), dtype=np.float32)
    scales = (0.35 * rng.uniform(0.6, 1.4, size=n_concepts)).astype(np.float32)
    return sizes, centres, scales, rng


def generate(root: str, n: int, d: int, *, n_concepts: int = 2000, alpha: float = 1.1, seed: int = 0,
             tree: tuple = ()) -> tuple[str, str]:
    """Write (id int64, embedding list<float>) Parquet and an (n, d) float32 .npy; reuse if present."""
    npy, parquet = data_paths(root, n, d, seed, tree)
    if os.path.exists(npy) and os.path.exists(concepts_path(npy)) and os.path.exists(os.path.join(parquet, "_SUCCESS")):
        return npy, parquet
    os.makedirs(parquet, exist_ok=True)
    sizes, centres, scales, rng = concept_params(n, d, n_concepts=n_concepts, alpha=alpha, seed=seed, tree=tree)
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
