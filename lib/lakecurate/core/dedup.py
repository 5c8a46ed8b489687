"""Semantic de-duplication: keep one representative of every group of near-duplicate embeddings.

Why it exists: a tight ball of copies (the same photo re-encoded, the same text re-posted) wins a
level-1 cluster of its own and balanced sampling then spends budget on copies, so copies must go
before curating. The method is SemDeDup-style: a coarse spherical k-means partitions the rows,
pairwise cosine similarities are computed inside each coarse cluster (and optionally against
neighbouring clusters), and every group of duplicates keeps one row. This module is the pure
(numpy + faiss + scipy, no Spark) core: the public :func:`deduplicate` calls the same per-cluster
and merge functions, in the same order, as the Spark ``dedup`` stage does, so the two agree.

The rule, exactly as implemented
--------------------------------
* **Similarity.** Rows are scaled to unit L2 norm in float64 and stored as float32
  (:func:`unit_rows`). The similarity of two rows is their cosine computed in float64 from those
  float32 unit rows, ``dot(a, b) / sqrt(dot(a, a) * dot(b, b))``, clipped to [-1, 1]
  (:func:`exact_cosine`). It is a function of the two rows alone (never of a block, a batch or a
  partition), and identical rows have similarity exactly 1.0.
* **Zero vectors** have no direction. All-zero rows are duplicates of each other (similarity 1.0)
  and of nothing else (similarity 0.0 to any non-zero row), whatever eps.
* **Duplicate pair.** Rows i and j are duplicates when ``similarity(i, j) >= 1 - eps``,
  with ``0 < eps <= 1``. Exact duplicates (identical vectors) are duplicates for every eps.
* **Compared pairs.** Only pairs the coarse partition puts side by side are looked at: two rows of
  the same coarse cluster; and, with ``n_neighbor_clusters = r > 0``, rows i and j of different
  clusters when j's cluster is one of the r coarse centroids nearest to row i other than i's own,
  or i's cluster is one of j's (:func:`neighbor_clusters`). Duplicates split between clusters that
  are not neighbours in this sense are missed: the coarse partition costs recall, never
  precision. Identical rows get the same coarse label (the assignment is recomputed row by row,
  see :func:`lakecurate.core.assign.nearest_centroid`), so exact duplicates are not missed.
* **Groups** are the connected components of the graph whose edges are the duplicate pairs among
  the compared pairs. Being a duplicate is not transitive, groups are: in a chain a~b~c where a
  and c are not similar, all three form one group and only one of them is kept.
* **Representative.** In each group the member with the highest similarity (as above) to the
  centroid of its own coarse cluster; ties, which identical rows always produce, go to the
  smallest row index. Deterministic given the data, eps and the coarse clustering (so the seed).
* **Removed rows** record ``kept_row`` = their group's representative and ``similarity`` = their
  exact similarity to it. For a chain member that similarity can be below ``1 - eps``: it was
  linked to the representative through other members, not directly.

Cost and memory
---------------
Inside a coarse cluster of m rows the similarities are computed as float32 matrix products on
``block_size x block_size`` tiles, so no m x m matrix is ever held: memory is O(block_size^2 + m),
compute O(m^2 d). Tile results only *screen* pairs: a pair whose float32 similarity is farther than
a proven rounding bound from ``1 - eps`` is decided by it, the few within the bound are recomputed
exactly, so the decision never depends on the tiling. Identical rows are collapsed before the
tiles (a cluster of a million byte-identical copies costs one comparison row), the duplicate
pairs found are folded into a spanning forest whenever more than :data:`EDGE_BUFFER` accumulate,
and pairs (and whole tiles) already connected by the forest are not extracted again, so a cluster
made only of near-copies keeps fewer than m pairs in memory and costs little beyond its products.

How the Spark stage uses it (one coarse cluster per ``applyInPandas`` call)
------------------------------------------------------------------------------
1. Coarse clustering with the level-1 machinery, spherical, on :func:`unit_rows` of the embeddings;
   per row: label, :func:`centroid_similarity` and, with the neighbour option,
   :func:`neighbor_clusters` (each a function of the row and the centroids only).
2. Per coarse cluster: :func:`dedup_cluster` on its members, with the rows that name it as a
   neighbour as probes. It returns every member's local representative and the cross-cluster
   pairs (probe row, member row), at most one per probe and local group.
3. On the driver: replace both ends of every cross pair by their local representative and call
   :func:`merge_cross_cluster`; it touches only rows with cross-cluster pairs. :func:`remap_rows`
   then gives every row its final representative, and :func:`exact_cosine` the similarity.
Contracting each local group to its representative preserves the connected components, and the
best member of a union is the best of the members' bests, so this two-step answer equals one
global :func:`resolve_groups` over all pairs, whatever the partitioning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from lakecurate.core.assign import Assigner, knn_candidates
from lakecurate.core.in_process import NumpyAssigner
from lakecurate.core.kmeans import KMeansFit, fit_kmeans_assigner
from lakecurate.errors import ConfigError, InputDataError
from lakecurate.validation import check_embeddings, check_eps, check_int

log = logging.getLogger(__name__)

#: Rows per side of one similarity tile: a tile holds block_size^2 float32 similarities (64 MiB at 4096).
DEFAULT_BLOCK_SIZE = 4096
#: Lloyd iterations of the coarse clustering; the partition only has to be good enough for recall.
DEFAULT_COARSE_N_ITER = 20
#: Each row is also compared with the rows of its nearest other coarse cluster: copies that
#: straddle a cluster boundary are found (the config's default too: one default per setting).
DEFAULT_NEIGHBOR_CLUSTERS = 1
#: Rows converted to float64 at a time when similarities are recomputed exactly.
EXACT_CHUNK_ROWS = 8192
#: Candidate pairs pulled out of one tile at a time (bounds the index arrays of a tile full of copies).
EXTRACT_PAIRS = 1 << 20
#: Duplicate pairs buffered before they are folded into a spanning forest (which has < m pairs).
EDGE_BUFFER = 1 << 21
#: Lower edges of the cluster-size bands in which removals are reported.
DEFAULT_SIZE_BANDS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)

_F32_UNIT_ROUNDOFF = 2.0**-24


def default_n_clusters(n_rows: int) -> int:
    """About sqrt(n) coarse clusters: O(n^1.5 d) for the pairwise step on balanced clusters."""
    return int(min(n_rows, max(1, round(math.sqrt(n_rows)))))


def coarse_clustering(
    assigner: Assigner, k: int, *, n_iter: int = DEFAULT_COARSE_N_ITER, seed: Union[int, np.random.Generator] = 0
) -> tuple[KMeansFit, Optional[np.ndarray]]:
    """Spherical k-means over an assigner of :func:`unit_rows` (the coarse partition of dedup).

    The rows are already unit, so they are not renormalised (a second float32 normalisation could
    move bits). The same call on a :class:`NumpyAssigner` and on the Spark assigner over the same
    rows (row keys 0..n-1) gives the same centroids. Returns (fit, labels or None when the
    assigner is not in memory: the Spark stage labels rows on the executors).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    fit = fit_kmeans_assigner(assigner, k, rng, n_iter=n_iter, spherical=True)
    labels = assigner.labels(fit.centroids)[0] if assigner.in_memory else None
    return fit, labels


