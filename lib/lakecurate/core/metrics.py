"""Balance figures: how evenly a subset covers the concepts (known labels) or the clusters of its tree."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def balance_figures(labels: np.ndarray, n_concepts: int | None = None) -> dict:
    """Entropy, head share and coverage of the label distribution of a subset.

    * ``entropy_bits``: Shannon entropy of the concept distribution (higher = more balanced);
    * ``effective_concepts``: 2**entropy, the number of equally-sized concepts with that entropy;
    * ``largest_share``: fraction of the subset taken by its most frequent concept;
    * ``concepts_covered``: concepts with at least one row;
    * ``kl_to_uniform_bits``: KL divergence from uniform over ``n_concepts`` (0 = perfectly even).
    """
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return balance_from_counts(counts, n_concepts)


def balance_from_counts(counts: np.ndarray, n_concepts: int | None = None) -> dict:
    """:func:`balance_figures` from per-concept counts (zeros allowed), e.g. a Spark GROUP BY."""
    counts = np.asarray(counts, dtype=np.int64)
    counts = counts[counts > 0]
    n = int(counts.sum())
    k = int(n_concepts if n_concepts is not None else counts.size)
    if n == 0:
        return {"n": 0, "concepts_covered": 0, "entropy_bits": 0.0, "effective_concepts": 0.0,
                "largest_share": 0.0, "kl_to_uniform_bits": float("inf")}
    p = counts / n
    entropy = float(-(p * np.log2(p)).sum())
    return {
        "n": n,
        "concepts_covered": int(counts.size),
        "entropy_bits": round(entropy, 4),
        "effective_concepts": round(2.0**entropy, 2),
        "largest_share": round(float(p.max()), 4),
        "kl_to_uniform_bits": round(float(np.log2(k) - entropy), 4),
    }


def centroid_spread(centroid_concepts: np.ndarray, n_concepts: int) -> float:
    """KL (bits) from uniform of the concepts that centroids land on: lower = spread more evenly."""
    counts = np.bincount(np.asarray(centroid_concepts, dtype=np.int64), minlength=n_concepts).astype(np.float64)
    p = counts / counts.sum()
    nz = p > 0
    return float(np.log2(n_concepts) + (p[nz] * np.log2(p[nz])).sum())


def lorenz(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of rows over groups: x = share of groups (smallest first), y = share of rows they hold.

    Both start at 0 and end at 1; the diagonal is a perfectly even subset. Groups with no row count
    (a cluster the subset missed is part of the unevenness).
    """
    counts = np.sort(np.asarray(counts, dtype=np.float64))
    total = counts.sum()
    x = np.linspace(0.0, 1.0, counts.size + 1)
    y = np.concatenate([[0.0], np.cumsum(counts) / total]) if total > 0 else x.copy()
    return x, y


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of rows over groups (0 = every group the same size, towards 1 = one group has all)."""
    x, y = lorenz(counts)
    if x.size < 2:
        return 0.0
    return float(1.0 - np.sum((y[1:] + y[:-1]) * np.diff(x)))


def size_summary(sizes: np.ndarray) -> dict:
    """Largest, median and smallest of a level's cluster sizes, and the imbalance max / mean."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size == 0:
        return {"k": 0, "largest": 0, "median": 0.0, "smallest": 0, "empty": 0, "imbalance": 0.0, "gini": 0.0}
    mean = float(sizes.mean())
    return {"k": int(sizes.size), "largest": int(sizes.max()), "median": float(np.median(sizes)),
            "smallest": int(sizes.min()), "empty": int((sizes == 0).sum()),
            "imbalance": round(float(sizes.max()) / mean, 3) if mean > 0 else 0.0, "gini": round(gini(sizes), 4)}


def covered(counts: np.ndarray, thresholds: Sequence[int]) -> dict[int, int]:
    """How many groups hold at least each threshold of rows."""
    counts = np.asarray(counts)
    return {int(t): int((counts >= t).sum()) for t in thresholds}


def expected_group_counts(per_cluster: np.ndarray, cluster: np.ndarray, group: np.ndarray, count: np.ndarray,
                          n_groups: int) -> np.ndarray:
    """Expected rows per group (concept) of a subset that takes ``per_cluster[c]`` rows of level-1 cluster c.

    The pool is given sparse: ``count[i]`` rows of cluster ``cluster[i]`` are in group ``group[i]``.
    A cluster's rows are taken uniformly, so each group gets its share of the cluster's quota.
    """
    cluster = np.asarray(cluster, dtype=np.int64)
    count = np.asarray(count, dtype=np.float64)
    sizes = np.bincount(cluster, weights=count, minlength=len(per_cluster))
    rate = np.divide(np.asarray(per_cluster, dtype=np.float64), sizes, out=np.zeros(sizes.size), where=sizes > 0)
    return np.bincount(np.asarray(group, dtype=np.int64), weights=count * rate[cluster], minlength=n_groups)


def guidance_targets(target: int, smallest: int = 2000) -> list[int]:
    """Subset sizes from the configured target down to a few thousand (a tenth of a smaller
    target): the target, then the 5-2-1 steps of each decade below it, largest first."""
    target = int(target)
    floor = min(smallest, max(target // 10, 1))
    sizes = {target}
    decade = 10 ** int(np.floor(np.log10(max(target, 1))))
    while decade >= 1:
        for m in (5, 2, 1):
            if floor <= m * decade < target:
                sizes.add(m * decade)
        decade //= 10
    return sorted(sizes, reverse=True)
