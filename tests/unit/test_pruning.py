"""Group bounds (core/pruning.py): the same fit as the full search, valid bounds, and real skipping."""

import numpy as np
import pytest

from lakecurate.core import pruning
from lakecurate.core.assign import assign_batch, nearest_centroid
from lakecurate.core.in_process import NumpyAssigner
from lakecurate.core.kmeans import init_centroids, lloyd, normalize_rows
from lakecurate.core.synthetic import long_tailed_pool

from builders import split_twice_pool


@pytest.fixture(autouse=True)
def small_groups(monkeypatch):
    """Bounds at test sizes: k >= 16, 8 centroids per group (the product uses 256 and 32)."""
    monkeypatch.setattr(pruning, "MIN_K", 16)
    monkeypatch.setattr(pruning, "CENTROIDS_PER_GROUP", 8)


def _pool(n=6000, d=24, concepts=60, seed=5):
    return long_tailed_pool(n, d, concepts, seed=seed).x


def _fit(x, k, iters, prune, spherical=False, batch_rows=1500, seed=0):
    c0 = init_centroids(NumpyAssigner(x), k, np.random.default_rng(seed))
    if spherical:
        c0 = normalize_rows(c0)
    a = NumpyAssigner(x, batch_rows=batch_rows, prune=prune)
    stats = []
    fit = lloyd(a, c0, iters, np.random.default_rng(seed + 1), spherical=spherical, on_iteration=lambda s: stats.append(a.prune_stats))
    return fit, stats


@pytest.mark.parametrize("spherical,full_share", [(False, 0.5), (True, 0.5), (False, 0.0), (False, 2.0)])
def test_the_same_fit_as_the_full_search_with_fewer_products(spherical, full_share, monkeypatch):
    """full_share 0: every bounded pass falls back to a full one; 2: none does."""
    monkeypatch.setattr(pruning, "FULL_PASS_SHARE", full_share)
    x = _pool()
    if spherical:
        x = normalize_rows(x)
    k, iters = 80, 12
    full, _ = _fit(x, k, iters, prune=False, spherical=spherical)
    pruned, stats = _fit(x, k, iters, prune=True, spherical=spherical)
    assert np.array_equal(pruned.centroids, full.centroids)
    assert np.array_equal(pruned.counts, full.counts)
    assert pruned.objective == full.objective
    assert [it.objective for it in pruned.iterations] == [it.objective for it in full.iterations]
    # the first pass computes everything; later ones must skip a real share (else this test proves nothing)
    assert stats[0].centroid_products == x.shape[0] * k
    late = stats[-1]
    if full_share == 0.0:
        assert all(st.centroid_products >= x.shape[0] * k for st in stats)
        return
    # (every row may compute the movers, so the share of products is what shows the skipping)
    assert late.centroid_products < 0.35 * x.shape[0] * k


