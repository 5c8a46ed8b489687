"""Generated long-tailed pools with known concepts, for the demo, the tests and the benchmarks.

Concept sizes follow a Zipf law (size of the i-th concept proportional to i^-alpha), as in web
pools where a few concepts fill most of the data. Concepts are grouped under super-concepts so
the pool has a hierarchy for the upper levels to find.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lakecurate.errors import ConfigError


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


@dataclass
class RedundantPool:
    """A pool of near-duplicates with known ground truth: every row is a copy of one distinct item."""

    x: np.ndarray  # (n, d) float32
    item: np.ndarray  # (n,) int64 distinct item each row copies (rows of one item are duplicates)
    concept: np.ndarray  # (n,) int64 concept of the row's item
    copies: np.ndarray  # (n_items,) rows per item


def redundant_pool(
    n: int,
    dim: int,
    n_items: int,
    *,
    copies_alpha: float = 1.0,
    copy_noise: float = 0.05,
    n_concepts: int = 100,
    alpha: float = 1.2,
    spread: float = 0.35,
    seed: int = 0,
) -> RedundantPool:
    """``n`` rows copying ``n_items`` distinct items, each a power-law number of times, perturbed.

    The items are a :func:`long_tailed_pool` of ``n_items`` points (so they still have concepts);
    item i (in a random order) gets a Zipf(``copies_alpha``) share of the n rows, at least one.
    Every copy, the first included, is the item plus Gaussian noise of norm about
    ``copy_noise * |item|``, so two copies have cosine similarity about ``1 - copy_noise^2``.
    """
    if n_items > n:
        raise ConfigError(f"n_items={n_items} is more than n={n}")
    rng = np.random.default_rng([seed, 1])
    items = long_tailed_pool(n_items, dim, min(n_concepts, n_items), alpha=alpha, spread=spread, seed=seed)
    copies = zipf_sizes(n, n_items, copies_alpha)[rng.permutation(n_items)]
    item = np.repeat(np.arange(n_items), copies)
    base = items.x[item].astype(np.float64)
    scale = copy_noise * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(dim)
    x = base + scale * rng.normal(size=base.shape)
    order = rng.permutation(n)
    return RedundantPool(
        x=x[order].astype(np.float32), item=item[order].astype(np.int64),
        concept=items.concept[item[order]].astype(np.int64), copies=copies,
    )
