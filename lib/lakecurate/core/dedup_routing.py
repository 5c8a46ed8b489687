"""Which de-duplication task compares which rows: the routing arithmetic of the dedup stage.

One task per coarse cluster compares its members pairwise (:func:`lakecurate.core.dedup.dedup_cluster`).
A coarse cluster with more than ``max_cluster_rows`` rows (a million copies of one meme land in
one cluster whatever k) is split into q chunks by a hash of the row key: task (a, a) resolves
chunk a and task (a, b), a < b, compares chunk a (as probes) with chunk b, so a task holds at
most two chunks. With the neighbour option a row is also routed, as a probe, to the task(s) of
each of its nearest other clusters. Pure numpy: the Spark stage calls it on every block.
"""

from __future__ import annotations

import numpy as np

from lakecurate.core.keys import random_keys

#: roles of a routed row in its task
ROLE_MEMBER = 0  # a member whose local group this task resolves (its own cluster's diagonal task)
ROLE_PAIR_MEMBER = 1  # a member compared with another chunk of its cluster; resolved elsewhere
ROLE_PROBE = 2  # a row of another cluster (or chunk) compared with the members only
#: seeds the chunk a row of a huge cluster goes to (any fixed value: chunks only bound memory)
_CHUNK_SALT = 0x5EDDED


def chunks_per_cluster(sizes: np.ndarray, max_cluster_rows: int) -> np.ndarray:
    """q chunks per coarse cluster: 1 up to ``max_cluster_rows`` rows, else enough to fit them."""
    return np.maximum(1, np.ceil(np.asarray(sizes, np.float64) / max_cluster_rows)).astype(np.int64)


def n_tasks(sizes: np.ndarray, q: np.ndarray) -> int:
    """Tasks the routing creates: one per non-empty cluster, q (q + 1) / 2 for a chunked one."""
    sizes = np.asarray(sizes)
    return int((sizes > 0).sum() + (q * (q + 1) // 2 - 1)[q > 1].sum())


def chunk_of(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The chunk of each row in its cluster (0 when q = 1): a hash of the row key, not its position."""
    h = random_keys(rows, _CHUNK_SALT)
    return (h % np.maximum(q, 1).astype(np.uint64)).astype(np.int64)


def route_rows(rows: np.ndarray, lab: np.ndarray, nbr: np.ndarray, q: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """(positions, task cluster, task, role) for every copy of a row that some task needs.

    ``rows``: row keys; ``lab``: each row's coarse cluster; ``nbr``: (m, r) its nearest other
    clusters; ``q``: chunks per cluster. Task ids within a cluster are ``a * q + b``. Own cluster:
    chunk a of q goes to task (a, a) as a member, to (a, b > a) as probes and to (b < a, a) as pair
    members. Each neighbour cluster n: probe of its only task, or of every diagonal task (a, a) of
    its chunks.
    """
    out = []
    m = rows.size
    pos = np.arange(m)
    qa = q[lab]
    ca = chunk_of(rows, qa)
    out.append((pos, lab, ca * qa + ca, np.full(m, ROLE_MEMBER)))
    for b in range(int(qa.max()) if m else 0):
        sel = (b < qa) & (b != ca)
        if not sel.any():
            continue
        p, a, qq = pos[sel], ca[sel], qa[sel]
        up = b > a  # this row is side a of task (a, b)
        if up.any():
            out.append((p[up], lab[p[up]], a[up] * qq[up] + b, np.full(int(up.sum()), ROLE_PROBE)))
        down = b < a  # side b of task (b, a)
        if down.any():
            out.append((p[down], lab[p[down]], b * qq[down] + a[down], np.full(int(down.sum()), ROLE_PAIR_MEMBER)))
    for t in range(nbr.shape[1]):
        nc = nbr[:, t]
        qn = q[nc]
        for a in range(int(qn.max()) if m else 0):
            sel = a < qn
            if sel.any():
                out.append((pos[sel], nc[sel], a * qn[sel] + a, np.full(int(sel.sum()), ROLE_PROBE)))
    return out
