"""Semantic de-duplication core: the rule, blocking, the neighbour option and the two-step merge.

The reference used below is deliberately naive and independent of the library's kernels: all n^2
similarities in one float64 matrix product, the compared-pair mask built from the coarse labels,
a plain union-find, and the representative rule applied literally.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lakecurate.core import dedup
from lakecurate.core.dedup import (
    dedup_cluster,
    deduplicate,
    exact_cosine,
    find_duplicate_pairs,
    find_duplicates,
    merge_cross_cluster,
    remap_rows,
    removal_by_cluster_size,
    resolve_groups,
    unit_rows,
)
from lakecurate.errors import ConfigError, InputDataError

from builders import boundary_pool

# ---------------------------------------------------------------- helpers


def tilted(theta: float, axis: int, d: int = 8) -> np.ndarray:
    """Unit vector at angle theta from e0 towards e_axis."""
    v = np.zeros(d, dtype=np.float64)
    v[0] = math.cos(theta)
    v[axis] = math.sin(theta)
    return v


def in_plane(angle: float, d: int = 4) -> np.ndarray:
    v = np.zeros(d)
    v[0], v[1] = math.cos(angle), math.sin(angle)
    return v


def reference_kept_row(X: np.ndarray, eps: float, labels: np.ndarray, centroids: np.ndarray, n_nb: int) -> np.ndarray:
    """The rule of the module docstring, written out the slow way."""
    n = X.shape[0]
    x64 = np.asarray(X, dtype=np.float64)
    xu = (x64 / np.where((nrm := np.linalg.norm(x64, axis=1, keepdims=True)) > 0, nrm, 1.0)).astype(np.float32)
    xu = xu.astype(np.float64)
    norms = np.linalg.norm(xu, axis=1)
    zero = norms == 0
    safe = np.where(zero, 1.0, norms)
    sim = (xu @ xu.T) / np.outer(safe, safe)
    sim[np.ix_(zero, zero)] = 1.0
    sim[zero, :] = np.where(zero[None, :], 1.0, 0.0)
    sim[:, zero] = np.where(zero[:, None], 1.0, 0.0)
    compared = labels[:, None] == labels[None, :]
    c = centroids.astype(np.float64)
    if n_nb > 0:
        d2 = ((xu[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        d2[np.arange(n), labels] = np.inf
        nb = np.argsort(d2, axis=1, kind="stable")[:, :n_nb]
        near = np.zeros((n, c.shape[0]), dtype=bool)
        near[np.repeat(np.arange(n), n_nb), nb.ravel()] = True
        row_near = near[:, labels]  # row_near[i, j]: j's cluster is a neighbour of i
        compared |= row_near | row_near.T
    adj = compared & (sim >= 1.0 - eps)
    np.fill_diagonal(adj, False)

    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in zip(*np.nonzero(adj)):
        parent[find(int(i))] = find(int(j))
    cn = np.linalg.norm(c[labels], axis=1)
    csim = np.where(zero | (cn == 0), 0.0, (xu * c[labels]).sum(1) / (safe * np.where(cn > 0, cn, 1.0)))
    csim[zero & (cn == 0)] = 1.0
    best: dict[int, int] = {}
    for i in range(n):
        root = find(i)
        b = best.get(root)
        if b is None or csim[i] > csim[b] or (csim[i] == csim[b] and i < b):
            best[root] = i
    return np.array([best[find(i)] for i in range(n)], dtype=np.int64)


def groups_of(kept_row: np.ndarray) -> set[frozenset]:
    out: dict[int, set] = {}
    for i, k in enumerate(kept_row):
        out.setdefault(int(k), set()).add(i)
    return {frozenset(g) for g in out.values()}


def noisy_pool(seed: int, n_items: int = 40, d: int = 16, noise: float = 0.02) -> np.ndarray:
    """Distinct random items, each copied 1-4 times with a small perturbation, rows shuffled."""
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n_items, d))
    copies = rng.integers(1, 5, size=n_items)
    rows = [
        items[i] + noise * rng.normal(size=d) * np.linalg.norm(items[i])
        for i in range(n_items)
        for _ in range(copies[i])
    ]
    X = np.array(rows, dtype=np.float32)
    return X[rng.permutation(len(X))]


# ---------------------------------------------------------------- hand-built cases


def test_three_tight_groups_and_singles_keep_the_member_nearest_the_centroid():
    # Every row leans on e0 by an angle theta towards its own axis. Within a group the angles
    # differ by <= 0.02 rad (similarity >= 0.9998); across groups and singles similarity is ~0.77.
    # With one coarse cluster the centroid is close to e0, so the least tilted member of a group
    # is nearest the centroid and is the one kept.
    spec = [
        (0.51, 1), (0.50, 1), (0.52, 1),  # group on axis 1: row 1 kept
        (0.52, 2), (0.51, 2), (0.50, 2),  # group on axis 2: row 5 kept
        (0.50, 3), (0.52, 3), (0.51, 3), (0.515, 3),  # group on axis 3: row 6 kept
        (0.50, 4), (0.50, 5), (0.50, 6),  # singles
    ]
    X = np.array([tilted(t, a) for t, a in spec], dtype=np.float32)
    res = find_duplicates(X, eps=0.01, n_clusters=1)
    np.testing.assert_array_equal(res.keep, [1, 5, 6, 10, 11, 12])
    np.testing.assert_array_equal(res.kept_row, [1, 1, 1, 5, 5, 5, 6, 6, 6, 6, 10, 11, 12])
    removed, kept_for, sim = res.duplicates()
    np.testing.assert_array_equal(removed, [0, 2, 3, 4, 7, 8, 9])
    expected = [math.cos(abs(spec[r][0] - spec[k][0])) for r, k in zip(removed, kept_for)]
    np.testing.assert_allclose(sim, expected, atol=1e-6)
    np.testing.assert_array_equal(deduplicate(X, eps=0.01, n_clusters=1), res.keep)


def test_groups_do_not_depend_on_the_coarse_partition_when_neighbours_cover_it():
    spec = [(0.51, 1), (0.50, 1), (0.52, 2), (0.51, 2), (0.50, 3), (0.52, 3), (0.5, 4), (0.5, 5), (0.5, 6)]
    X = np.array([tilted(t, a) for t, a in spec], dtype=np.float32)
    res = find_duplicates(X, eps=0.01, n_clusters=3, n_neighbor_clusters=2)  # every pair compared
    pairs = {frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5})}
    assert groups_of(res.kept_row) == pairs | {frozenset({i}) for i in (6, 7, 8)}


def test_chain_is_one_group_and_an_end_of_the_chain_can_be_its_representative():
    # a(0) ~ b(0.08) ~ c(0.16): a-b and b-c have similarity cos(0.08) = 0.9968 >= 0.99,
    # a-c has cos(0.16) = 0.9872, just outside eps = 0.01. Two unrelated rows at 0.46 and 0.76
    # pull the single centroid to angle ~0.29, so c is the member nearest the centroid.
    X = np.array([in_plane(a) for a in (0.0, 0.08, 0.16, 0.46, 0.76)], dtype=np.float32)
    assert exact_cosine(X[:1], X[2:3])[0] < 0.99 <= exact_cosine(X[:1], X[1:2])[0]
    res = find_duplicates(X, eps=0.01, n_clusters=1)
    np.testing.assert_array_equal(res.keep, [2, 3, 4])
    np.testing.assert_array_equal(res.kept_row, [2, 2, 2, 3, 4])
    # a is recorded against c although the two are not within eps: linked through b
    assert res.similarity[0] == pytest.approx(math.cos(0.16), abs=1e-6)
    assert res.similarity[0] < 1 - res.eps
    assert res.similarity[1] == pytest.approx(math.cos(0.08), abs=1e-6)


def test_chain_representative_follows_the_centroid_similarity_then_the_row_index():
    # the same chain through the per-cluster core with chosen centroid similarities
    X = unit_rows(np.array([in_plane(a) for a in (0.16, 0.0, 0.08)], dtype=np.float32))  # c, a, b
    rows = np.array([30, 10, 20])
    for csim, expected in [([0.1, 0.9, 0.2], 10), ([0.1, 0.2, 0.9], 20), ([0.9, 0.2, 0.1], 30), ([0.5, 0.5, 0.5], 10)]:
        out = dedup_cluster(X, rows, np.array(csim), 0.01, block_size=2)
        np.testing.assert_array_equal(out.kept_row, [expected] * 3)


def test_exact_duplicates_and_zero_vectors():
    v, w, s = np.eye(4, dtype=np.float32)[:3] * np.float32(3.0)
    z = np.zeros(4, dtype=np.float32)
    X = np.stack([v, w, v, z, v, z, w, s, z])
    res = find_duplicates(X, eps=1e-6, n_clusters=1)
    # identical rows tie on centroid similarity: the smallest row index is kept
    np.testing.assert_array_equal(res.keep, [0, 1, 3, 7])
    np.testing.assert_array_equal(res.kept_row, [0, 1, 0, 3, 0, 3, 1, 7, 3])
    removed, _, sim = res.duplicates()
    np.testing.assert_array_equal(removed, [2, 4, 5, 6, 8])
    assert np.all(sim == 1.0)  # exactly, not approximately
    # eps = 1 makes the orthogonal v, w, s duplicates (similarity 0 >= 0), never the zero rows
    res1 = find_duplicates(X, eps=1.0, n_clusters=1)
    assert groups_of(res1.kept_row) == {frozenset({0, 1, 2, 4, 6, 7}), frozenset({3, 5, 8})}


def test_many_identical_copies_in_a_cluster_larger_than_a_block():
    rng = np.random.default_rng(3)
    X = np.concatenate([np.tile(rng.normal(size=(1, 8)), (40, 1)), rng.normal(size=(10, 8))]).astype(np.float32)
    X = X[rng.permutation(50)]
    res = find_duplicates(X, eps=0.001, n_clusters=1, block_size=4)
    copies = np.flatnonzero((X == X[np.argmax((X[:, None] == X[None]).all(-1).sum(1))]).all(1))
    assert copies.size == 40
    assert np.all(res.kept_row[copies] == copies.min())
    assert res.keep.size == 11


# ---------------------------------------------------------------- blocking and exactness


def test_cluster_larger_than_the_block_gives_the_same_answer_as_one_block(monkeypatch):
    rng = np.random.default_rng(7)
    X = (rng.normal(size=(1, 16)) + 0.15 * rng.normal(size=(50, 16))).astype(np.float32)
    X[10] = X[3]  # an exact copy inside the big cluster
    xu = unit_rows(X).astype(np.float64)
    sims = (xu @ xu.T)[np.triu_indices(50, 1)]
    eps = float(1.0 - np.quantile(sims, 0.97))  # ~3% of pairs are duplicates: several groups
    big = find_duplicates(X, eps=eps, n_clusters=1, block_size=4096)
    small = find_duplicates(X, eps=eps, n_clusters=1, block_size=7)
    monkeypatch.setattr(dedup, "EDGE_BUFFER", 3)  # fold into a spanning forest after every few pairs
    monkeypatch.setattr(dedup, "EXTRACT_PAIRS", 10)  # and read each tile a row or two at a time
    folded = find_duplicates(X, eps=eps, n_clusters=1, block_size=7)
    for other in (small, folded):
        np.testing.assert_array_equal(other.keep, big.keep)
        np.testing.assert_array_equal(other.kept_row, big.kept_row)
        np.testing.assert_array_equal(other.similarity, big.similarity)
    ref = reference_kept_row(X, eps, big.cluster, big.centroids, 0)
    np.testing.assert_array_equal(big.kept_row, ref)
    n_groups = len(groups_of(big.kept_row))
    assert 1 < n_groups < 50 and any(len(g) > 2 for g in groups_of(big.kept_row))


def test_pairs_on_the_threshold_are_decided_by_the_exact_similarity_whatever_the_block():
    # Thresholds placed exactly on the k-th highest pair similarity, and 1e-12 above it: float32
    # tiles cannot tell these apart, the exact recheck must. The expected groups come from the
    # rule's own similarity evaluated on every pair.
    rng = np.random.default_rng(11)
    n = 30
    x = unit_rows(rng.normal(size=(n, 24)).astype(np.float32) + 3.0)  # similarities ~0.9
    rows = np.arange(n)
    ii, jj = np.triu_indices(n, 1)
    all_sims = exact_cosine(x[ii], x[jj])
    top = np.sort(all_sims)[::-1][:6]
    checked = 0
    for s in top:
        for eps in (1.0 - s, 1.0 - s - 1e-12):
            on = all_sims >= 1.0 - eps
            expected = resolve_groups(rows, np.zeros(n), ii[on], jj[on])
            for block in (1, 5, 64):
                i, j, sims = find_duplicate_pairs(x, rows, eps, block_size=block)
                np.testing.assert_array_equal(resolve_groups(rows, np.zeros(n), i, j), expected)
                assert np.all(sims >= 1.0 - eps)
            checked += 1
    assert checked == 12


def test_find_duplicate_pairs_returns_a_spanning_forest_of_real_pairs(monkeypatch):
    X = noisy_pool(5, n_items=30)
    xu = unit_rows(X)
    rows = np.arange(len(X)) * 10 + 7
    monkeypatch.setattr(dedup, "EDGE_BUFFER", 2)
    monkeypatch.setattr(dedup, "EXTRACT_PAIRS", 8)
    i, j, sims = find_duplicate_pairs(xu, rows, 0.01, block_size=6)
    assert np.all(i < j) and np.all(sims >= 0.99)
    np.testing.assert_allclose(sims, exact_cosine(xu[(i - 7) // 10], xu[(j - 7) // 10]))
    kept = resolve_groups(rows, np.zeros(len(rows)), i, j)
    assert i.size == len(rows) - len(np.unique(kept))  # a forest: one pair fewer than rows per group
    full = (xu.astype(np.float64) @ xu.T.astype(np.float64)) >= 0.99
    np.fill_diagonal(full, False)
    ii, jj = np.nonzero(np.triu(full))
    np.testing.assert_array_equal(kept, resolve_groups(rows, np.zeros(len(rows)), rows[ii], rows[jj]))


# ---------------------------------------------------------------- coarse clusters and neighbours


def test_copies_straddling_a_cluster_boundary_need_the_neighbour_option():
    X, p, q = boundary_pool()
    without = find_duplicates(X, eps=0.01, n_clusters=2, n_neighbor_clusters=0, seed=0)
    assert without.cluster[p] != without.cluster[q], "precondition: the copies land in different coarse clusters"
    assert set(np.bincount(without.cluster)) == {21}, "precondition: the coarse clusters are the two blobs"
    assert p in without.keep and q in without.keep and without.keep.size == X.shape[0]
    with_nb = find_duplicates(X, eps=0.01, n_clusters=2, n_neighbor_clusters=1, seed=0)
    np.testing.assert_array_equal(with_nb.cluster, without.cluster)
    assert with_nb.removed.size == 1 and with_nb.removed[0] in (p, q)
    kept = with_nb.kept_row[with_nb.removed[0]]
    assert {int(kept), int(with_nb.removed[0])} == {p, q}
    assert with_nb.similarity[with_nb.removed[0]] == pytest.approx(0.9950, abs=1e-3)
    np.testing.assert_array_equal(with_nb.keep, np.setdiff1d(np.arange(X.shape[0]), with_nb.removed))


@pytest.mark.parametrize("n_nb", [0, 1, 2])
def test_matches_the_reference_rule_with_several_clusters(n_nb):
    # on this pool the neighbour option finds 2 more duplicates (71 -> 73 removed)
    X = noisy_pool(1, n_items=60, d=8, noise=0.05)
    res = find_duplicates(X, eps=0.02, n_clusters=6, n_neighbor_clusters=n_nb, block_size=5, seed=4)
    ref = reference_kept_row(X, 0.02, res.cluster, res.centroids, n_nb)
    np.testing.assert_array_equal(res.kept_row, ref)
    assert res.removed.size == (71 if n_nb == 0 else 73)


def test_neighbours_only_add_duplicates():
    # same coarse clustering, more compared pairs: groups only grow, and a row removed without
    # neighbours still has a better member in its (larger) group
    X = noisy_pool(7, n_items=80, d=8, noise=0.05)  # 92 removed without neighbours, 96 with
    base = find_duplicates(X, eps=0.02, n_clusters=8, n_neighbor_clusters=0, seed=1)
    more = find_duplicates(X, eps=0.02, n_clusters=8, n_neighbor_clusters=2, seed=1)
    np.testing.assert_array_equal(base.cluster, more.cluster)
    assert set(base.removed) < set(more.removed)
    for g in groups_of(base.kept_row):  # every group without neighbours lies inside one with them
        assert len({int(more.kept_row[i]) for i in g}) == 1


# ---------------------------------------------------------------- the two-step merge of the Spark stage


def test_local_resolve_then_merge_equals_one_global_resolve():
    rng = np.random.default_rng(9)
    n = 200
    rows = rng.permutation(10_000)[:n].astype(np.int64)
    csim = np.round(rng.random(n), 2)  # rounded: plenty of ties, broken by row id
    cluster = rng.integers(0, 7, size=n)
    pairs = rng.integers(0, n, size=(150, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    global_kept = resolve_groups(rows, csim, rows[pairs[:, 0]], rows[pairs[:, 1]])

    local = np.empty(n, dtype=np.int64)
    within = cluster[pairs[:, 0]] == cluster[pairs[:, 1]]
    for c in range(7):
        m = np.flatnonzero(cluster == c)
        sel = pairs[within & (cluster[pairs[:, 0]] == c)]
        local[m] = resolve_groups(rows[m], csim[m], rows[sel[:, 0]], rows[sel[:, 1]])
    sim_of = dict(zip(rows.tolist(), csim.tolist()))
    cross = pairs[~within]
    rep_a = local[cross[:, 0]]
    rep_b = local[cross[:, 1]]
    old, new = merge_cross_cluster(rep_a, rep_b, [sim_of[r] for r in rep_a], [sim_of[r] for r in rep_b])
    merged = remap_rows(local, old, new)
    np.testing.assert_array_equal(merged, global_kept)
    assert 1 < len(set(global_kept)) < n  # the case is not trivial


def test_resolve_groups_by_hand():
    rows = np.array([14, 10, 12, 11, 13, 15])
    csim = np.array([0.5, 0.9, 0.9, 0.1, 0.3, 0.2])
    # groups {10, 11, 12} (10 and 12 tie on 0.9: 10 wins), {13, 14} (14 wins), {15}
    kept = resolve_groups(rows, csim, np.array([11, 12, 13]), np.array([10, 11, 14]))
    np.testing.assert_array_equal(kept, [14, 10, 10, 10, 14, 15])
    with pytest.raises(InputDataError, match="row 99"):
        resolve_groups(rows, csim, np.array([99]), np.array([10]))


# ---------------------------------------------------------------- invariances


def test_result_does_not_depend_on_row_order_up_to_relabelling():
    X = noisy_pool(4, n_items=40, noise=0.05)
    n = X.shape[0]
    perm = np.random.default_rng(1).permutation(n)
    for kwargs in ({"n_clusters": 1}, {"n_clusters": 1, "block_size": 3}):
        a = find_duplicates(X, eps=0.02, **kwargs)
        b = find_duplicates(X[perm], eps=0.02, **kwargs)
        # row perm[i] of X is row i of X[perm]
        np.testing.assert_array_equal(np.sort(perm[b.keep]), a.keep)
        back = np.empty(n, dtype=np.int64)
        back[perm] = perm[b.kept_row]
        np.testing.assert_array_equal(back, a.kept_row)
        assert a.removed.size > 0


def test_result_does_not_depend_on_row_order_with_separated_blobs():
    rng = np.random.default_rng(6)
    centres = np.eye(12)[:3] * 10
    X = np.concatenate([c + rng.normal(size=(30, 12)) for c in centres]).astype(np.float32)
    X = np.concatenate([X, X[::5] + 0.01 * rng.normal(size=(18, 12)).astype(np.float32)])
    perm = rng.permutation(X.shape[0])
    a = find_duplicates(X, eps=0.001, n_clusters=3)
    b = find_duplicates(X[perm], eps=0.001, n_clusters=3)
    assert {frozenset(perm[list(g)]) for g in groups_of(b.kept_row)} == groups_of(a.kept_row)
    np.testing.assert_array_equal(np.sort(perm[b.keep]), a.keep)
    assert a.removed.size == 18


def test_reproducible_given_the_seed():
    X = noisy_pool(8, n_items=100, noise=0.05)
    a = find_duplicates(X, eps=0.02, n_neighbor_clusters=1, seed=123)
    b = find_duplicates(X, eps=0.02, n_neighbor_clusters=1, seed=123)
    for field in ("keep", "kept_row", "similarity", "cluster", "centroids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = find_duplicates(X, eps=0.02, n_neighbor_clusters=1, seed=np.random.default_rng(123))
    np.testing.assert_array_equal(c.keep, a.keep)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("eps", [0, 0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_eps_out_of_range_names_the_value(eps):
    X = np.eye(3, dtype=np.float32)
    with pytest.raises(ConfigError, match=repr(float(eps)).replace("(", r"\(")):
        deduplicate(X, eps=eps)


def test_bad_eps_type_and_other_parameters():
    X = np.eye(3, dtype=np.float32)
    with pytest.raises(ConfigError, match="'0.1'"):
        deduplicate(X, eps="0.1")
    with pytest.raises(ConfigError, match="metric='l2'"):
        deduplicate(X, eps=0.1, metric="l2")
    with pytest.raises(ConfigError, match="block_size=0"):
        deduplicate(X, eps=0.1, block_size=0)
    with pytest.raises(ConfigError, match="n_neighbor_clusters=-1"):
        deduplicate(X, eps=0.1, n_neighbor_clusters=-1)
    with pytest.raises(InputDataError, match="n_clusters=4 is more than the 3 rows"):
        deduplicate(X, eps=0.1, n_clusters=4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_name_the_row(bad):
    X = np.ones((6, 4), dtype=np.float32)
    X[3, 2] = bad
    with pytest.raises(InputDataError, match="row 3"):
        deduplicate(X, eps=0.1)


# ---------------------------------------------------------------- small pieces


def test_exact_cosine_identical_rows_are_exactly_one():
    rng = np.random.default_rng(0)
    x = unit_rows(rng.normal(size=(100, 384)).astype(np.float32))
    assert np.all(exact_cosine(x, x) == 1.0)
    z = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(exact_cosine(z, np.array([[0, 0, 0], [1, 0, 0]], np.float32)), [1.0, 0.0])


def test_unit_rows_keeps_tiny_rows_and_zero_rows():
    x = np.array([[1e-40, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    u = unit_rows(x)
    np.testing.assert_allclose(u, [[1.0, 0.0], [0.0, 0.0], [0.6, 0.8]], rtol=1e-7)


def test_removal_by_cluster_size():
    cluster = np.array([0] * 12 + [1] * 3 + [2] * 2)
    removed = np.zeros(17, bool)
    removed[[0, 1, 2, 12]] = True
    bands = removal_by_cluster_size(cluster, removed, band_edges=(1, 10, 100))
    assert bands == [
        {"band": "1-9", "n_clusters": 2, "n_rows": 5, "n_removed": 1},
        {"band": "10-99", "n_clusters": 1, "n_rows": 12, "n_removed": 3},
    ]


# ---------------------------------------------------------------- increments


def _increment_pool(seed=0):
    rng = np.random.default_rng(seed)
    old = rng.normal(size=(400, 12)).astype(np.float32)
    old = old[dedup.find_duplicates(old, eps=0.05, n_clusters=1).keep]
    new = rng.normal(size=(120, 12)).astype(np.float32)
    new[:20] = old[:20] + 0.005 * rng.normal(size=(20, 12))  # copies of old rows
    new[20:30] = new[60:70] + 0.001  # copies among the new rows
    new[30] = new[0] + 0.001  # a copy of a copy of an old row
    return old, new.astype(np.float32)


def test_increment_with_one_coarse_cluster_is_the_exact_rule():
    """Every pair compared: a new row goes when an old row is its duplicate, or its group's is."""
    old, new = _increment_pool()
    eps = 0.05
    res = dedup.find_increment_duplicates(old, new, eps=eps, n_clusters=1)
    sims = dedup.unit_rows(new).astype(np.float64) @ dedup.unit_rows(old).astype(np.float64).T
    linked = sims.max(axis=1) >= 1 - eps - 1e-9
    groups = res.within.kept_row
    group_linked = np.isin(groups, groups[linked])
    np.testing.assert_array_equal(res.old_row >= 0, group_linked)
    assert (res.old_row[:20] == np.arange(20)).all() and res.old_row[30] == 0  # nearest old row; the chain goes too
    kept = res.keep
    assert not np.isin(kept, np.flatnonzero(group_linked)).any()
    assert set(kept) == set(np.flatnonzero(~group_linked & (groups == np.arange(new.shape[0]))))
    direct = np.flatnonzero(linked)
    np.testing.assert_allclose(res.similarity[direct], sims[direct, res.old_row[direct]], atol=1e-12)


