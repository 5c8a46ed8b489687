"""Target-aware coresets: SimCore's greedy (Kim, Bae, Yun, CVPR 2023), exactly, without the N x K matrix.

SimCore picks the rows of a large open pool that look like a small target set:

1. the target's unit rows are k-means'd into ``K`` centroids with scikit-learn's ``KMeans``, as
   the reference does, then scaled to unit length; with ``K >= |target|`` every target row is a
   centroid (:func:`target_centroids`);
2. every pool row (unit length) has a cosine similarity to every centroid (:func:`similarities`);
3. greedy rounds: each centroid keeps its ranking of the pool, most similar first, and in every
   round takes its most similar row not taken in an earlier round (two centroids may take the
   same row in one round; the round's picks are a set). The round's utility is the mean over
   centroids of the similarity of their picks;
4. the threshold starts at 0; after round ``patience`` it is that round's utility x
   ``stop_threshold``; the greedy stops at the first round whose utility is below the threshold
   (that round's picks are dropped), or when ``budget`` rows are taken: a round that would
   overshoot is cut down to exactly the budget by a seeded random choice.

This is the reference's loop (``util/sampling.py: greedy``) with its ties and random choice made
deterministic: a centroid's ranking is by similarity, then by row key (ascending), and the cut of
an overshooting round keeps the picks with the smallest counter-based random keys
(:func:`~lakecurate.core.keys.random_keys`), so the driver and the executors agree.

The greedy (:func:`greedy`) never sees the whole ranking: it asks ``fetch`` for the next
candidates of the centroids that ran out, below the last one it holds (a *cursor*). In memory
(:func:`in_memory_fetch`) that is one exact top-c per centroid; on Spark every task returns its
own top-c per centroid (:func:`top_candidates`) and :func:`merge_candidates` keeps the prefix that
is certainly complete. Either way the greedy makes the same picks as on the full ranking, while
holding O(K x candidates) rows, never O(N).

Similarities are computed in float64 from the float32 unit rows and rounded to float32
(:func:`similarities`): every product is exact in float64, so the rounded value does not depend
on how a BLAS splits the work, and a row's similarity is the same in any block of any partition.
A pass computes them for few rows: a float32 BLAS product, within a proven bound of them, rules
out the rows that cannot be among a centroid's best (:func:`top_candidates`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from lakecurate.core.keys import random_keys
from lakecurate.core.kmeans import normalize_rows

log = logging.getLogger(__name__)

#: the random stream of the budget cut (counter-based keys of the row keys)
CUT_STREAM = 7
#: rows per similarity chunk: bounds the float64 temporaries to ROWS x K x 8 bytes
SIM_CHUNK_ROWS = 8192
#: a cursor before every row
START_SIM = np.float32(np.inf)
START_KEY = np.iinfo(np.int64).min
STOP_REASONS = ("threshold", "budget", "pool")


def default_budget(n_target: int, n_pool: int) -> int:
    """The reference's budget with its stopping rule: 50 x |target|, capped by the pool."""
    return min(50 * n_target, n_pool)


def target_centroids(target: np.ndarray, n_centroids: int, *, seed: int = 0) -> np.ndarray:
    """(K, d) float32 unit centroids of the target (finite float32 rows, validated by the caller).

    SimCore's summary, as its ``simcore_sampling`` makes it: the target rows scaled to unit
    length, every one of them a centroid when ``n_centroids >= |target|``; else scikit-learn's
    ``KMeans(n_clusters=K, random_state=seed)`` fitted on them (Euclidean Lloyd iterations from
    its greedy k-means++ with 2 + ln K local trials, ``n_init=1``: scikit-learn's default since
    1.4) and the centroids scaled to unit length after the fit.

    The fit runs on one thread: scikit-learn sums the threads' partial centroids in the order
    the threads finish, so with more than one a rerun could move a centroid by an ulp and change a
    pick; on one thread a run's centroids are the same bits every time, in-process and on Spark's
    driver alike. (The project's own spherical k-means, used before, cost about 3 points of
    precision against SimCore's on a real text pool: issue 31.)
    """
    unit = normalize_rows(np.ascontiguousarray(target, dtype=np.float32))
    if n_centroids >= unit.shape[0]:
        return unit
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        fit = KMeans(n_clusters=n_centroids, init="k-means++", n_init=1, max_iter=300, tol=1e-4,
                     random_state=seed, algorithm="lloyd").fit(unit)
    return normalize_rows(np.ascontiguousarray(fit.cluster_centers_, dtype=np.float32))


