"""How an epoch's rows become training batches: pure numpy, shared by the streaming loader and the
map-style batch sampler (:mod:`lakecurate.torch`).

Three modes, over the cluster id of every row (its shard, or its cluster at a chosen level):

* ``same_cluster``: every batch holds rows of one cluster (Divide and Contrast's within-cluster,
  hard negatives); the batches of different clusters come in a random order;
* ``balanced``: every batch draws evenly from the clusters present: the counts of two clusters
  in a batch differ by at most one while both still have rows in the window;
* ``mixed``: a uniform shuffle (the baseline).

Everything is a pure function of (seed, epoch) and the rows' order in the table, so every rank
and every worker computes the same split without talking to the others: :func:`split_rows`
gives each of ``n_slots`` (ranks x workers) a disjoint share of the epoch's rows, together all
of them, the shares' sizes differing by at most one row.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from lakecurate.core.keys import random_keys

MODES = ("same_cluster", "balanced", "mixed")


def check_mode(mode: str, where: str = "mode") -> str:
    if mode not in MODES:
        raise ValueError(f"{where}={mode!r} is not one of {list(MODES)}")
    return mode


def epoch_generator(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """The generator of one (seed, epoch) and stream (a pass, a slot): the same on every process."""
    return np.random.default_rng([int(seed), int(epoch), *(int(s) for s in stream)])


def split_rows(sizes: Sequence[int], order: Sequence[int], n_slots: int, slot: int) -> list[tuple[int, int, int]]:
    """Slot ``slot`` of ``n_slots``'s share of units of ``sizes`` rows taken in ``order``: a list of
    ``(unit, lo, hi)`` row ranges. Of the units' rows laid end to end, slot s takes rows
    ``[s * N // n_slots, (s + 1) * N // n_slots)``: the shares are disjoint, cover every row, and
    a unit is cut at most where a share ends (it is read by at most two slots, each its part)."""
    if not 0 <= slot < n_slots:
        raise ValueError(f"slot={slot} is not in [0, n_slots={n_slots})")
    order = np.asarray(order, np.int64)
    rows = np.asarray(sizes, np.int64)[order] if order.size else np.zeros(0, np.int64)
    ends = np.cumsum(rows)
    total = int(ends[-1]) if ends.size else 0
    lo, hi = total * slot // n_slots, total * (slot + 1) // n_slots
    out = []
    for unit, end, size in zip(order, ends, rows):
        start = int(end - size)
        a, b = max(start, lo), min(int(end), hi)
        if a < b:
            out.append((int(unit), a - start, b - start))
    return out


def weighted_pass(clusters: np.ndarray, rows: np.ndarray, weights: Optional[dict], seed: int, epoch: int, pass_: int) -> np.ndarray:
    """Which rows (global row numbers ``rows``, of clusters ``clusters``) pass ``pass_`` of an epoch
    includes: with ``weights`` ({cluster: w}, default 1), a row of cluster c is seen w times per
    epoch in expectation: once in each pass below floor(w), then with probability frac(w), by a
    counter-based key of (row, seed, epoch) so every process agrees."""
    if weights is None:
        return np.ones(clusters.shape[0], bool) if pass_ == 0 else np.zeros(clusters.shape[0], bool)
    w = np.array([weights.get(int(c), 1.0) for c in clusters], np.float64) if clusters.size else np.zeros(0)
    left = w - pass_
    frac = random_keys(rows.astype(np.int64), seed, stream=1 + int(epoch)).astype(np.float64) / 2.0**64
    return (left >= 1.0) | ((left > 0.0) & (frac < left))


def passes(weights: Optional[dict]) -> int:
    """Passes over the table one epoch takes (the largest weight, rounded up; 1 without weights)."""
    if not weights:
        return 1
    return max(1, int(np.ceil(max(float(w) for w in weights.values()))))


def check_weights(weights: Optional[dict], where: str = "cluster_weights") -> Optional[dict]:
    if weights is None:
        return None
    out = {}
    for c, w in dict(weights).items():
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"{where}[{c!r}]={w!r} is not a number") from None
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"{where}[{c!r}]={w!r} must be a finite number >= 0")
        out[int(c)] = w
    return out


def _by_cluster(clusters: np.ndarray, rng: np.random.Generator):
    """``(clusters present, each row's index among them, rows grouped by cluster and in a random
    order within it, where each cluster's group starts)``."""
    uniq, inv = np.unique(clusters, return_inverse=True)
    grouped = np.lexsort((rng.random(clusters.shape[0]), inv))
    return uniq, inv, grouped, np.searchsorted(inv[grouped], np.arange(uniq.size))


def window_batches(clusters: np.ndarray, mode: str, batch_size: int, rng: np.random.Generator, *,
                   final: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, bounds, rest)`` for one window of rows with cluster ids ``clusters``: batch i is
    rows ``order[bounds[i]:bounds[i + 1]]``; ``rest`` are rows held back for the next window (the
    part-filled last batch; in ``same_cluster`` each cluster's part-filled batch). With
    ``final`` nothing is held back: the part-filled batches are emitted (shorter than
    ``batch_size``)."""
    n = int(clusters.shape[0])
    empty = np.zeros(0, np.int64)
    if n == 0:
        return empty, np.zeros(1, np.int64), empty
    b = int(batch_size)
    if mode == "mixed" or mode == "balanced":
        if mode == "mixed":
            order = rng.permutation(n)
        else:
            uniq, inv, grouped, starts = _by_cluster(clusters, rng)
            rank = np.empty(n, np.int64)
            rank[grouped] = np.arange(n) - starts[inv[grouped]]
            order = np.lexsort((rng.permutation(uniq.size)[inv], rank))  # every cluster's 1st row, then 2nd, ...
        full = n if final else (n // b) * b
        bounds = np.arange(0, full + 1, b, dtype=np.int64)
        if bounds[-1] != full:
            bounds = np.append(bounds, full)
        return order[:full].astype(np.int64), bounds, order[full:].astype(np.int64)
    if mode != "same_cluster":
        check_mode(mode)
    uniq, inv, grouped, starts = _by_cluster(clusters, rng)
    ends = np.append(starts[1:], n)
    pieces, rest = [], []
    for s, e in zip(starts, ends):
        cut = e if final else s + (e - s) // b * b
        pieces += [(a, min(a + b, cut)) for a in range(s, cut, b)]
        if cut < e:
            rest.append(grouped[cut:e])
    emit = rng.permutation(len(pieces)) if pieces else np.zeros(0, np.int64)
    order = np.concatenate([grouped[pieces[i][0]:pieces[i][1]] for i in emit]) if pieces else empty
    lengths = np.array([pieces[i][1] - pieces[i][0] for i in emit], np.int64)
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return order.astype(np.int64), bounds, (np.concatenate(rest).astype(np.int64) if rest else empty)