def test_increment_ties_go_to_the_smaller_old_key_and_zero_rows_to_zero_rows():
    old = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
    new = np.array([[2, 0, 0], [0, 0, 0], [0, 0, 1]], np.float32)
    res = dedup.find_increment_duplicates(old, new, eps=0.01, old_rows=np.array([50, 40, 30, 20, 10]))
    np.testing.assert_array_equal(res.old_row, [40, 10, -1])
    np.testing.assert_array_equal(res.similarity, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(res.keep, [2])


def test_increment_without_old_rows_is_plain_dedup_and_bad_input_is_named():
    old, new = _increment_pool(1)
    res = dedup.find_increment_duplicates(np.zeros((0, 12), np.float32), new, eps=0.05, n_clusters=3)
    np.testing.assert_array_equal(res.keep, dedup.find_duplicates(new, eps=0.05, n_clusters=3).keep)
    assert (res.old_row == -1).all()
    with pytest.raises(InputDataError, match="old_X has dimension 5 but new_X has 12"):
        dedup.find_increment_duplicates(old[:, :5], new, eps=0.05)
    with pytest.raises(InputDataError, match="old_rows has 2 keys"):
        dedup.find_increment_duplicates(old, new, eps=0.05, old_rows=[1, 2])


def test_match_old_rows_is_the_best_of_all_pairs_next_to_a_ball_of_near_copies():
    """The screened search returns what ranking every duplicate pair would, ties to the smaller key."""
    rng = np.random.default_rng(3)
    d = 64
    centre = rng.normal(size=d)
    ball = dedup.unit_rows((centre + 1e-3 * rng.normal(size=(600, d))).astype(np.float32))
    old = np.concatenate([ball, dedup.unit_rows(rng.normal(size=(200, d)).astype(np.float32)), ball[:50], np.zeros((2, d), np.float32)])
    keys = rng.permutation(old.shape[0]).astype(np.int64)
    probes = np.concatenate([dedup.unit_rows((centre + 1e-3 * rng.normal(size=(80, d))).astype(np.float32)), ball[:10],
                             dedup.unit_rows(rng.normal(size=(20, d)).astype(np.float32)), np.zeros((1, d), np.float32)])
    rows = np.arange(probes.shape[0], dtype=np.int64)
    got = dedup.match_old_rows(probes, rows, old, keys, 0.05, block_size=128)
    want = dedup.best_links(*dedup.find_cross_pairs(probes, rows, old, keys, 0.05))
    zero = rows[-1:]
    want = dedup.best_links(np.r_[want[0], zero], np.r_[want[1], keys[-2:].min()], np.r_[want[2], 1.0])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert got[0].size == 91  # the ball's probes, its copies and the zero row; the random ones match nothing