def similarities(x_unit: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n, K) float32 cosine similarities of unit rows to unit centroids, the same in any blocking."""
    c64 = np.ascontiguousarray(centroids, dtype=np.float64).T
    out = np.empty((x_unit.shape[0], centroids.shape[0]), dtype=np.float32)
    for start in range(0, x_unit.shape[0], SIM_CHUNK_ROWS):
        chunk = np.asarray(x_unit[start : start + SIM_CHUNK_ROWS], dtype=np.float64)
        out[start : start + chunk.shape[0]] = chunk @ c64
    return out


# ---------------------------------------------------------------- candidates


@dataclass
class Candidates:
    """Per centroid, the best rows after its cursor, best first (rows of a padded (K, c) grid).

    ``complete[q]``: no row after the cursor is missing beyond those listed (the source ran out).
    """

    keys: np.ndarray  # (K, c) int64
    sims: np.ndarray  # (K, c) float32
    counts: np.ndarray  # (K,) int64 valid entries per centroid
    complete: np.ndarray  # (K,) bool

    @classmethod
    def empty(cls, k: int, c: int) -> "Candidates":
        return cls(np.zeros((k, c), np.int64), np.zeros((k, c), np.float32), np.zeros(k, np.int64), np.zeros(k, bool))


def _best(keys: np.ndarray, sims: np.ndarray, c: int) -> np.ndarray:
    """Positions of the ``c`` best (similarity desc, key asc) of the given rows, best first."""
    n = sims.shape[0]
    if n > c:  # cut to the c-th largest similarity, then rank the (few) survivors exactly
        thr = np.partition(sims, n - c)[n - c]
        pos = np.flatnonzero(sims >= thr)
    else:
        pos = np.arange(n)
    order = np.lexsort((keys[pos], -sims[pos].astype(np.float64)))
    return pos[order[:c]]


def f32_error_bound(d: int) -> float:
    """How far a float32 BLAS dot product of two (at most) unit d-vectors can be from the canonical
    similarity: the rounding bound d * 2**-24 of any summation order, doubled for slack, plus the
    canonical value's own float32 rounding."""
    return 2.0 * d * 2.0**-24 + 2.0**-23


def top_candidates(blocks: Iterable[tuple[np.ndarray, np.ndarray]], centroids: np.ndarray, cursor_sims: np.ndarray,
                   cursor_keys: np.ndarray, want: np.ndarray) -> Candidates:
    """For each centroid q with ``want[q] > 0``: its best ``want[q]`` rows strictly after its cursor.

    ``blocks`` yields (row keys, unit rows). A row is after the cursor (s, k) when its similarity
    is below s, or equal to s with a key above k. ``complete[q]`` is True when fewer than
    ``want[q]`` such rows exist (the list holds all of them).

    Rankings use the canonical similarities (:func:`similarities`), but only for a few rows: a
    float32 BLAS product of the block with the centroids (within :func:`f32_error_bound` of the
    canonical values) rules out every row that cannot be among the best, and the canonical
    values of the rest decide.
    """
    active = np.flatnonzero(want > 0)
    k = centroids.shape[0]
    c = int(want.max()) if want.size else 0
    run_keys: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(k)]
    run_sims: list[np.ndarray] = [np.zeros(0, np.float32) for _ in range(k)]
    if active.size:
        sub = np.ascontiguousarray(centroids[active], dtype=np.float32)
        b = np.float32(f32_error_bound(centroids.shape[1]))
        for keys, x in blocks:
            if keys.shape[0] == 0:
                continue
            approx = sub @ np.ascontiguousarray(x, dtype=np.float32).T  # (A, n): one contiguous row per centroid
            for j, q in enumerate(active):
                a = approx[j]
                w = int(want[q])
                cs = cursor_sims[q]
                cand = a <= cs + b if np.isfinite(cs) else np.ones(a.shape[0], bool)
                if run_keys[q].shape[0] >= w:  # a row must beat the worst one kept so far
                    cand &= a >= run_sims[q][w - 1] - b
                sure = np.flatnonzero(cand & (a < cs - b)) if np.isfinite(cs) else np.flatnonzero(cand)
                if sure.size >= w:  # w rows surely after the cursor: nothing far below the w-th of them counts
                    thr = np.partition(a[sure], sure.size - w)[sure.size - w]
                    cand &= a >= thr - 2 * b
                pos = np.flatnonzero(cand)
                if pos.size == 0:
                    continue
                exact = similarities(x[pos], sub[j : j + 1])[:, 0]
                after = (exact < cs) | ((exact == cs) & (keys[pos] > cursor_keys[q]))
                pos, exact = pos[after], exact[after]
                if pos.size == 0:
                    continue
                best = _best(keys[pos], exact, w)
                ks = np.concatenate([run_keys[q], keys[pos[best]]])
                ss = np.concatenate([run_sims[q], exact[best]])
                keep = _best(ks, ss, w)
                run_keys[q], run_sims[q] = ks[keep], ss[keep]
    out = Candidates.empty(k, max(c, 1))
    for q in range(k):
        n = run_keys[q].shape[0]
        out.keys[q, :n] = run_keys[q]
        out.sims[q, :n] = run_sims[q]
        out.counts[q] = n
        out.complete[q] = n < want[q]
    return out


