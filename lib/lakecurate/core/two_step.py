"""How a two-step level splits its k among the coarse clusters.

One k-means with millions of centroids does not fit (every input would be compared with every
centroid at every iteration); the reference code splits such a level in two: a coarse k-means,
then inside each coarse cluster a k-means with a share of the level's k proportional to its size.
The fit is :func:`lakecurate.core.hierarchy.fit_two_step_level` (any level, any assigner); its
Spark passes are :mod:`lakecurate.spark.two_step`; this module holds the split.
"""

from __future__ import annotations

import numpy as np


def allocate_subclusters(sizes: np.ndarray, k_total: int) -> np.ndarray:
    """Fine clusters per coarse cluster: proportional to size, >= 1 for a non-empty one, <= its size.

    Largest-remainder rounding (ties to the lower index) so the shares add up to ``k_total``
    exactly whenever ``k_total`` <= the number of rows.
    """
    sizes = np.asarray(sizes, np.int64)
    nonempty = sizes > 0
    k_total = int(min(k_total, sizes.sum()))
    share = np.zeros(sizes.size, np.int64)
    share[nonempty] = 1
    rest = k_total - int(share.sum())
    if rest > 0:
        ideal = sizes / max(sizes.sum(), 1) * k_total
        extra = np.minimum(np.maximum(np.floor(ideal).astype(np.int64) - share, 0), sizes - share)
        share += extra
        rest = k_total - int(share.sum())
        while rest > 0:
            room = sizes - share
            frac = np.where(room > 0, ideal - share, -np.inf)
            order = np.lexsort((np.arange(sizes.size), -frac))
            take = order[: min(rest, int((room > 0).sum()))]
            share[take] += 1
            rest = k_total - int(share.sum())
    ideal = sizes / max(sizes.sum(), 1) * k_total
    while rest < 0:  # the one-each minimum of many small clusters overshot: take back from the most over-served
        if not (share > 1).any():
            raise ValueError(f"{int(nonempty.sum())} non-empty coarse clusters need at least one fine cluster each; k={k_total}")
        over = np.where(share > 1, ideal - share, np.inf)
        order = np.lexsort((np.arange(sizes.size), over))
        give = order[: min(-rest, int((share > 1).sum()))]
        share[give] -= 1
        rest = k_total - int(share.sum())
    return share
