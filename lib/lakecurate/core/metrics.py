"""Balance figures for a subset with known labels: how evenly it covers the concepts."""

from __future__ import annotations

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