def _exact_group_minima(x, c, groups, labels):
    d = np.sqrt(((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1))
    d[np.arange(x.shape[0]), labels] = np.inf
    t = int(groups.max()) + 1
    return np.stack([d[:, groups == g].min(1) if (groups == g).any() else np.full(x.shape[0], np.inf) for g in range(t)], 1)


def test_bounds_stay_below_the_true_distances_and_labels_match_nearest_centroid():
    x = _pool(n=2500, d=16, concepts=40, seed=2)
    k = 48
    rng = np.random.default_rng(3)
    c = init_centroids(NumpyAssigner(x), k, rng)
    tracker = pruning.BoundsTracker()
    prior = None
    for it in range(8):
        step = tracker.step(c)
        got, prior, _ = pruning.assign_batch_pruned(x, pruning.prepare_pass(c, step), prior)
        ref = assign_batch(x, c)
        lab, dist = nearest_centroid(x, c)
        assert np.array_equal(prior.labels, lab)
        assert np.array_equal(got.counts, ref.counts) and np.array_equal(got.sums, ref.sums)
        assert got.inertia == ref.inertia
        true_min = _exact_group_minima(x, c, step.groups, lab)
        assert (prior.lower.astype(np.float64) <= true_min + 1e-12).all(), f"a bound above the true distance after pass {it}"
        nonempty = got.counts > 0
        c = c.copy()
        c[nonempty] = (got.sums[nonempty] / got.counts[nonempty, None]).astype(np.float32)
        if it == 3:  # a far jump, as an empty cluster's re-seed makes: the bounds must absorb it
            c[5] = x[int(np.argmax(((x - c[5]) ** 2).sum(1)))]


def test_stale_or_foreign_bounds_mean_a_full_pass_with_the_same_answer():
    x = _pool(n=3000, d=16, concepts=30, seed=4)
    k = 40
    c = init_centroids(NumpyAssigner(x), k, np.random.default_rng(1))
    tracker = pruning.BoundsTracker()
    s1 = tracker.step(c)
    _, b1, _ = pruning.assign_batch_pruned(x, pruning.prepare_pass(c, s1), None)
    c2 = c + np.float32(0.01)
    s2 = tracker.step(c2)
    assert s2.prev_fingerprint == s1.fingerprint
    ref = assign_batch(x, c2)
    # another pass's bounds (fingerprint mismatch), other rows (length) and none at all: all full passes
    foreign = pruning.Bounds("not-this-one", b1.labels, b1.lower)
    short = pruning.Bounds(b1.fingerprint, b1.labels[:-1], b1.lower[:-1])
    for prior in (foreign, short, None):
        got, _, st = pruning.assign_batch_pruned(x, pruning.prepare_pass(c2, s2), prior)
        assert st.centroid_products == x.shape[0] * k
        assert np.array_equal(got.counts, ref.counts) and np.array_equal(got.sums, ref.sums)
    got, _, st = pruning.assign_batch_pruned(x, pruning.prepare_pass(c2, s2), b1)
    assert st.centroid_products < x.shape[0] * k
    assert np.array_equal(got.counts, ref.counts) and np.array_equal(got.sums, ref.sums) and got.inertia == ref.inertia


def test_a_changed_k_regroups_and_small_k_turns_bounds_off(monkeypatch):
    tracker = pruning.BoundsTracker()
    rng = np.random.default_rng(0)
    a = tracker.step(rng.standard_normal((40, 8)).astype(np.float32))
    b = tracker.step(rng.standard_normal((48, 8)).astype(np.float32))
    assert a.prev_fingerprint is None and b.prev_fingerprint is None and b.groups.shape == (48,)
    monkeypatch.setattr(pruning, "MIN_K", 256)
    assert tracker.step(rng.standard_normal((48, 8)).astype(np.float32)) is None


def test_movers_are_the_centroids_that_moved_most_and_leave_their_groups_drift():
    tracker = pruning.BoundsTracker()
    rng = np.random.default_rng(0)
    c = rng.standard_normal((64, 8)).astype(np.float32)
    tracker.step(c)
    c2 = c.copy()
    c2[7] += 50.0  # one far jump
    c2 += np.float32(1e-3)
    s = tracker.step(c2)
    assert 7 in s.movers
    assert s.group_drift.max() < 1.0  # the jump does not widen its group's bound


def _assert_full_search_answer_and_valid_bounds(x, c, groups, got, bounds):
    """The bounded pass's statistics and labels are the full search's, and no stored bound lies
    above the true distance to its group (the row's own centroid left out)."""
    ref = assign_batch(x, c)
    lab, _ = nearest_centroid(x, c)
    assert np.array_equal(bounds.labels, lab)
    assert np.array_equal(got.counts, ref.counts) and np.array_equal(got.sums, ref.sums) and got.inertia == ref.inertia
    true_min = _exact_group_minima(x, c, groups, lab)
    assert (bounds.lower.astype(np.float64) <= true_min + 1e-12).all()


def test_groups_stay_even_when_most_centroids_crowd_one_concept():
    """A long-tailed pool puts most centroids in its head concepts; a grouping by clusters of
    centroids would make one huge group there, which every row of the head then computes whole."""
    rng = np.random.default_rng(7)
    head = rng.standard_normal((700, 16)) * 0.1  # 700 centroids in one tight concept
    tail = rng.standard_normal((300, 16)) * 0.1 + 20.0 * rng.standard_normal((300, 1, 16))[:, 0]
    c = np.concatenate([head, tail]).astype(np.float32)
    groups = pruning.group_centroids(c, 31)
    sizes = np.bincount(groups, minlength=31)
    assert groups.shape == (1000,) and sizes.min() >= 1
    assert sizes.max() <= 3 * 1000 // 31, sorted(sizes)[-5:]
    assert np.array_equal(groups, pruning.group_centroids(c.copy(), 31))  # deterministic


def test_a_split_centroid_joins_its_partners_group_and_the_bounds_hold():
    """Lloyd re-seeds an empty cluster beside a populous one (split_empty_clusters): the re-seeded
    centroid moves to its partner's group, and the bounds carried across the move stay valid."""
    x = _pool(n=2500, d=16, concepts=40, seed=2)
    k = 48
    c = init_centroids(NumpyAssigner(x), k, np.random.default_rng(3))
    tracker = pruning.BoundsTracker()
    s1 = tracker.step(c)
    _, prior, _ = pruning.assign_batch_pruned(x, pruning.prepare_pass(c, s1), None)
    far_group = np.flatnonzero(s1.groups != s1.groups[0])
    j, q = int(far_group[0]), 0  # j is in another group than q
    c2 = c.copy()
    c2[j] = c[q] * (1 + np.float32(1e-4))  # j re-seeded beside q
    s2 = tracker.step(c2)
    assert j in s2.movers and s2.prev_groups[j] == s1.groups[j]
    assert s2.groups[j] == s2.groups[q] != s1.groups[j]
    got, bounds, _ = pruning.assign_batch_pruned(x, pruning.prepare_pass(c2, s2), prior)
    _assert_full_search_answer_and_valid_bounds(x, c2, s2.groups, got, bounds)


def test_a_mover_that_changes_group_is_bounded_through_its_old_group():
    """Rows far from a mover never compute it: their bound on it comes from the bound of the group
    it was in, less its move, and lands in the group it is in now (any grouping is valid)."""
    x = _pool(n=2500, d=16, concepts=40, seed=2)
    k = 48
    c = init_centroids(NumpyAssigner(x), k, np.random.default_rng(3))
    s1 = pruning.BoundsTracker().step(c)
    _, prior, _ = pruning.assign_batch_pruned(x, pruning.prepare_pass(c, s1), None)
    j = 0
    other = int(s1.groups[np.argmax(((c - c[j]) ** 2).sum(1))])  # the group of the centroid farthest from j
    assert other != s1.groups[j]
    c2 = c.copy()
    c2[j] += np.float32(1e-3)  # a small move: most rows stay far from it
    groups2 = s1.groups.copy()
    groups2[j] = other
    move = float(np.sqrt(((c2[j].astype(np.float64) - c[j]) ** 2).sum())) * 1.001
    s2 = pruning.PruneStep(groups2, pruning.centroid_fingerprint(c2, groups2), s1.fingerprint, np.zeros(s1.n_groups),
                           np.array([j]), np.array([move]), s1.groups)
    got, bounds, st = pruning.assign_batch_pruned(x, pruning.prepare_pass(c2, s2), prior)
    assert st.centroid_products < x.shape[0] * k
    _assert_full_search_answer_and_valid_bounds(x, c2, groups2, got, bounds)


def test_three_split_copies_within_rounding_get_the_full_searchs_label():
    """Every centroid within the rounding window is re-scored, in the bounded pass as in the full
    search, so the two agree where three copies of a split cluster tie within rounding."""
    x, c = split_twice_pool(n=6000)
    tracker = pruning.BoundsTracker()
    prior = None
    for it in range(3):
        step = tracker.step(c)
        got, prior, st = pruning.assign_batch_pruned(x, pruning.prepare_pass(c, step), prior)
        lab, _ = nearest_centroid(x, c)
        ref = assign_batch(x, c)
        assert np.array_equal(prior.labels, lab), it
        assert np.array_equal(got.counts, ref.counts) and np.array_equal(got.sums, ref.sums) and got.inertia == ref.inertia
        c = c.copy()
        c[:60] += np.float32(1e-3)  # the far centroids move a little: a bounded pass next
    assert st.centroid_products < x.shape[0] * c.shape[0]
