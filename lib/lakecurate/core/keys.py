"""Counter-based pseudo-random keys.

A point's random key is a pure function of (seed, row index). The driver-side pure API and the
Spark executors therefore draw exactly the same "random" choices, whatever the partitioning or
batch boundaries, which is what lets the Spark pipeline reproduce the pure API bit for bit.
"""

from __future__ import annotations

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised over uint64 (wraps modulo 2**64 by design)."""
    z = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def random_keys(rows: np.ndarray, seed: int, stream: int = 0) -> np.ndarray:
    """Uniform uint64 keys for the given row indices; sorting by them is a seeded random permutation."""
    rows = np.asarray(rows, dtype=np.int64).astype(np.uint64)
    salt = splitmix64(np.array([np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(stream * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF)]))[0]
    with np.errstate(over="ignore"):
        return splitmix64(rows ^ salt)
