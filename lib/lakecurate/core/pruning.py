"""Exact Lloyd assignment with group bounds: skip the centroids a row provably cannot reach.

After a few iterations most centroids barely move, yet a plain Lloyd pass still multiplies every
row by every centroid. Yinyang k-means (Ding et al., ICML 2015) keeps, per row, a lower bound on
its distance to each *group* of centroids; when centroids move by ``delta_j``, a group's bound
drops by its largest move, and the row's distance to its own centroid grows by at most that
centroid's move (triangle inequality). A group whose bound still clears the row's distance cannot
hold the row's nearest centroid, so it is not computed at all.

Here the bounds decide *which* centroids to compute; the answer is the one
:func:`lakecurate.core.assign.nearest_centroid` gives: the two nearest candidates by the float32
matrix product (now over the groups not ruled out), the first re-scored row by row, the second only
when the product's rounding could have ranked the two wrongly. Every margin is widened by the
product's proven rounding bound (:func:`~lakecurate.core.assign.search_error`) and the row-wise
re-score's slack, so a group is skipped only when it could not have changed the label or the
decision to re-score: labels and distances are the same as the full search's, whatever state the
bounds were in (none, stale, or from another partitioning).

The work is kept in matrix products: rows are taken by the group of their current centroid, and
each such set of rows is multiplied once by the centroids of every group any of them still needs.

Pure numpy; the per-row state (:class:`Bounds`) lives with the rows (an in-process array, or a
file beside each Spark block file) and is only ever a speed-up: a missing or mismatched state
means a full pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lakecurate.core.assign import RECOMPUTE_SLACK, Assignment, cluster_sums, rowwise_sq_dist, search_error

#: Fewest centroids for which bounds pay (below, a full search is a few milliseconds anyway).
MIN_K = 256
#: Centroids per group: ~32 keeps the per-row state at ~1/12 of a 384-d row and the products wide.
CENTROIDS_PER_GROUP = 32
MAX_GROUPS = 64
#: Most movers per pass (each is computed for every row its bounds do not rule out).
MAX_MOVERS = 64
#: A block whose bounds leave more than this share of the row x centroid products is computed in
#: full: one wide product is cheaper than many gathered narrow ones (measured: the bounded path at
#: ~75% of the products cost ~1.2x the full pass).
FULL_PASS_SHARE = 0.5
#: Rows per matrix-product chunk at most; fewer at large k, so a chunk's distance tile stays ~16 MB.
_CHUNK_ROWS = 1024
_TILE_FLOATS = 1 << 22


def _chunk_rows(k: int) -> int:
    return int(max(16, min(_CHUNK_ROWS, _TILE_FLOATS // max(k, 1))))
#: Relative safety on stored bounds (float32 storage rounds within 6e-8).
_STORE_SAFETY = 1e-6


def n_groups_for(k: int) -> int:
    """How many centroid groups a level of k centroids uses; 0 turns the bounds off."""
    if k < MIN_K:
        return 0
    return int(min(MAX_GROUPS, max(2, k // CENTROIDS_PER_GROUP)))


def centroid_fingerprint(c: np.ndarray, groups: np.ndarray) -> str:
    """Names the exact (centroids, grouping) a row's bounds were computed against."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(c, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(groups, dtype=np.int32).tobytes())
    return h.hexdigest()


def group_centroids(c: np.ndarray, t: int) -> np.ndarray:
    """(k,) int32 group of each centroid: a few Lloyd rounds over the centroids themselves, from an
    even stride (deterministic). Any grouping is correct; a tight one skips more."""
    c = np.ascontiguousarray(c, dtype=np.float32)
    k = c.shape[0]
    seeds = c[np.linspace(0, k - 1, t).astype(np.int64)].copy()
    c_sq = np.einsum("ij,ij->i", c, c)
    lab = np.zeros(k, np.int64)
    for _ in range(6):
        dist = c_sq[:, None] + np.einsum("ij,ij->i", seeds, seeds)[None, :] - 2.0 * (c @ seeds.T)
        lab = dist.argmin(1)
        for g in range(t):
            members = lab == g
            if members.any():
                seeds[g] = c[members].mean(0)
    return lab.astype(np.int32)