def merge_candidates(parts: Sequence[Candidates], queried: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """The certainly-complete prefix of the union of several sources' candidates, per queried centroid.

    Every source listed its best rows after the cursor; a source that is not complete may hold
    more rows, but only rows worse than its last listed one. So the union is complete down to the
    best of the incomplete sources' last rows (that row included): the prefix kept. When every
    source is complete the whole union is kept and marked complete.
    Returns (keys, sims, complete) per entry of ``queried``, best first.
    """
    out = []
    for q in queried:
        ks = np.concatenate([p.keys[q, : p.counts[q]] for p in parts]) if parts else np.zeros(0, np.int64)
        ss = np.concatenate([p.sims[q, : p.counts[q]] for p in parts]) if parts else np.zeros(0, np.float32)
        order = np.lexsort((ks, -ss.astype(np.float64)))
        ks, ss = ks[order], ss[order]
        open_ends = [(p.sims[q, p.counts[q] - 1], p.keys[q, p.counts[q] - 1]) for p in parts if not p.complete[q] and p.counts[q] > 0]
        if not open_ends:
            out.append((ks, ss, True))
            continue
        # the best (highest similarity, then lowest key) of the incomplete sources' last rows
        bs, bk = min(open_ends, key=lambda e: (-float(e[0]), int(e[1])))
        keep = (ss > bs) | ((ss == bs) & (ks <= bk))
        out.append((ks[keep], ss[keep], False))
    return out


#: ``fetch(queried, cursor_sims, cursor_keys, want) -> [(keys, sims, complete)] per queried centroid``
Fetch = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], list]


def in_memory_fetch(keys: np.ndarray, x_unit: np.ndarray, centroids: np.ndarray, *, block_rows: int = 65_536) -> Fetch:
    """``fetch`` over an in-memory pool: one exact top-c per centroid (one source, so the prefix is all of it)."""

    def fetch(queried, cursor_sims, cursor_keys, want):
        w = np.zeros(centroids.shape[0], np.int64)
        w[queried] = want
        blocks = ((keys[s : s + block_rows], x_unit[s : s + block_rows]) for s in range(0, keys.shape[0], block_rows))
        return merge_candidates([top_candidates(blocks, centroids, cursor_sims, cursor_keys, w)], queried)

    return fetch


# ---------------------------------------------------------------- the greedy