# ---------------------------------------------------------------- similarities


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, computed in float64 and returned as float32; zero rows stay zero.

    Normalising in float64 keeps tiny (even subnormal) rows from underflowing to a false zero norm.
    Row-wise, so the executors and the driver produce the same bits.
    """
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=np.float32)
    for s in range(0, x.shape[0], EXACT_CHUNK_ROWS):
        x64 = x[s : s + EXACT_CHUNK_ROWS].astype(np.float64)
        norms = np.sqrt((x64 * x64).sum(axis=1, keepdims=True))
        out[s : s + EXACT_CHUNK_ROWS] = x64 / np.where(norms > 0.0, norms, 1.0)
    return out


def exact_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of a[i] and b[i] in float64, the similarity the duplicate rule is stated in.

    ``dot / sqrt(|a|^2 |b|^2)``: products of float32 values are exact in float64, and for identical
    rows the result is exactly 1.0 (sqrt(s*s) == s in binary floating point). Zero rows: 1.0 with
    another zero row, 0.0 otherwise. Clipped to [-1, 1].
    """
    a = np.asarray(a)
    b = np.asarray(b)
    out = np.empty(a.shape[0], dtype=np.float64)
    for s in range(0, a.shape[0], EXACT_CHUNK_ROWS):
        a64 = a[s : s + EXACT_CHUNK_ROWS].astype(np.float64)
        b64 = b[s : s + EXACT_CHUNK_ROWS].astype(np.float64)
        dot = (a64 * b64).sum(axis=1)
        den = np.sqrt((a64 * a64).sum(axis=1) * (b64 * b64).sum(axis=1))
        zero_a = ~np.any(a64 != 0.0, axis=1)
        zero_b = ~np.any(b64 != 0.0, axis=1)
        sim = np.where(zero_a & zero_b, 1.0, 0.0)
        ok = den > 0.0
        sim[ok] = dot[ok] / den[ok]
        out[s : s + EXACT_CHUNK_ROWS] = np.clip(sim, -1.0, 1.0)
    return out


def _exact_cosine_pairs(xa: np.ndarray, xb: np.ndarray, ia: np.ndarray, jb: np.ndarray) -> np.ndarray:
    """exact_cosine(xa[ia], xb[jb]) without gathering more than a chunk of rows at once."""
    out = np.empty(ia.size, dtype=np.float64)
    for s in range(0, ia.size, EXACT_CHUNK_ROWS):
        e = s + EXACT_CHUNK_ROWS
        out[s:e] = exact_cosine(xa[ia[s:e]], xb[jb[s:e]])
    return out