@dataclass(frozen=True)
class PruneStep:
    """What a pass needs besides the centroids; made once per pass on the driver (:class:`BoundsTracker`)."""

    groups: np.ndarray  # (k,) int32 group of each centroid
    fingerprint: str  # of (these centroids, groups): the bounds this pass leaves behind
    prev_fingerprint: Optional[str]  # the bounds this pass can start from (None: a full pass)
    group_drift: Optional[np.ndarray]  # (t,) float64: the largest move since then of each group's other centroids
    movers: Optional[np.ndarray]  # (m,) int64: the centroids that moved most, computed apart
    mover_moves: Optional[np.ndarray] = None  # (m,) float64: how far each mover moved

    @property
    def n_groups(self) -> int:
        return int(self.groups.max()) + 1 if self.groups.size else 0


@dataclass
class Bounds:
    """Per-row state of one block: its label and a lower bound on its (not squared) distance to
    every centroid of each group other than the label, valid for the centroids ``fingerprint``."""

    fingerprint: str
    labels: np.ndarray  # (n,) int64
    lower: np.ndarray  # (n, t) float32


class BoundsTracker:
    """Driver side: remembers the previous pass's centroids and makes each pass's :class:`PruneStep`.

    A few centroids often jump far (a re-seeded cluster, a concept changing sides) while the rest
    barely move; a group's bound would drop by its largest move. So the ``k / CENTROIDS_PER_GROUP``
    centroids that moved most are *movers*: every row computes them directly, and each group's
    bound drops only by the largest move among its other centroids.
    """

    def __init__(self):
        self._prev: Optional[tuple[np.ndarray, np.ndarray, str]] = None

    def step(self, c: np.ndarray) -> Optional[PruneStep]:
        """The step for a pass with centroids ``c``; None when bounds do not pay at this k."""
        c = np.ascontiguousarray(c, dtype=np.float32)
        k = c.shape[0]
        t = n_groups_for(k)
        if t == 0:
            self._prev = None
            return None
        drift = movers = None
        if self._prev is not None and self._prev[0].shape == c.shape:
            prev_c, groups, prev_fp = self._prev
            move = np.sqrt(np.square(c.astype(np.float64) - prev_c.astype(np.float64)).sum(1)) * (1.0 + _STORE_SAFETY)
            m = min(MAX_MOVERS, max(1, k // CENTROIDS_PER_GROUP))
            movers = np.sort(np.argsort(-move, kind="stable")[:m])
            movers = movers[move[movers] > 0]
            rest = move.copy()
            rest[movers] = 0.0
            drift = np.zeros(int(groups.max()) + 1)
            np.maximum.at(drift, groups, rest)
            moves = move[movers]
        else:
            groups = group_centroids(c, t)
            prev_fp, moves = None, None
        fp = centroid_fingerprint(c, groups)
        self._prev = (c.copy(), groups, fp)
        return PruneStep(groups, fp, prev_fp, drift, movers, moves)


@dataclass
class PruneStats:
    """How much of the full product a pass computed (for logs and the benchmark)."""

    rows: int = 0
    rows_computed: int = 0  # rows not settled by their bounds alone
    centroid_products: int = 0  # row x centroid distances computed (movers included)

    def __add__(self, o: "PruneStats") -> "PruneStats":
        return PruneStats(self.rows + o.rows, self.rows_computed + o.rows_computed, self.centroid_products + o.centroid_products)


def _product_part(xr: np.ndarray, cm2: np.ndarray, cc_sq: np.ndarray) -> np.ndarray:
    """float32 ||c||^2 - 2 x.c (``cm2`` = -2 c, exact): faiss's product distance less the row's own
    ||x||^2, which is added (in float64) only to the few values kept; within :func:`search_error`."""
    dist = xr @ cm2.T
    dist += cc_sq[None, :]
    return dist


def _top2(dist: np.ndarray):
    """(i1, v1, i2, v2) per row; dist's i1 entries are left at +inf (i2 = -1 when one column)."""
    idx = np.arange(dist.shape[0])
    i1 = dist.argmin(1)
    v1 = dist[idx, i1]
    dist[idx, i1] = np.inf
    if dist.shape[1] > 1:
        i2 = dist.argmin(1)
        v2 = dist[idx, i2]
    else:
        i2 = np.full(dist.shape[0], -1)
        v2 = np.full(dist.shape[0], np.inf, np.float32)
    return i1, v1, i2, v2


def _merge_top2(a1, av1, a2, av2, b1, bv1, b2, bv2):
    """The two smallest of two sorted pairs (labels, values)."""
    first_a = av1 <= bv1
    l1 = np.where(first_a, a1, b1)
    v1 = np.where(first_a, av1, bv1)
    # second: the loser of the firsts against the winner's own second
    c_lab = np.where(first_a, a2, b2)
    c_val = np.where(first_a, av2, bv2)
    o_lab = np.where(first_a, b1, a1)
    o_val = np.where(first_a, bv1, av1)
    take_c = c_val <= o_val
    return l1, v1, np.where(take_c, c_lab, o_lab), np.where(take_c, c_val, o_val)


@dataclass(frozen=True)
class PrunedPass:
    """One pass's centroids and every value derived from them alone, made once per task rather
    than once per block (:func:`prepare_pass`)."""

    step: PruneStep
    c: np.ndarray  # (k, d) float32
    cm2: np.ndarray  # -2 c, exact
    c_sq: np.ndarray  # (k,) float32 ||c||^2
    c_sq_max: float  # the largest ||c||^2, in float64 (for search_error)
    order: np.ndarray  # centroids group by group
    starts: np.ndarray  # (t + 1,) where each group's run starts in ``order``


def prepare_pass(c: np.ndarray, step: PruneStep) -> PrunedPass:
    """The centroid side of :func:`assign_batch_pruned` for a pass with centroids ``c``."""
    c = np.ascontiguousarray(c, dtype=np.float32)
    c_sq64 = np.einsum("ij,ij->i", c, c, dtype=np.float64)
    order = np.argsort(step.groups, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(step.groups, minlength=step.n_groups))]
    return PrunedPass(step, c, -2.0 * c, c_sq64.astype(np.float32), float(c_sq64.max()), order, starts)


def _full_candidates(x: np.ndarray, pp: PrunedPass, x_sq: np.ndarray, err: np.ndarray):
    """Every centroid for every row: (l1, v1, l2, v2, squared group lower bounds)."""
    n, k = x.shape[0], pp.c.shape[0]
    lower = np.empty((n, pp.step.n_groups))
    l1, v1, l2, v2 = (np.empty(n, np.int64), np.empty(n, np.float32), np.empty(n, np.int64), np.empty(n, np.float32))
    cc, cc_sq, order = pp.cm2[pp.order], pp.c_sq[pp.order], pp.order
    seg = pp.starts[:-1]
    ch = _chunk_rows(k)
    for s in range(0, n, ch):
        e = min(n, s + ch)
        dist = _product_part(x[s:e], cc, cc_sq)
        i1, v1[s:e], i2, v2[s:e] = _top2(dist)
        l1[s:e], l2[s:e] = order[i1], np.where(i2 >= 0, order[np.maximum(i2, 0)], -1)
        lower[s:e] = np.minimum.reduceat(dist, seg, axis=1)
    lower += (x_sq - err)[:, None]
    return l1, v1, l2, v2, lower


def assign_batch_pruned(x: np.ndarray, pp: PrunedPass, prior: Optional[Bounds]) -> tuple[Assignment, Bounds, PruneStats]:
    """:func:`lakecurate.core.assign.assign_batch` with group bounds: the same statistics, the
    block's new bounds and what was computed. ``prior`` is used only when it was left by the pass
    ``pp.step`` continues from; otherwise every centroid is computed (and the bounds built)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    step, c, cm2, c_sq, order, starts = pp.step, pp.c, pp.cm2, pp.c_sq, pp.order, pp.starts
    n, d = x.shape
    k = c.shape[0]
    groups = step.groups
    t = step.n_groups
    # ||x||^2 in float32 as faiss forms it (its rounding is within search_error; the bound itself
    # is taken on a value rounded up)
    x_sq = np.einsum("ij,ij->i", x, x).astype(np.float64)
    err = search_error(x_sq * (1.0 + 1e-4), pp.c_sq_max, d)  # bound on a product distance's error, per row

    usable = (prior is not None and step.prev_fingerprint is not None and prior.fingerprint == step.prev_fingerprint
              and prior.labels.shape[0] == n and prior.lower.shape[1] == t)
    # per active row: the first and second candidates by the product (less ||x||^2), over what was computed
    if not usable:
        a = np.zeros(n, np.int64)
        d_a = np.zeros(n, np.float32)
        active = np.arange(n)
        l1, v1, l2, v2, lower = _full_candidates(x, pp, x_sq, err)
        products = n * k
    else:
        a = np.asarray(prior.labels, dtype=np.int64)
        d_a = rowwise_sq_dist(x, c, a)
        reach = d_a.astype(np.float64) * (1.0 + RECOMPUTE_SLACK) + 4.0 * err
        old = np.asarray(prior.lower, dtype=np.float64)
        lower = np.maximum(old - step.group_drift[None, :], 0.0)
        np.square(lower, out=lower)  # squared from here to the end
        movers = step.movers
        sizes = (starts[1:] - starts[:-1]).astype(np.float64)
        # the products the groups' own bounds already call for (the movers only add to them, and a
        # batch computes at least what each of its rows needs): too many, and the pass goes full at once
        early = float(((lower * (1.0 - 2.0 * RECOMPUTE_SLACK) <= reach[:, None]) @ sizes).sum())
        go_full = early > FULL_PASS_SHARE * n * k
        if go_full:
            movers = movers[:0]
        m = movers.size
        dm_row = None
        if m:
            order_m = np.argsort(groups[movers], kind="stable")
            movers, moves = movers[order_m], step.mover_moves[order_m]
            gm = groups[movers]
            # a mover can matter to a row only if its group's old bound, less its own move, comes
            # within reach; rows where none can are bounded by that (their groups' bounds drop by
            # the movers' moves too); the others compute every mover directly
            via_move = np.square(np.maximum(old[:, gm] - moves[None, :], 0.0))
            near = (via_move * (1.0 - 2.0 * RECOMPUTE_SLACK) <= reach[:, None]).any(1)
            if 2 * int(near.sum()) > n:
                near[:] = True  # most rows: all of them, in row order (no gather; the exact distances only tighten)
            far = np.flatnonzero(~near)
            mseg = np.flatnonzero(np.r_[True, gm[1:] != gm[:-1]])
            ug = gm[mseg]
            if far.size:
                lower[far[:, None], ug[None, :]] = np.minimum(lower[far[:, None], ug[None, :]], np.minimum.reduceat(via_move[far], mseg, axis=1))
            rows_m = np.flatnonzero(near)
            products = rows_m.size * m
            dm = np.empty((rows_m.size, m), np.float32)
            dm_row = np.full(n, -1, np.int64)
            dm_row[rows_m] = np.arange(rows_m.size)
            if rows_m.size:
                cm, cm_sq = cm2[movers], c_sq[movers]
                step_rows = 4 * _chunk_rows(m)
                for s in range(0, rows_m.size, step_rows):
                    r = rows_m[s : s + step_rows]
                    dm[s : s + r.size] = _product_part(x[s : s + r.size] if rows_m.size == n else x[r], cm, cm_sq)
                lb_m = dm.astype(np.float64)
                lb_m[movers[None, :] == a[rows_m, None]] = np.inf  # a row's own centroid is not in its bounds
                lb_m = np.minimum.reduceat(lb_m, mseg, axis=1) + (x_sq[rows_m] - err[rows_m])[:, None]
                lower[rows_m[:, None], ug[None, :]] = np.minimum(lower[rows_m[:, None], ug[None, :]], lb_m)
        else:
            products = 0
        batches = []
        if not go_full:
            # a group can matter only if one of its centroids could come within the re-score window of
            # the row's own: true d_j^2 (1 - 2 slack) <= d_a^2 (1 + slack) + 4 err (see nearest_centroid)
            need = lower * (1.0 - 2.0 * RECOMPUTE_SLACK) <= reach[:, None]
            active = np.flatnonzero(need.any(1))
            n_act = active.size
            l1, v1 = np.empty(n_act, np.int64), np.empty(n_act, np.float32)
            l2, v2 = np.empty(n_act, np.int64), np.empty(n_act, np.float32)
            home = groups[a[active]]
            need_act = need[active]
            need_act[np.arange(n_act), home] = True  # the own group always: the row's centroid competes by the product too
            only_home = need_act.sum(1) == 1
            # batches: rows by own group, those needing only it apart from those needing more
            key = home.astype(np.int64) * 2 + (~only_home)
            by = np.argsort(key, kind="stable")
            ks = key[by]
            b_starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]]) if n_act else np.zeros(0, np.int64)
            xs_act = x_sq[active] - err[active]
            for bs, be in zip(b_starts, np.r_[b_starts[1:], n_act]):
                pos = by[bs:be]
                gsel = np.flatnonzero(need_act[pos].any(0))
                batches.append((pos, gsel, int(pos.size * (starts[gsel + 1] - starts[gsel]).sum())))
            go_full = sum(bt[2] for bt in batches) > FULL_PASS_SHARE * n * k
        if go_full:
            # the bounds rule out too little: one full product is cheaper (and rebuilds them); the
            # rows' own distances d_a are kept, so only rows whose label changes are re-scored
            active = np.arange(n)
            l1, v1, l2, v2, lower = _full_candidates(x, pp, x_sq, err)
            products += n * k
            batches = []
        for pos, gsel, _ in batches:
            cols = np.concatenate([order[starts[g] : starts[g + 1]] for g in gsel])
            seg = np.r_[0, np.cumsum(starts[gsel + 1] - starts[gsel])][:-1]
            cc, cc_sq = cm2[cols], c_sq[cols]
            # movers outside the computed groups stay candidates through their own products (rows
            # that did not compute them are bounded away from them)
            mv = np.flatnonzero(~np.isin(gm, gsel)) if m else np.zeros(0, np.int64)
            products += pos.size * cols.size
            ch = _chunk_rows(cols.size)
            for s in range(0, pos.size, ch):
                p = pos[s : s + ch]
                r = active[p]
                dist = _product_part(x[r], cc, cc_sq)
                i1, w1, i2, w2 = _top2(dist)
                lower[r[:, None], gsel[None, :]] = np.minimum.reduceat(dist, seg, axis=1) + xs_act[p, None]
                j1, j2 = cols[i1], np.where(i2 >= 0, cols[np.maximum(i2, 0)], -1)
                if mv.size:
                    dr = dm_row[r]
                    with_m = dr >= 0
                    if with_m.any():
                        sub = np.full((r.size, mv.size), np.inf, np.float32)
                        sub[with_m] = dm[dr[with_m]][:, mv]
                        q1, u1, q2, u2 = _top2(sub)
                        q1, q2 = movers[mv][q1], np.where(q2 >= 0, movers[mv][np.maximum(q2, 0)], -1)
                        q1 = np.where(np.isfinite(u1), q1, -1)
                        q2 = np.where(np.isfinite(u2), q2, -1)
                        j1, w1, j2, w2 = _merge_top2(j1, w1, j2, w2, q1, u1, q2, u2)
                v1[p], l1[p], v2[p], l2[p] = w1, j1, w2, j2
        lower = np.maximum(lower, 0.0)

    # the label: nearest_centroid's rule on the computed candidates
    labels = a.copy()
    dist_out = d_a.copy()
    n_act = active.size
    if n_act:
        same = l1 == a[active] if usable else np.zeros(n_act, bool)
        best = np.where(same, d_a[active], 0.0).astype(np.float32)
        if (~same).any():
            best[~same] = rowwise_sq_dist(x[active[~same]], c, l1[~same])  # only the rows re-scored are gathered
        xs = x_sq[active]
        w1, w2 = v1.astype(np.float64) + xs, v2.astype(np.float64) + xs
        close = np.flatnonzero((l2 >= 0) & (w2 - w1 <= 2.0 * err[active] + 2.0 * RECOMPUTE_SLACK * np.abs(w2)))
        lab_a = l1.copy()
        if close.size:
            alt_lab = l2[close]
            alt = rowwise_sq_dist(x[active[close]], c, alt_lab)
            b = best[close]
            swap = (alt < b) | ((alt == b) & (alt_lab < l1[close]))
            sw = close[swap]
            if sw.size:
                r_sw = active[sw]
                # the row now sits with its second candidate: its group's minimum counted that one
                # (so say nothing of that group), and the first candidate joins its group's bound
                first_lb = best[sw].astype(np.float64) * (1.0 - RECOMPUTE_SLACK)
                g1 = groups[l1[sw]]
                lower[r_sw, g1] = np.minimum(lower[r_sw, g1], first_lb)
                lower[r_sw, groups[alt_lab[swap]]] = 0.0
                lab_a[sw] = alt_lab[swap]
                best[sw] = alt[swap]
        labels[active] = lab_a
        dist_out[active] = best

    counts, sums = cluster_sums(x, labels, k)
    per_cluster = np.bincount(labels, weights=dist_out.astype(np.float64), minlength=k)
    stored = (np.sqrt(np.maximum(lower, 0.0)) * (1.0 - _STORE_SAFETY)).astype(np.float32)
    stats = PruneStats(n, int(n_act), int(products))
    return Assignment(counts, sums, float(per_cluster.sum()), per_cluster), Bounds(step.fingerprint, labels, stored), stats