@dataclass
class CoresetResult:
    """The chosen rows (sorted by row key) and how they were chosen."""

    keys: np.ndarray  # (m,) int64 row keys (the row indices for an in-memory pool), ascending
    centroid: np.ndarray  # (m,) int32: the first centroid (in order) that took the row
    similarity: np.ndarray  # (m,) float32: its similarity to that centroid
    round: np.ndarray  # (m,) int32: the 1-based round that took it
    stop_reason: str  # "threshold", "budget" or "pool" (the budget was the whole pool)
    utilities: list[float]  # every round's utility, the stopping round's included
    threshold: float  # the stopping threshold in force at the end
    budget: int
    centroids: Optional[np.ndarray] = None  # (K, d) the target centroids
    fetches: int = 0  # calls of fetch (Spark passes)
    max_candidates: int = 0  # most candidate rows held at once (all centroids)
    seconds: float = 0.0

    @property
    def indices(self) -> np.ndarray:
        return self.keys

    @property
    def rounds(self) -> int:
        """Rounds whose picks were kept."""
        return int(self.round.max()) if self.round.size else 0

    @property
    def stop_round(self) -> int:
        """The last round run: the one that stopped the greedy (its picks dropped when the threshold stopped it)."""
        return len(self.utilities)

    def metrics(self) -> dict:
        """What the ``runs`` table keeps about the selection."""
        return {
            "selected": int(self.keys.shape[0]), "budget": self.budget, "stop_reason": self.stop_reason,
            "rounds": self.rounds, "stop_round": self.stop_round, "threshold": self.threshold, "utilities": [round(u, 6) for u in self.utilities],
            "fetch_passes": self.fetches, "max_candidates_held": self.max_candidates,
        }


@dataclass
class _Ranking:
    """What the greedy holds of one centroid's ranking: a window of it and a read position."""

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sims: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    pos: int = 0
    complete: bool = False
    cursor: tuple = (START_SIM, START_KEY)  # the last row of the window (everything up to it was seen)
    want: int = 0