def centroid_similarity(x_unit: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's exact similarity to the centroid of its own coarse cluster (the representative key)."""
    out = np.empty(x_unit.shape[0], dtype=np.float64)
    for s in range(0, x_unit.shape[0], EXACT_CHUNK_ROWS):
        e = s + EXACT_CHUNK_ROWS
        out[s:e] = exact_cosine(x_unit[s:e], centroids[labels[s:e]])
    return out


def neighbor_clusters(
    x_unit: np.ndarray, centroids: np.ndarray, labels: np.ndarray, n_neighbors: int
) -> np.ndarray:
    """(m, r) int64: the r = min(n_neighbors, k - 1) coarse clusters nearest each row, own one excluded.

    A row on a boundary is close to the centroid across it, which is why neighbours are chosen per
    row rather than per cluster. faiss proposes r + 3 candidates, their squared distances are
    recomputed row by row and ties go to the smaller cluster id, so the list depends on the row and
    the centroids only (as in :func:`lakecurate.core.assign.nearest_centroid`).
    """
    x = np.ascontiguousarray(x_unit, dtype=np.float32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    m, k = x.shape[0], c.shape[0]
    r = min(int(n_neighbors), k - 1)
    if r <= 0 or m == 0:
        return np.zeros((m, 0), dtype=np.int64)
    kk = min(k, r + 3)
    out = np.empty((m, r), dtype=np.int64)
    for s in range(0, m, EXACT_CHUNK_ROWS):
        xb = x[s : s + EXACT_CHUNK_ROWS]
        cand = knn_candidates(xb, c, kk)  # the assignment's device choice: the task's GPU when it has one
        cand = cand.astype(np.int64)
        d2 = np.empty(cand.shape, dtype=np.float32)
        for t in range(kk):
            d2[:, t] = np.square(xb - c[cand[:, t]]).sum(axis=1)
        d2[cand == labels[s : s + EXACT_CHUNK_ROWS, None]] = np.inf
        order = np.lexsort((cand, d2), axis=-1)
        out[s : s + EXACT_CHUNK_ROWS] = np.take_along_axis(cand, order, axis=1)[:, :r]
    return out


# ---------------------------------------------------------------- pair search in tiles


def _screen_margin(dim: int) -> float:
    """A bound on |float32 tile similarity - exact similarity| for unit rows of this dimension.

    A float32 dot product of length d errs by at most about d * u (u = 2^-24) times |a||b|, and
    rows stored as float32 have squared norm 1 +- 2u; twice the sum is a safe screening band.
    """
    return 2.0 * (dim + 4) * _F32_UNIT_ROUNDOFF


def _scan_tiles(
    xa: np.ndarray,
    xb: np.ndarray,
    threshold: float,
    block_size: int,
    same: bool,
    known: Optional["_SpanningForest"] = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (i in xa, j in xb, similarity) for the pairs with exact similarity >= threshold.

    ``same`` means xa is xb and only pairs i < j are wanted. The similarity yielded is the tile's
    float32 value when it is outside the screening band (the decision is already certain) and the
    exact one when it is inside; it is only used to prefer strong pairs in the spanning forest.
    With ``known`` (same only), pairs already connected in it are skipped, and so are whole tiles
    inside one of its components: they cannot change the groups, and in a cluster of near-copies
    they are almost all of the pairs.
    """
    margin = _screen_margin(xa.shape[1])
    low, high = threshold - margin, threshold + margin
    na, nb = xa.shape[0], xb.shape[0]
    for a0 in range(0, na, block_size):
        a1 = min(na, a0 + block_size)
        for b0 in range(a0 if same else 0, nb, block_size):
            b1 = min(nb, b0 + block_size)
            if known is not None:
                comp_a, comp_b = known.comp[a0:a1], known.comp[b0:b1]
                if comp_a.min() == comp_a.max() == comp_b.min() == comp_b.max():
                    continue
            tile = xa[a0:a1] @ xb[b0:b1].T
            step = max(1, EXTRACT_PAIRS // (b1 - b0))
            for r0 in range(0, a1 - a0, step):
                sub = tile[r0 : r0 + step]
                hit = sub >= low
                if same and a0 == b0:
                    # diagonal tile: keep the strict upper triangle only
                    hit &= np.arange(b1 - b0)[None, :] > np.arange(r0, r0 + sub.shape[0])[:, None]
                if known is not None:  # re-read: the forest may have folded since the last sub-block
                    hit &= known.comp[a0 + r0 : a0 + r0 + sub.shape[0], None] != known.comp[None, b0:b1]
                ii, jj = np.nonzero(hit)
                if ii.size == 0:
                    continue
                sims = sub[ii, jj].astype(np.float64)
                ii = ii.astype(np.int64) + (a0 + r0)
                jj = jj.astype(np.int64) + b0
                unsure = sims < high
                if unsure.any():
                    sims[unsure] = _exact_cosine_pairs(xa, xb, ii[unsure], jj[unsure])
                    keep = sims >= threshold
                    ii, jj, sims = ii[keep], jj[keep], sims[keep]
                if ii.size:
                    yield ii, jj, sims


class _SpanningForest:
    """Accumulates duplicate pairs over n nodes, folding them into a spanning forest when too many.

    A maximum-similarity spanning forest (weights 2 - sim, all >= 1 so none reads as "no edge")
    keeps the connected components and only real duplicate pairs, with fewer than n of them.
    """

    def __init__(self, n_nodes: int):
        self.n_nodes = n_nodes
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.count = 0
        self.limit = EDGE_BUFFER
        #: component of every node as of the last fold (pairs buffered since are not in it yet)
        self.comp = np.arange(n_nodes, dtype=np.int64)

    def add(self, i: np.ndarray, j: np.ndarray, sims: np.ndarray) -> None:
        self.parts.append((i, j, sims))
        self.count += i.size
        if self.count > self.limit:
            self._fold()
            self.limit = max(EDGE_BUFFER, 2 * self.count)

    def _fold(self) -> None:
        if not self.parts:
            return
        i = np.concatenate([p[0] for p in self.parts])
        j = np.concatenate([p[1] for p in self.parts])
        s = np.concatenate([p[2] for p in self.parts])
        graph = sp.coo_matrix((2.0 - s, (i, j)), shape=(self.n_nodes, self.n_nodes)).tocsr()
        tree = minimum_spanning_tree(graph).tocoo()
        self.parts = [(tree.row.astype(np.int64), tree.col.astype(np.int64), 2.0 - tree.data)]
        self.count = tree.nnz
        self.comp = connected_components(tree, directed=False)[1].astype(np.int64)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        self._fold()
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return self.parts[0][0], self.parts[0][1]


def _first_identical(x: np.ndarray) -> np.ndarray:
    """For every row, the position of the first row with the same bytes (itself when unique)."""
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse.ravel()].astype(np.int64)


def _sorted_pairs(
    rows_i: np.ndarray, rows_j: np.ndarray, sims: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((rows_j, rows_i))
    return rows_i[order], rows_j[order], sims[order]


def find_duplicate_pairs(
    x_unit: np.ndarray, rows: np.ndarray, eps: float, *, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Duplicate pairs inside one set of rows (one coarse cluster): (i_rows, j_rows, similarities).

    Returns a *spanning forest* of the duplicate graph: every pair returned is a real duplicate pair
    (exact similarity >= 1 - eps, reported in float64), and the pairs connect exactly the rows that
    all duplicate pairs connect, with fewer pairs than rows. Which pairs represent a group may
    depend on ``block_size``; the groups never do. Pairs are ordered, i_row < j_row, sorted.

    x_unit: (m, d) float32 rows from :func:`unit_rows`; rows: (m,) int64 row ids.
    """
    x = np.ascontiguousarray(x_unit, dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    threshold = 1.0 - float(eps)
    pos_i: list[np.ndarray] = []
    pos_j: list[np.ndarray] = []

    nonzero = np.any(x != 0.0, axis=1)
    zeros = np.flatnonzero(~nonzero)
    if zeros.size > 1:  # zero rows: duplicates of each other only, linked as a star
        pos_i.append(np.full(zeros.size - 1, zeros[0], dtype=np.int64))
        pos_j.append(zeros[1:].astype(np.int64))

    nz = np.flatnonzero(nonzero)
    first = _first_identical(x[nz])
    copies = np.flatnonzero(first != np.arange(nz.size))
    if copies.size:  # identical rows: linked to their first copy, left out of the tiles
        pos_i.append(nz[first[copies]])
        pos_j.append(nz[copies])
    distinct = nz[first == np.arange(nz.size)]

    if distinct.size > 1:
        xd = np.ascontiguousarray(x[distinct])
        forest = _SpanningForest(distinct.size)
        for ii, jj, sims in _scan_tiles(xd, xd, threshold, block_size, same=True, known=forest):
            forest.add(ii, jj, sims)
        fi, fj = forest.edges()
        pos_i.append(distinct[fi])
        pos_j.append(distinct[fj])

    if not pos_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float64)
    pi = np.concatenate(pos_i)
    pj = np.concatenate(pos_j)
    sims = _exact_cosine_pairs(x, x, pi, pj)
    ri, rj = rows[pi], rows[pj]
    return _sorted_pairs(np.minimum(ri, rj), np.maximum(ri, rj), sims)


def find_cross_pairs(
    x_a: np.ndarray,
    rows_a: np.ndarray,
    x_b: np.ndarray,
    rows_b: np.ndarray,
    eps: float,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    group_b: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Duplicate pairs between set a and set b: (a_rows, b_rows, similarities), sorted.

    With ``group_b`` (a group key per b row, e.g. its local representative) only one pair per
    (a row, b group) is returned, the one with the smallest b position: b's rows of one group are
    already connected, so the others add nothing, and a probe next to a huge group of copies
    yields one pair instead of thousands. Zero rows never pair across sets.
    """
    xa = np.ascontiguousarray(x_a, dtype=np.float32)
    xb = np.ascontiguousarray(x_b, dtype=np.float32)
    rows_a = np.asarray(rows_a, dtype=np.int64)
    rows_b = np.asarray(rows_b, dtype=np.int64)
    threshold = 1.0 - float(eps)
    nza = np.flatnonzero(np.any(xa != 0.0, axis=1))
    nzb = np.flatnonzero(np.any(xb != 0.0, axis=1))
    groups = (np.asarray(group_b, dtype=np.int64) if group_b is not None else np.arange(xb.shape[0]))[nzb]

    def reduce(ii: np.ndarray, jj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gg = groups[jj]
        order = np.lexsort((jj, gg, ii))
        ii, jj, gg = ii[order], jj[order], gg[order]
        head = np.r_[True, (ii[1:] != ii[:-1]) | (gg[1:] != gg[:-1])]
        return ii[head], jj[head]

    parts: list[tuple[np.ndarray, np.ndarray]] = []
    count = 0
    if nza.size and nzb.size:
        xa_nz = np.ascontiguousarray(xa[nza])
        xb_nz = np.ascontiguousarray(xb[nzb])
        for ii, jj, _ in _scan_tiles(xa_nz, xb_nz, threshold, block_size, same=False):
            parts.append(reduce(ii, jj))
            count += parts[-1][0].size
            if count > EDGE_BUFFER:
                parts = [reduce(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))]
                count = parts[0][0].size
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float64)
    ii, jj = reduce(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    pa, pb = nza[ii], nzb[jj]
    sims = _exact_cosine_pairs(xa, xb, pa, pb)
    return _sorted_pairs(rows_a[pa], rows_b[pb], sims)


# ---------------------------------------------------------------- groups and representatives


def _positions(sorted_rows: np.ndarray, sorter: np.ndarray, query: np.ndarray, what: str) -> np.ndarray:
    idx = np.clip(np.searchsorted(sorted_rows, query), 0, max(sorted_rows.size - 1, 0))
    if sorted_rows.size == 0 or not np.array_equal(sorted_rows[idx], query):
        missing = query[sorted_rows[idx] != query] if sorted_rows.size else query
        raise InputDataError(f"{what} names row {int(missing[0])}, which is not among the given rows")
    return sorter[idx]


def resolve_groups(
    rows: np.ndarray, centroid_sim: np.ndarray, pair_i: np.ndarray, pair_j: np.ndarray
) -> np.ndarray:
    """The representative row of every row's group (itself when it is kept), aligned with ``rows``.

    Groups are the connected components of the pairs (duplicate pairs in any number or order);
    the representative is the member with the highest ``centroid_sim``, ties to the smallest row.
    Because that order is total, resolving local groups first and then merging their
    representatives gives the same answer as resolving everything at once.
    """
    rows = np.asarray(rows, dtype=np.int64)
    centroid_sim = np.asarray(centroid_sim, dtype=np.float64)
    pair_i = np.asarray(pair_i, dtype=np.int64)
    pair_j = np.asarray(pair_j, dtype=np.int64)
    m = rows.size
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    sorter = np.argsort(rows, kind="stable")
    sorted_rows = rows[sorter]
    if np.any(sorted_rows[1:] == sorted_rows[:-1]):
        dup = sorted_rows[1:][sorted_rows[1:] == sorted_rows[:-1]][0]
        raise InputDataError(f"row id {int(dup)} appears more than once in the rows to resolve")
    pi = _positions(sorted_rows, sorter, pair_i, "pair_i")
    pj = _positions(sorted_rows, sorter, pair_j, "pair_j")
    graph = sp.coo_matrix((np.ones(pi.size, dtype=np.float32), (pi, pj)), shape=(m, m)).tocsr()
    n_comp, comp = connected_components(graph, directed=False)
    order = np.lexsort((rows, -centroid_sim, comp))
    comp_sorted = comp[order]
    head = np.r_[True, comp_sorted[1:] != comp_sorted[:-1]]
    rep_of_comp = np.empty(n_comp, dtype=np.int64)
    rep_of_comp[comp_sorted[head]] = rows[order[head]]
    return rep_of_comp[comp]


def remap_rows(values: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``values`` with every entry found in sorted ``old`` replaced by the matching ``new``."""
    values = np.asarray(values, dtype=np.int64)
    if old.size == 0:
        return values.copy()
    pos = np.clip(np.searchsorted(old, values), 0, old.size - 1)
    return np.where(old[pos] == values, new[pos], values)


def merge_cross_cluster(
    rep_a: np.ndarray, rep_b: np.ndarray, rep_sim_a: np.ndarray, rep_sim_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Driver-side merge of local groups joined by cross-cluster pairs: (old_rep sorted, new_rep).

    Each cross pair is given as the local representatives of its two ends, with those
    representatives' centroid similarities. Only these representatives are touched, so the driver
    holds O(cross pairs), never O(rows). Apply the result with :func:`remap_rows`.
    """
    rep_a = np.asarray(rep_a, dtype=np.int64)
    rep_b = np.asarray(rep_b, dtype=np.int64)
    nodes, first = np.unique(np.concatenate([rep_a, rep_b]), return_index=True)
    sims = np.concatenate([np.asarray(rep_sim_a, np.float64), np.asarray(rep_sim_b, np.float64)])[first]
    return nodes, resolve_groups(nodes, sims, rep_a, rep_b)


@dataclass
class ClusterDedup:
    """What one coarse cluster's call returns (the rows of an ``applyInPandas`` output)."""

    rows: np.ndarray  # (m,) int64 members, as given
    kept_row: np.ndarray  # (m,) int64 local representative of each member (itself when kept locally)
    kept_centroid_sim: np.ndarray  # (m,) float64 centroid similarity of that representative
    pair_i: np.ndarray  # within-cluster duplicate pairs (a spanning forest), i < j
    pair_j: np.ndarray
    pair_similarity: np.ndarray
    cross_i: np.ndarray  # probe rows (members of other clusters) ...
    cross_j: np.ndarray  # ... paired with these members: at most one pair per probe and local group
    cross_similarity: np.ndarray
    cross_kept_j: np.ndarray  # local representative of cross_j


def dedup_cluster(
    x_unit: np.ndarray,
    rows: np.ndarray,
    centroid_sim: np.ndarray,
    eps: float,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    probe_x: Optional[np.ndarray] = None,
    probe_rows: Optional[np.ndarray] = None,
) -> ClusterDedup:
    """De-duplicate one coarse cluster and find its pairs with probing rows of other clusters.

    Members' groups are resolved locally (final unless a cross pair joins them to another
    cluster's group). Probes are the rows of other clusters that name this cluster among their
    :func:`neighbor_clusters`; only probe-member pairs are compared here.
    """
    rows = np.asarray(rows, dtype=np.int64)
    centroid_sim = np.asarray(centroid_sim, dtype=np.float64)
    pi, pj, ps = find_duplicate_pairs(x_unit, rows, eps, block_size=block_size)
    kept = resolve_groups(rows, centroid_sim, pi, pj)
    sorter = np.argsort(rows, kind="stable")
    kept_sim = centroid_sim[sorter[np.searchsorted(rows[sorter], kept)]]
    if probe_x is not None and probe_rows is not None and len(probe_rows) and rows.size:
        ci, cj, cs = find_cross_pairs(
            probe_x, probe_rows, x_unit, rows, eps, block_size=block_size, group_b=kept
        )
        cross_kept = kept[sorter[np.searchsorted(rows[sorter], cj)]]
    else:
        ci = cj = cross_kept = np.zeros(0, dtype=np.int64)
        cs = np.zeros(0, dtype=np.float64)
    return ClusterDedup(rows, kept, kept_sim, pi, pj, ps, ci, cj, cs, cross_kept)


# ---------------------------------------------------------------- public API


@dataclass
class DuplicateResult:
    """Everything :func:`find_duplicates` decided, row-aligned with the input."""

    keep: np.ndarray  # sorted int64 rows kept
    kept_row: np.ndarray  # (n,) int64 representative of each row's group (itself when kept)
    similarity: np.ndarray  # (n,) float64 exact cosine to kept_row (1.0 for kept rows)
    cluster: np.ndarray  # (n,) int64 coarse cluster of each row
    centroids: np.ndarray  # (k, d) float32 unit coarse centroids
    eps: float
    n_neighbor_clusters: int  # as used (clipped to k - 1)

    @property
    def removed(self) -> np.ndarray:
        """Sorted rows removed as duplicates."""
        return np.flatnonzero(self.kept_row != np.arange(self.kept_row.size))

    def duplicates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, kept_row, similarity) of every removed row: the ``duplicates`` table's content."""
        r = self.removed
        return r, self.kept_row[r], self.similarity[r]

    def removal_by_cluster_size(self, band_edges: Sequence[int] = DEFAULT_SIZE_BANDS) -> list[dict]:
        """Removed rows per coarse-cluster size band (see :func:`removal_by_cluster_size`)."""
        removed = self.kept_row != np.arange(self.kept_row.size)
        return removal_by_cluster_size(self.cluster, removed, band_edges=band_edges)


def removal_by_cluster_size(
    cluster: np.ndarray, removed: np.ndarray, *, band_edges: Sequence[int] = DEFAULT_SIZE_BANDS
) -> list[dict]:
    """Per band of coarse-cluster size: clusters, rows and rows removed (the run's dedup metrics).

    Tells whether removals come from a few huge clusters of copies or spread over the pool.
    Bands are [edge_t, edge_{t+1}); empty bands are left out.
    """
    cluster = np.asarray(cluster, dtype=np.int64)
    removed = np.asarray(removed, dtype=bool)
    if cluster.size == 0:
        return []
    sizes = np.bincount(cluster)
    removed_per = np.bincount(cluster, weights=removed.astype(np.float64), minlength=sizes.size)
    return removal_by_band(sizes, removed_per, band_edges=band_edges)


def removal_by_band(
    sizes: np.ndarray, removed_per_cluster: np.ndarray, *, band_edges: Sequence[int] = DEFAULT_SIZE_BANDS
) -> list[dict]:
    """:func:`removal_by_cluster_size` from per-cluster figures (O(k) on the Spark driver)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    removed_per = np.asarray(removed_per_cluster, dtype=np.float64)
    edges = list(band_edges)
    out = []
    for t, lo in enumerate(edges):
        hi = edges[t + 1] if t + 1 < len(edges) else None
        in_band = (sizes >= lo) & ((sizes < hi) if hi is not None else True) & (sizes > 0)
        if not in_band.any():
            continue
        out.append(
            {
                "band": f"{lo}-{hi - 1}" if hi is not None else f">={lo}",
                "n_clusters": int(in_band.sum()),
                "n_rows": int(sizes[in_band].sum()),
                "n_removed": int(removed_per[in_band].sum()),
            }
        )
    return out


def find_duplicates(
    X: np.ndarray,
    *,
    eps: float,
    metric: str = "cosine",
    n_clusters: Optional[int] = None,
    n_neighbor_clusters: int = DEFAULT_NEIGHBOR_CLUSTERS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    n_iter: int = DEFAULT_COARSE_N_ITER,
    seed: Union[int, np.random.Generator] = 0,
) -> DuplicateResult:
    """Semantic de-duplication of the rows of X under the rule in this module's docstring.

    Parameters
    ----------
    X : (n, d) array of embeddings, finite.
    eps : rows are duplicates when cosine similarity >= 1 - eps; 0 < eps <= 1.
    metric : only "cosine"; the rule is an angle, and raw L2 distances are not scale-free.
    n_clusters : coarse clusters (default about sqrt(n)); more clusters is cheaper but may split
        duplicates between clusters (see ``n_neighbor_clusters``).
    n_neighbor_clusters : also compare each row with the rows of its r nearest other clusters.
    block_size : rows per side of a similarity tile (memory ~ 4 * block_size^2 bytes).
    n_iter : Lloyd iterations of the coarse clustering.
    seed : seeds the coarse clustering; the answer is a function of (X, parameters, seed).
    """
    if metric != "cosine":
        raise ConfigError(
            f"metric={metric!r} is not supported for de-duplication: the duplicate rule is cosine "
            "similarity >= 1 - eps (only metric='cosine')"
        )
    eps = check_eps(eps)
    block_size = check_int(block_size, "block_size", minimum=1)
    n_neighbor_clusters = check_int(n_neighbor_clusters, "n_neighbor_clusters", minimum=0)
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    if not isinstance(seed, np.random.Generator):
        check_int(seed, "seed", minimum=0)
    x = check_embeddings(X)
    n = x.shape[0]
    if n_clusters is None:
        k = default_n_clusters(n)
    else:
        k = check_int(n_clusters, "n_clusters", minimum=1)
        if k > n:
            raise InputDataError(f"n_clusters={k} is more than the {n} rows in the input")
    r = min(n_neighbor_clusters, k - 1)
    if r < n_neighbor_clusters:
        log.info("n_neighbor_clusters=%d but only %d other coarse clusters: using %d", n_neighbor_clusters, k - 1, r)

    x_unit = unit_rows(x)
    fit, labels = coarse_clustering(NumpyAssigner(x_unit), k, n_iter=n_iter, seed=seed)
    centroids = fit.centroids
    csim = centroid_similarity(x_unit, centroids, labels)

    order = np.argsort(labels, kind="stable")  # members of each cluster, ascending rows
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    if r > 0:
        nbr = neighbor_clusters(x_unit, centroids, labels, r)
        probe_row = np.repeat(np.arange(n, dtype=np.int64), r)
        probe_cluster = nbr.ravel()
        porder = np.argsort(probe_cluster, kind="stable")
        probe_row, probe_cluster = probe_row[porder], probe_cluster[porder]
        pbounds = np.searchsorted(probe_cluster, np.arange(k + 1))

    local_kept = np.arange(n, dtype=np.int64)
    if r == 0:
        probe_row = np.zeros(0, dtype=np.int64)
        pbounds = np.zeros(k + 1, dtype=np.int64)
    cross_a: list[np.ndarray] = []
    cross_b: list[np.ndarray] = []
    for c in range(k):
        members = order[bounds[c] : bounds[c + 1]]
        if members.size == 0:
            continue
        probes = probe_row[pbounds[c] : pbounds[c + 1]]
        res = dedup_cluster(
            x_unit[members],
            members,
            csim[members],
            eps,
            block_size=block_size,
            probe_x=x_unit[probes] if probes.size else None,
            probe_rows=probes if probes.size else None,
        )
        local_kept[members] = res.kept_row
        if res.cross_i.size:
            cross_a.append(res.cross_i)
            cross_b.append(res.cross_kept_j)
        if members.size > block_size:
            n_local = int((res.kept_row != members).sum())
            log.debug("coarse cluster %d: %d rows, %d removed locally", c, members.size, n_local)

    kept_row = local_kept
    if cross_a:
        rep_a = local_kept[np.concatenate(cross_a)]
        rep_b = np.concatenate(cross_b)
        old, new = merge_cross_cluster(rep_a, rep_b, csim[rep_a], csim[rep_b])
        kept_row = remap_rows(local_kept, old, new)

    similarity = np.ones(n, dtype=np.float64)
    removed = np.flatnonzero(kept_row != np.arange(n))
    similarity[removed] = exact_cosine(x_unit[removed], x_unit[kept_row[removed]])
    keep = np.flatnonzero(kept_row == np.arange(n)).astype(np.int64)
    log.info(
        "dedup: %d rows, %d coarse clusters (largest %d), eps=%g, neighbours=%d: kept %d, removed %d",
        n, k, int(np.diff(bounds).max()), eps, r, keep.size, removed.size,
    )
    return DuplicateResult(
        keep=keep,
        kept_row=kept_row,
        similarity=similarity,
        cluster=labels.astype(np.int64),
        centroids=centroids,
        eps=eps,
        n_neighbor_clusters=r,
    )


def deduplicate(
    X: np.ndarray,
    *,
    eps: float,
    metric: str = "cosine",
    n_clusters: Optional[int] = None,
    n_neighbor_clusters: int = DEFAULT_NEIGHBOR_CLUSTERS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    n_iter: int = DEFAULT_COARSE_N_ITER,
    seed: Union[int, np.random.Generator] = 0,
) -> np.ndarray:
    """Sorted int64 indices of the rows to keep: one per group of near-duplicates.

    See :func:`find_duplicates` for the parameters and the module docstring for the rule;
    :func:`find_duplicates` also says which row stands for each removed one.
    """
    return find_duplicates(
        X,
        eps=eps,
        metric=metric,
        n_clusters=n_clusters,
        n_neighbor_clusters=n_neighbor_clusters,
        block_size=block_size,
        n_iter=n_iter,
        seed=seed,
    ).keep


# ---------------------------------------------------------------- increments (nightly runs)


def best_links(rows: np.ndarray, old_rows: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One link per row: its most similar old row, ties to the smaller old row; sorted by row."""
    rows = np.asarray(rows, np.int64)
    old_rows = np.asarray(old_rows, np.int64)
    sims = np.asarray(sims, np.float64)
    order = np.lexsort((old_rows, -sims, rows))
    rows, old_rows, sims = rows[order], old_rows[order], sims[order]
    head = np.r_[True, rows[1:] != rows[:-1]] if rows.size else np.zeros(0, bool)
    return rows[head], old_rows[head], sims[head]


def match_old_rows(
    probe_x: np.ndarray, probe_rows: np.ndarray, old_x: np.ndarray, old_rows: np.ndarray, eps: float, *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probe rows, old rows, similarities): each probe's most similar old row among those that
    are its duplicates (exact similarity >= 1 - eps), ties to the smaller old row; probes with none
    are left out. Old rows are not compared with each other (they were de-duplicated when they came).
    A zero probe is a duplicate of the smallest zero old row (the rule's zero vectors).

    Only the best match is wanted, so a probe next to a ball of a thousand near-copies costs no
    more than one next to a single row: float32 tiles screen (threshold less their rounding
    bound), float64 products of the renormalised rows rank the screened candidates, and only the
    candidates within twice their (much smaller) rounding bound of a probe's best get the exact
    similarity. Byte-identical old rows are compared once, as the smallest of their keys.
    """
    px = np.ascontiguousarray(probe_x, dtype=np.float32)
    ox = np.ascontiguousarray(old_x, dtype=np.float32)
    probe_rows = np.asarray(probe_rows, np.int64)
    old_rows = np.asarray(old_rows, np.int64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if px.shape[0] == 0 or ox.shape[0] == 0:
        return empty
    threshold = 1.0 - float(eps)
    pnz = np.any(px != 0.0, axis=1)
    onz = np.any(ox != 0.0, axis=1)
    out_i, out_j, out_s = [], [], []
    if (~pnz).any() and (~onz).any():
        zi = probe_rows[~pnz]
        out_i.append(zi)
        out_j.append(np.full(zi.size, old_rows[~onz].min(), np.int64))
        out_s.append(np.ones(zi.size))
    pp, op = np.flatnonzero(pnz), np.flatnonzero(onz)
    if pp.size and op.size:
        op = op[np.argsort(old_rows[op], kind="stable")]  # the first of identical rows is the smallest key
        first = _first_identical(ox[op])
        op = op[first == np.arange(op.size)]
        xa, xb = px[pp], ox[op]
        na64 = xa.astype(np.float64)
        na64 /= np.linalg.norm(na64, axis=1, keepdims=True)
        nb64 = xb.astype(np.float64)
        nb64 /= np.linalg.norm(nb64, axis=1, keepdims=True)
        m32 = _screen_margin(xa.shape[1])
        m64 = 8.0 * (xa.shape[1] + 4) * 2.0**-53
        cand_i, cand_j, cand_s = [], [], []
        for a0 in range(0, xa.shape[0], block_size):
            a1 = min(xa.shape[0], a0 + block_size)
            for b0 in range(0, xb.shape[0], block_size):
                b1 = min(xb.shape[0], b0 + block_size)
                hit = (xa[a0:a1] @ xb[b0:b1].T) >= threshold - m32
                rows = np.flatnonzero(hit.any(axis=1))
                if rows.size == 0:
                    continue
                s64 = na64[a0 + rows] @ nb64[b0:b1].T
                s64[~hit[rows]] = -np.inf
                best = s64.max(axis=1)
                keep = (s64 >= (best - 2 * m64)[:, None]) & (s64 >= threshold - m64)
                ii, jj = np.nonzero(keep)
                cand_i.append(rows[ii] + a0)
                cand_j.append(jj.astype(np.int64) + b0)
                cand_s.append(s64[ii, jj])
        if cand_i:
            ci, cj, cs = np.concatenate(cand_i), np.concatenate(cand_j), np.concatenate(cand_s)
            best = np.full(xa.shape[0], -np.inf)
            np.maximum.at(best, ci, cs)
            near = cs >= best[ci] - 2 * m64
            ci, cj = ci[near], cj[near]
            exact = _exact_cosine_pairs(xa, xb, ci, cj)
            ok = exact >= threshold
            out_i.append(probe_rows[pp[ci[ok]]])
            out_j.append(old_rows[op[cj[ok]]])
            out_s.append(exact[ok])
    if not out_i:
        return empty
    return best_links(np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s))


def resolve_increment(kept_row: np.ndarray, link_row: np.ndarray, link_old: np.ndarray, link_sim: np.ndarray) -> np.ndarray:
    """(m,) int64: the old row that stands for each new row, -1 where none does.

    ``kept_row``: each new row's representative among the new rows (a group's members share it);
    ``link_*``: new rows (positions 0..m-1) linked to an old row (:func:`match_old_rows`). A group
    with any link is represented by the old row of its most similar link (ties: the smaller old
    row): the whole group goes, the old row stays. Old rows are never removed.
    """
    kept_row = np.asarray(kept_row, np.int64)
    out = np.full(kept_row.size, -1, np.int64)
    if np.asarray(link_row).size == 0:
        return out
    group = kept_row[np.asarray(link_row, np.int64)]
    g, chosen, _ = best_links(group, link_old, link_sim)
    pos = np.clip(np.searchsorted(g, kept_row), 0, g.size - 1)
    hit = g[pos] == kept_row
    out[hit] = chosen[pos[hit]]
    return out


def increment_n_clusters(n_new: int, n_old: int, n_clusters: Optional[int], n_neighbor_clusters: int = 0) -> int:
    """Coarse clusters of an increment: the configured number, else about sqrt(new x (1 + r)), never
    more than the new rows (the coarse clustering is fitted on them).

    Labelling the old rows costs ``n_old x k`` centroid products and comparing the new rows with
    them ``n_new x (1 + r) x n_old / k`` row products: k = sqrt(n_new (1 + r)) balances the two,
    about ``2 n_old sqrt(n_new (1 + r)) d`` flops for the night, however large the tree."""
    if n_clusters is not None:
        k = n_clusters
    else:
        k = round(math.sqrt(n_new * (1 + n_neighbor_clusters))) if n_old else default_n_clusters(n_new)
    return int(max(1, min(k, n_new)))


@dataclass
class IncrementDuplicates:
    """What :func:`find_increment_duplicates` decided, row-aligned with the new rows."""

    within: DuplicateResult  # the new rows de-duplicated among themselves (its coarse clustering is the increment's)
    old_row: np.ndarray  # (m,) int64 old row standing for each new row (a duplicate of a kept old row), -1 when none
    similarity: np.ndarray  # (m,) float64 exact cosine to the row standing for it (old or new; 1.0 when kept)

    @property
    def keep(self) -> np.ndarray:
        """Sorted new rows kept: no old row stands for them and they represent their group."""
        m = self.old_row.size
        return np.flatnonzero((self.within.kept_row == np.arange(m)) & (self.old_row < 0)).astype(np.int64)


def find_increment_duplicates(
    old_X: np.ndarray,
    new_X: np.ndarray,
    *,
    eps: float,
    old_rows: Optional[np.ndarray] = None,
    n_clusters: Optional[int] = None,
    n_neighbor_clusters: int = DEFAULT_NEIGHBOR_CLUSTERS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    n_iter: int = DEFAULT_COARSE_N_ITER,
    seed: Union[int, np.random.Generator] = 0,
) -> IncrementDuplicates:
    """De-duplicate new rows against kept old rows and each other (a nightly increment).

    The old rows (a tree's kept rows) stay, all of them. The new rows are de-duplicated among
    themselves by :func:`find_duplicates` (its coarse clustering fitted on the new rows with
    :func:`increment_n_clusters` clusters); every old row gets its nearest of those coarse centroids,
    and each new row is compared with the old rows of its own coarse cluster and of its
    ``n_neighbor_clusters`` nearest other ones (:func:`match_old_rows`). A group of new duplicates
    any of whose members matches an old row goes whole, pointing at that old row
    (:func:`resolve_increment`): a new row is never kept when an old kept row stands for it.

    ``old_rows``: int64 keys of the old rows (ties between equally similar old rows go to the
    smaller key); default 0..n_old-1. The Spark ``dedup`` stage with ``dedup.mode: incremental``
    gives the same answer with the ids as keys.
    """
    from lakecurate.core.assign import nearest_centroid

    new = check_embeddings(new_X, name="new_X")
    old = check_embeddings(old_X, name="old_X") if np.asarray(old_X).size else np.zeros((0, new.shape[1]), np.float32)
    if old.shape[1] != new.shape[1]:
        raise InputDataError(f"old_X has dimension {old.shape[1]} but new_X has {new.shape[1]}")
    m = new.shape[0]
    old_rows = np.arange(old.shape[0], dtype=np.int64) if old_rows is None else np.asarray(old_rows, np.int64)
    if old_rows.shape != (old.shape[0],):
        raise InputDataError(f"old_rows has {old_rows.size} keys for {old.shape[0]} old rows")
    k = increment_n_clusters(m, old.shape[0], n_clusters, n_neighbor_clusters)
    within = find_duplicates(new, eps=eps, n_clusters=k, n_neighbor_clusters=n_neighbor_clusters,
                             block_size=block_size, n_iter=n_iter, seed=seed)
    x_new, x_old = unit_rows(new), unit_rows(old)
    r = within.n_neighbor_clusters
    old_lab = nearest_centroid(x_old, within.centroids)[0]
    nbr = neighbor_clusters(x_new, within.centroids, within.cluster, r) if r > 0 else np.zeros((m, 0), np.int64)
    probe_row = np.r_[np.arange(m, dtype=np.int64), np.repeat(np.arange(m, dtype=np.int64), r)]
    probe_cluster = np.r_[within.cluster, nbr.ravel()]
    links: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for c in np.unique(old_lab):
        members = np.flatnonzero(old_lab == c)
        probes = np.sort(probe_row[probe_cluster == c])
        if probes.size:
            links.append(match_old_rows(x_new[probes], probes, x_old[members], old_rows[members], eps, block_size=block_size))
    if links:
        li, lo, ls = best_links(*(np.concatenate(p) for p in zip(*links)))
    else:
        li = lo = np.zeros(0, np.int64)
        ls = np.zeros(0)
    old_row = resolve_increment(within.kept_row, li, lo, ls)
    similarity = within.similarity.copy()
    gone = np.flatnonzero(old_row >= 0)
    if gone.size:
        sorter = np.argsort(old_rows, kind="stable")
        pos = sorter[np.searchsorted(old_rows[sorter], old_row[gone])]
        similarity[gone] = exact_cosine(x_new[gone], x_old[pos])
    log.info("dedup increment: %d new rows against %d old: %d duplicates of old rows, %d among the new, %d kept",
             m, old.shape[0], gone.size, int(((within.kept_row != np.arange(m)) & (old_row < 0)).sum()),
             int(((within.kept_row == np.arange(m)) & (old_row < 0)).sum()))
    return IncrementDuplicates(within=within, old_row=old_row, similarity=similarity)
