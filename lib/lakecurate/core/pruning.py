"""Exact Lloyd assignment with group bounds: skip the centroids a row provably cannot reach.

After a few iterations most centroids barely move, yet a plain Lloyd pass still multiplies every
row by every centroid. Yinyang k-means (Ding et al., ICML 2015) keeps, per row, a lower bound on
its distance to each *group* of centroids; when centroids move by ``delta_j``, a group's bound
drops by its largest move, and the row's distance to its own centroid grows by at most that
centroid's move (triangle inequality). A group whose bound still clears the row's distance cannot
hold the row's nearest centroid, so it is not computed at all.

Here the bounds decide *which* centroids to compute; the answer is the one
:func:`lakecurate.core.assign.nearest_centroid` gives: the two nearest candidates by the float32
matrix product (now over the groups not ruled out), the first re-scored row by row, and where the
product's rounding could have ranked the two wrongly, every centroid within that rounding window
re-scored (:func:`~lakecurate.core.assign.in_window`), from the same product tile. Every margin is widened by the
product's proven rounding bound (:func:`~lakecurate.core.assign.search_error`) and the row-wise
re-score's slack, so a group is skipped only when it could not have changed the label or the
decision to re-score: labels and distances are the same as the full search's, whatever state the
bounds were in (none, stale, or from another partitioning).

The work is kept in matrix products: rows are taken by the group of their current centroid, and
each such set of rows is multiplied once by the centroids of every group any of them still needs
(and by the movers, when they may matter to it). Groups are kept even in size
(:func:`group_centroids`), since a needed group is computed whole.

Pure numpy; the per-row state (:class:`Bounds`) lives with the rows (an in-process array, or a
file beside each Spark block file) and is only ever a speed-up: a missing or mismatched state
means a full pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lakecurate.core.assign import (
    RECOMPUTE_SLACK,
    Assignment,
    close_pair,
    cluster_sums,
    in_window,
    rescore_candidates,
    rowwise_sq_dist,
    search_error,
    tile_rows,
)

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
    """(k,) int32 group of each centroid: the largest group is split in two, by a few 2-means
    rounds seeded at its two far ends, until there are ``t`` (deterministic). Any grouping is
    correct; a tight one skips more, and an even one keeps each needed group's product small.

    Even sizes matter more than natural clusters: a long-tailed pool's head concepts hold hundreds
    of centroids close together, and a Lloyd grouping of the centroids puts them all in one group
    (measured on the benchmark pool, k = 1000, t = 31: a 767-centroid group), which every row of
    those concepts must then compute whole.
    """
    c = np.ascontiguousarray(c, dtype=np.float64)
    k = c.shape[0]
    lab = np.zeros(k, np.int32)
    sizes = [k]
    for g_new in range(1, min(t, k)):
        big = int(np.argmax(sizes))
        mem = np.flatnonzero(lab == big)
        if mem.size < 2:
            break
        cm = c[mem]
        cm_sq = np.einsum("ij,ij->i", cm, cm)
        far = lambda p: int(np.argmax(cm_sq - 2.0 * (cm @ p)))  # noqa: E731  (the member farthest from p)
        a = cm[far(cm.mean(0))]
        b = cm[far(a)]
        to_b = np.zeros(mem.size, bool)
        for _ in range(6):
            seeds = np.stack([a, b])
            new = (cm @ seeds.T * -2.0 + np.einsum("ij,ij->i", seeds, seeds)[None, :]).argmin(1) == 1
            if new.all() or not new.any():
                break
            to_b = new
            a, b = cm[~to_b].mean(0), cm[to_b].mean(0)
        if not to_b.any():  # every member in one place: split by position
            to_b[mem.size // 2 :] = True
        lab[mem[to_b]] = g_new
        sizes[big] = int((~to_b).sum())
        sizes.append(int(to_b.sum()))
    return lab


def rehome_movers(c: np.ndarray, groups: np.ndarray, movers: np.ndarray) -> np.ndarray:
    """The groups with each mover moved to the group whose other (non-mover) members' mean is
    nearest to where it is now; a group keeps at least its non-mover members.

    A mover's bound reaches its new group through its old group's bound less its move (as for any
    mover), and its old group is only smaller, so every bound stays valid. It matters because
    Lloyd re-seeds an empty cluster by splitting a populous one: the re-seeded centroid lands
    beside another group's centroid, and left in its old group it would make every row of that
    populous cluster compute a second group (measured: twice the products from pass 4 on).
    """
    groups = groups.copy()
    t = int(groups.max()) + 1
    rest = np.ones(groups.size, bool)
    rest[movers] = False
    members = np.bincount(groups[rest], minlength=t)
    means = np.zeros((t, c.shape[1]))
    np.add.at(means, groups[rest], c[rest].astype(np.float64))
    live = members > 0
    means[live] /= members[live, None]
    cm = c[movers].astype(np.float64)
    dist = np.einsum("ij,ij->i", means, means)[None, :] - 2.0 * (cm @ means.T)
    dist[:, ~live] = np.inf
    stays = ~live[groups[movers]]  # a group of movers only: its movers stay (it never empties)
    groups[movers] = np.where(stays, groups[movers], dist.argmin(1))
    return groups


@dataclass(frozen=True)
class PruneStep:
    """What a pass needs besides the centroids; made once per pass on the driver (:class:`BoundsTracker`)."""

    groups: np.ndarray  # (k,) int32 group of each centroid
    fingerprint: str  # of (these centroids, groups): the bounds this pass leaves behind
    prev_fingerprint: Optional[str]  # the bounds this pass can start from (None: a full pass)
    group_drift: Optional[np.ndarray]  # (t,) float64: the largest move since then of each group's other centroids
    movers: Optional[np.ndarray]  # (m,) int64: the centroids that moved most, computed directly
    mover_moves: Optional[np.ndarray] = None  # (m,) float64: how far each mover moved
    prev_groups: Optional[np.ndarray] = None  # (k,) the groups the bounds this pass starts from were kept in

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
    centroids that moved most are *movers*: every row near one computes them all directly (as extra
    columns of its batch's product), each group's bound drops only by the largest move among its
    other centroids, and each mover joins the group it now sits in (:func:`rehome_movers`).
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
            prev_groups = groups
            groups = rehome_movers(c, groups, movers) if movers.size else groups
        else:
            groups = group_centroids(c, t)
            prev_fp, moves, prev_groups = None, None, None
        fp = centroid_fingerprint(c, groups)
        self._prev = (c.copy(), groups, fp)
        return PruneStep(groups, fp, prev_fp, drift, movers, moves, prev_groups)


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


def _window_pairs(dist, pos, i1, v1, v2, x_sq, err, cols):
    """(positions, labels): for the rows of a product tile whose two best are within rounding
    (:func:`~lakecurate.core.assign.close_pair`), every column in their rounding window, from the
    tile :func:`_top2` left (its best at +inf, put back here)."""
    w1, w2 = v1.astype(np.float64) + x_sq, v2.astype(np.float64) + x_sq
    cl = np.flatnonzero(np.isfinite(w2) & close_pair(w1, w2, err))
    if not cl.size:
        return pos[:0], cols[:0]
    p = dist[cl].astype(np.float64) + x_sq[cl, None]
    p[np.arange(cl.size), i1[cl]] = w1[cl]
    r, j = np.nonzero(in_window(p, err[cl]))
    return pos[cl][r], cols[j]


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
    cm2_t: np.ndarray  # (d, k) -2 c in ``order``, contiguous: a full pass's product (~3% faster than a transposed view)


def prepare_pass(c: np.ndarray, step: PruneStep) -> PrunedPass:
    """The centroid side of :func:`assign_batch_pruned` for a pass with centroids ``c``."""
    c = np.ascontiguousarray(c, dtype=np.float32)
    c_sq64 = np.einsum("ij,ij->i", c, c, dtype=np.float64)
    order = np.argsort(step.groups, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(step.groups, minlength=step.n_groups))]
    cm2 = -2.0 * c
    return PrunedPass(step, c, cm2, c_sq64.astype(np.float32), float(c_sq64.max()), order, starts, np.ascontiguousarray(cm2[order].T))


def _full_candidates(x: np.ndarray, pp: PrunedPass, x_sq: np.ndarray, err: np.ndarray):
    """Every centroid for every row: (l1, v1, l2, v2, squared group lower bounds, the window pairs
    of :func:`_window_pairs` as a list of (positions, labels))."""
    n, k = x.shape[0], pp.c.shape[0]
    lower = np.empty((n, pp.step.n_groups))
    l1, v1, l2, v2 = (np.empty(n, np.int64), np.empty(n, np.float32), np.empty(n, np.int64), np.empty(n, np.float32))
    cc_sq, order = pp.c_sq[pp.order], pp.order
    seg = pp.starts[:-1]
    pairs = []
    ch = tile_rows(k)
    for s in range(0, n, ch):
        e = min(n, s + ch)
        dist = x[s:e] @ pp.cm2_t  # as _product_part
        dist += cc_sq[None, :]
        i1, v1[s:e], i2, v2[s:e] = _top2(dist)
        pairs.append(_window_pairs(dist, np.arange(s, e), i1, v1[s:e], v2[s:e], x_sq[s:e], err[s:e], order))
        l1[s:e], l2[s:e] = order[i1], np.where(i2 >= 0, order[np.maximum(i2, 0)], -1)
        lower[s:e] = np.minimum.reduceat(dist, seg, axis=1)
    lower += (x_sq - err)[:, None]
    return l1, v1, l2, v2, lower, pairs


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
        l1, v1, l2, v2, lower, pairs = _full_candidates(x, pp, x_sq, err)
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
        near = np.zeros(n, bool)  # rows that compute every mover directly
        if m:
            order_m = np.argsort(groups[movers], kind="stable")
            movers, moves = movers[order_m], step.mover_moves[order_m]
            gm = groups[movers]  # where each mover is now (rehome_movers)
            mseg = np.flatnonzero(np.r_[True, gm[1:] != gm[:-1]])
            ug = gm[mseg]
            # a mover can matter to a row only if its old group's bound, less its own move, comes
            # within reach; rows where none can are bounded by that (the bound of the mover's new
            # group drops to it); the others compute every mover, as extra columns of their batch
            via_move = np.square(np.maximum(old[:, step.prev_groups[movers]] - moves[None, :], 0.0))
            near = (via_move * (1.0 - 2.0 * RECOMPUTE_SLACK) <= reach[:, None]).any(1)
            if 2 * int(near.sum()) > n:
                near[:] = True  # most rows: all of them (the exact distances only tighten)
            far = np.flatnonzero(~near)
            if far.size:
                lower[far[:, None], ug[None, :]] = np.minimum(lower[far[:, None], ug[None, :]], np.minimum.reduceat(via_move[far], mseg, axis=1))
        products = 0
        batches, pairs = [], []
        if not go_full:
            # a group can matter only if one of its centroids could come within the re-score window of
            # the row's own: true d_j^2 (1 - 2 slack) <= d_a^2 (1 + slack) + 4 err (see nearest_centroid);
            # for a near row the bound covers the group's other centroids only, its movers are computed
            need = lower * (1.0 - 2.0 * RECOMPUTE_SLACK) <= reach[:, None]
            has_need = need.any(1)
            active = np.flatnonzero(has_need | near)
            n_act = active.size
            l1, v1 = np.empty(n_act, np.int64), np.empty(n_act, np.float32)
            l2, v2 = np.empty(n_act, np.int64), np.empty(n_act, np.float32)
            home = groups[a[active]]
            need_act = need[active]
            # the own group always: the row's centroid competes with the others by the product
            need_act[np.arange(n_act), home] = True
            # batches: rows by own group, those needing only it apart from those needing more, and
            # the rows that compute the movers apart from those that do not
            key = home.astype(np.int64) * 4 + 2 * near[active] + (need_act.sum(1) > 1)
            by = np.argsort(key, kind="stable")
            ks = key[by]
            b_starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]]) if n_act else np.zeros(0, np.int64)
            xs_act = x_sq[active] - err[active]
            for bs, be in zip(b_starts, np.r_[b_starts[1:], n_act]):
                pos = by[bs:be]
                gsel = np.flatnonzero(need_act[pos].any(0))
                mv = np.flatnonzero(~np.isin(gm, gsel)) if m and near[active[pos[0]]] else np.zeros(0, np.int64)
                batches.append((pos, gsel, mv, int(pos.size * ((starts[gsel + 1] - starts[gsel]).sum() + mv.size))))
            go_full = sum(bt[3] for bt in batches) > FULL_PASS_SHARE * n * k
        if go_full:
            # the bounds rule out too little: one full product is cheaper (and rebuilds them); the
            # rows' own distances d_a are kept, so only rows whose label changes are re-scored
            active = np.arange(n)
            l1, v1, l2, v2, lower, pairs = _full_candidates(x, pp, x_sq, err)
            products = n * k
            batches = []
        for pos, gsel, mv, _ in batches:
            # columns: the needed groups' centroids group by group, then the movers outside them
            # (sorted by group), whose exact distances also tighten their groups' bounds
            cols = np.concatenate([order[starts[g] : starts[g + 1]] for g in gsel] + [movers[mv]])
            n_g = cols.size - mv.size
            seg = np.r_[0, np.cumsum(starts[gsel + 1] - starts[gsel])][:-1]
            if mv.size:
                gmv = gm[mv]
                mvseg = np.flatnonzero(np.r_[True, gmv[1:] != gmv[:-1]])
                umv = gmv[mvseg]
            cc, cc_sq = cm2[cols], c_sq[cols]
            products += pos.size * cols.size
            ch = tile_rows(cols.size)
            for s in range(0, pos.size, ch):
                p = pos[s : s + ch]
                r = active[p]
                dist = _product_part(x[r], cc, cc_sq)
                if gsel.size:
                    lower[r[:, None], gsel[None, :]] = np.minimum.reduceat(dist[:, :n_g], seg, axis=1) + xs_act[p, None]
                if mv.size:
                    dm = dist[:, n_g:].astype(np.float64)
                    dm[movers[mv][None, :] == a[r, None]] = np.inf  # a row's own centroid is not in its bounds
                    lb_m = np.minimum.reduceat(dm, mvseg, axis=1) + xs_act[p, None]
                    lower[r[:, None], umv[None, :]] = np.minimum(lower[r[:, None], umv[None, :]], lb_m)
                i1, v1[p], i2, v2[p] = _top2(dist)
                l1[p], l2[p] = cols[i1], np.where(i2 >= 0, cols[np.maximum(i2, 0)], -1)
                pairs.append(_window_pairs(dist, p, i1, v1[p], v2[p], x_sq[r], err[r], cols))
        lower = np.maximum(lower, 0.0)

    # the label: nearest_centroid's rule on the computed candidates (every centroid that could win is among them)
    labels = a.copy()
    dist_out = d_a.copy()
    n_act = active.size
    if n_act:
        same = l1 == a[active] if usable else np.zeros(n_act, bool)
        best = np.where(same, d_a[active], 0.0).astype(np.float32)
        rescore = np.flatnonzero(~same)
        if rescore.size == n:  # every row (a first pass): no gather
            best[:] = rowwise_sq_dist(x, c, l1)
        elif rescore.size:
            best[rescore] = rowwise_sq_dist(x[active[rescore]], c, l1[rescore])  # only the rows re-scored are gathered
        lab_a = l1.copy()
        pos = np.concatenate([q for q, _ in pairs]) if pairs else np.zeros(0, np.int64)
        if pos.size:  # rows whose two best are within rounding: every centroid in the window re-scored
            at, got_lab, got = rescore_candidates(x, c, active[pos], np.concatenate([j for _, j in pairs]).astype(np.int64))
            close = np.searchsorted(active, at)
            moved = got_lab != l1[close]
            sw = close[moved]
            if sw.size:
                r_sw = active[sw]
                # the row now sits with another centroid, which its group's minimum counted (so say
                # nothing of that group), and the first candidate joins its group's bound
                first_lb = best[sw].astype(np.float64) * (1.0 - RECOMPUTE_SLACK)
                g1 = groups[l1[sw]]
                lower[r_sw, g1] = np.minimum(lower[r_sw, g1], first_lb)
                lower[r_sw, groups[got_lab[moved]]] = 0.0
            lab_a[close] = got_lab
            best[close] = got
        labels[active] = lab_a
        dist_out[active] = best

    counts, sums = cluster_sums(x, labels, k)
    per_cluster = np.bincount(labels, weights=dist_out.astype(np.float64), minlength=k)
    stored = (np.sqrt(np.maximum(lower, 0.0)) * (1.0 - _STORE_SAFETY)).astype(np.float32)
    stats = PruneStats(n, int(n_act), int(products))
    return Assignment(counts, sums, float(per_cluster.sum()), per_cluster), Bounds(step.fingerprint, labels, stored), stats
