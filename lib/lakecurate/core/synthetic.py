"""Generated long-tailed pools with known concepts, for the demo, the tests and the benchmarks.

Concept sizes follow a Zipf law (size of the i-th concept proportional to i^-alpha), as in web
pools where a few concepts fill most of the data. Concepts are grouped under super-concepts so
the pool has a hierarchy for the upper levels to find.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pool:
    x: np.ndarray  # (n, d) float32
    concept: np.ndarray  # (n,) int64 concept of each row, 0 = the largest
    concept_sizes: np.ndarray  # (n_concepts,)


def zipf_sizes(n: int, n_concepts: int, alpha: float) -> np.ndarray:
    """Integer sizes summing to n, proportional to rank^-alpha, each at least 1."""
    weights = np.arange(1, n_concepts + 1, dtype=np.float64) ** -alpha
    sizes = np.maximum(1, np.floor(weights / weights.sum() * (n - n_concepts)).astype(np.int64) + 1)
    sizes[0] += n - sizes.sum()  # rounding slack goes to the head
    return sizes


def long_tailed_pool(
    n: int,
    dim: int,
    n_concepts: int,
    *,
    alpha: float = 1.2,
    spread: float = 0.35,
    seed: int = 0,
) -> Pool:
    """A pool of ``n`` points in ``dim`` dimensions over ``n_concepts`` Zipf-sized concepts."""
    rng = np.random.default_rng(seed)
    sizes = zipf_sizes(n, n_concepts, alpha)
    n_super = max(1, n_concepts // 10)
    super_centres = rng.normal(size=(n_super, dim))
    centres = super_centres[rng.integers(n_super, size=n_concepts)] + 0.6 * rng.normal(size=(n_concepts, dim))
    scales = spread * rng.uniform(0.6, 1.4, size=n_concepts)
    concept = np.repeat(np.arange(n_concepts), sizes)
    x = centres[concept] + scales[concept, None] * rng.normal(size=(n, dim))
    order = rng.permutation(n)  # rows in random order, as in a real pool
    return Pool(x=x[order].astype(np.float32), concept=concept[order].astype(np.int64), concept_sizes=sizes)