def greedy(fetch: Fetch, n_centroids: int, *, budget: int, pool_rows: int, patience: int = 20, stop_threshold: float = 0.95,
           seed: int = 0, candidates: int = 0, on_round: Optional[Callable[[int, float, int], None]] = None) -> CoresetResult:
    """SimCore's greedy over rankings served by ``fetch`` (module docstring); exact for any window size.

    ``candidates``: rows per centroid asked for at first (0: about twice budget / K); a centroid
    that runs out asks again below its cursor for twice as many.
    """
    t0 = time.perf_counter()
    k = n_centroids
    budget = int(min(budget, pool_rows))
    first = candidates or max(16, 2 * math.ceil(budget / k))
    ranks = [_Ranking(want=min(first, pool_rows)) for _ in range(k)]
    taken: dict[int, tuple[int, float, int]] = {}  # key -> (centroid, similarity, round)
    utilities: list[float] = []
    threshold = 0.0
    fetches = 0
    max_held = 0
    reason = "budget"
    rnd = 0
    while len(taken) < budget:
        rnd += 1
        picks = [-1] * k
        pending = list(range(k))
        while pending:
            need = []
            for q in pending:
                r = ranks[q]
                while r.pos < r.keys.shape[0] and int(r.keys[r.pos]) in taken:
                    r.pos += 1
                if r.pos < r.keys.shape[0]:
                    picks[q] = r.pos
                elif not r.complete:
                    need.append(q)
            if need:
                # the pass is paid anyway: centroids about to run out come along (a quarter of their last chunk left)
                low = [q for q in range(k) if q not in need and not ranks[q].complete
                       and ranks[q].keys.shape[0] - ranks[q].pos < ranks[q].want // 8]
                asked = need + low
                queried = np.asarray(asked, np.int64)
                csims = np.full(k, START_SIM, np.float32)
                ckeys = np.full(k, START_KEY, np.int64)
                csims[queried] = [ranks[q].cursor[0] for q in asked]
                ckeys[queried] = [ranks[q].cursor[1] for q in asked]
                want = np.array([ranks[q].want for q in asked], np.int64)
                got = fetch(queried, csims, ckeys, want)
                fetches += 1
                for q, (ks, ss, complete) in zip(asked, got):
                    r = ranks[q]  # the unread rest of the window, then the rows after its end
                    r.keys, r.sims = np.concatenate([r.keys[r.pos :], ks]), np.concatenate([r.sims[r.pos :], ss])
                    r.pos, r.complete = 0, bool(complete)
                    if ks.shape[0]:
                        r.cursor = (np.float32(ss[-1]), int(ks[-1]))
                    r.want = min(2 * r.want, pool_rows)
                max_held = max(max_held, sum(r.keys.shape[0] for r in ranks))
                need = asked  # their picks are found again in the new windows
            pending = need
        if any(p < 0 for p in picks):  # a centroid saw every row taken: only when the budget is the pool
            reason = "pool"
            break
        utility = 0.0
        round_rows: dict[int, tuple[int, float]] = {}
        for q in range(k):
            r = ranks[q]
            key, sim = int(r.keys[picks[q]]), float(r.sims[picks[q]])
            utility += sim / k
            round_rows.setdefault(key, (q, sim))
            r.pos += 1
        utilities.append(utility)
        if on_round is not None:
            on_round(rnd, utility, len(taken))
        if rnd == patience:
            threshold = utility * stop_threshold
        if utility < threshold:
            reason = "threshold"
            break
        new = np.fromiter(round_rows.keys(), np.int64, len(round_rows))
        if len(taken) + new.shape[0] > budget:
            cut = np.argsort(random_keys(new, seed, CUT_STREAM), kind="stable")[: budget - len(taken)]
            new = new[cut]
            reason = "budget"
        for key in new.tolist():
            q, sim = round_rows[key]
            taken[key] = (q, sim, rnd)
    if reason == "budget" and len(taken) >= budget and budget == pool_rows:
        reason = "pool"
    keys = np.fromiter(taken.keys(), np.int64, len(taken))
    order = np.argsort(keys, kind="stable")
    vals = list(taken.values())
    result = CoresetResult(
        keys=keys[order],
        centroid=np.array([vals[i][0] for i in order], np.int32),
        similarity=np.array([vals[i][1] for i in order], np.float32),
        round=np.array([vals[i][2] for i in order], np.int32),
        stop_reason=reason, utilities=utilities, threshold=threshold, budget=budget, fetches=fetches,
        max_candidates=max_held, seconds=time.perf_counter() - t0,
    )
    log.info("coreset: %d rows in %d rounds (stopped: %s), %d candidate fetches, at most %d candidates held",
             result.keys.shape[0], result.rounds, reason, fetches, max_held)
    return result


def reference_greedy(sim: np.ndarray, budget: int, patience: int = 20, stop_threshold: float = 0.95, seed: int = 0, *,
                     as_written: bool = False):
    """The reference's greedy (openssl-simcore ``util/sampling.py: greedy``, with ``args.stop`` on),
    line for line, on the full (N, K) similarity matrix: for the tests and the benchmark only.

    Its two unspecified choices are pinned as :func:`greedy` pins them: ``argsort`` ties go to the
    lower row, and an overshooting round keeps the picks with the smallest counter-based keys
    (the reference: ``np.random.choice(list(tmp))``). ``as_written``: each queue is a deque over
    the sorted index array, numpy scalars, as the reference's ``deque(torch.argsort(...).numpy())``;
    else over Python ints. Returns (sorted indices, {index: round taken}, the stopping round, why).
    """
    from collections import deque

    N, K = sim.shape

    def ranking(k):
        order = np.argsort(-sim[:, k], kind="stable")
        return order if as_written else order.tolist()

    queue_list = [deque(ranking(k)) for k in range(K)]
    indices, tmp, taken_in = set(), set(), {}
    FLAG, threshold, why = 1, 0, "budget"
    while len(indices) < budget:
        func_value = 0
        for q, queue in enumerate(queue_list):
            while True:
                i = queue.popleft()
                if i not in indices:
                    break
            tmp.update({i})
            func_value += sim[i, q].item() / K
        if FLAG == patience:
            threshold = func_value * stop_threshold
        FLAG += 1
        if func_value < threshold:
            why = "threshold"
            break
        if len(indices) + len(tmp) > budget:
            picks = np.array(sorted(int(i) for i in tmp), np.int64)
            tmp = set(picks[np.argsort(random_keys(picks, seed, CUT_STREAM), kind="stable")[: budget - len(indices)]].tolist())
        for i in tmp:
            taken_in[int(i)] = FLAG - 1
        indices.update(tmp)
        tmp = set()
    return np.array(sorted(int(i) for i in indices), np.int64), taken_in, FLAG - 1, why
