"""Water-filling quotas, hierarchical quotas and within-cluster selection: exact, hand-computed."""

import numpy as np
import pytest

from lakecurate import HierarchicalKMeans, balanced_sample
from lakecurate.core.sampling import (
    ClusterTree,
    hierarchical_quotas,
    select_within_clusters,
    water_fill_quotas,
)
from lakecurate.errors import ConfigError, InputDataError, SamplingWarning


def rng(seed=0):
    return np.random.default_rng(seed)


def test_water_fill_even_split_when_every_cluster_is_large():
    assert water_fill_quotas(np.array([5, 5, 5]), 6, rng()).tolist() == [2, 2, 2]


def test_water_fill_small_clusters_are_taken_whole_and_the_rest_is_capped():
    # cap 3: min(3,10)+min(3,2)+min(3,5) = 8 <= 9, cap 4 gives 10 > 9; one leftover to cluster 0 or 2
    q = water_fill_quotas(np.array([10, 2, 5]), 9, rng())
    assert q.sum() == 9
    assert q[1] == 2
    assert sorted([q[0], q[2]]) == [3, 4]


def test_water_fill_hand_case_with_exact_cap():
    # sizes 1, 2, 7, 7: cap 3 -> 1+2+3+3 = 9 exactly, no remainder
    assert water_fill_quotas(np.array([1, 2, 7, 7]), 9, rng()).tolist() == [1, 2, 3, 3]


def test_water_fill_remainder_goes_to_distinct_clusters_above_cap():
    sizes = np.array([100, 100, 100, 100, 1])
    for seed in range(20):
        q = water_fill_quotas(sizes, 11, rng(seed))  # cap 2 (2*4+1 = 9), remainder 2
        assert q.sum() == 11 and q[4] == 1
        assert sorted(q[:4].tolist()) == [2, 2, 3, 3]


def test_water_fill_whole_pool_and_zero():
    sizes = np.array([3, 0, 4])
    assert water_fill_quotas(sizes, 7, rng()).tolist() == [3, 0, 4]
    assert water_fill_quotas(sizes, 0, rng()).tolist() == [0, 0, 0]


def test_water_fill_is_reproducible_and_seed_dependent():
    sizes = np.arange(1, 60)
    a = water_fill_quotas(sizes, 1000, rng(1))
    assert np.array_equal(a, water_fill_quotas(sizes, 1000, rng(1)))
    assert any(not np.array_equal(a, water_fill_quotas(sizes, 1000, rng(s))) for s in range(2, 10))


def test_hierarchical_quotas_follow_the_tree():
    # level 1: 4 clusters of sizes 10, 10, 1, 30; parents: {0,1} -> A, {2,3} -> B
    tree = ClusterTree(sizes=[np.array([10, 10, 1, 30]), np.array([20, 31])], parents=[np.array([0, 0, 1, 1]), None])
    q = hierarchical_quotas(tree, 20, rng())
    # top: 10 / 10 ; A splits 5 / 5 ; B gives its small child all (1) and the rest 9
    assert q.tolist() == [5, 5, 1, 9]


def test_select_within_clusters_closest_and_furthest_exact():
    labels = np.array([0, 0, 0, 1, 1])
    dist = np.array([3.0, 1.0, 2.0, 5.0, 4.0], np.float32)
    rows = np.arange(5)
    quotas = np.array([2, 1])
    closest, _ = select_within_clusters(labels, dist, rows, quotas, strategy="closest")
    furthest, _ = select_within_clusters(labels, dist, rows, quotas, strategy="furthest")
    assert closest.tolist() == [1, 2, 4]
    assert furthest.tolist() == [0, 2, 3]


def test_select_with_repeats_takes_every_row_then_the_first_ones_again():
    labels = np.array([0, 0, 0])
    dist = np.array([3.0, 1.0, 2.0], np.float32)
    chosen, _ = select_within_clusters(labels, dist, np.arange(3), np.array([7]), strategy="closest")
    # 7 = 2 full passes (6) + the closest row once more
    assert np.bincount(chosen, minlength=3).tolist() == [2, 3, 2]


@pytest.fixture(scope="module")
def fitted():
    x = np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32)
    return HierarchicalKMeans([40, 8], resample_size=[1, 3], n_resampling_steps=2, n_iter=10).fit(x)


@pytest.mark.parametrize("strategy", ["random", "closest", "furthest"])
def test_balanced_sample_returns_exactly_n_distinct_rows(fitted, strategy):
    for n in (0, 1, 999, 2999):
        s = balanced_sample(fitted, n, strategy=strategy)
        assert s.size == n and np.unique(s).size == n
        assert s.min(initial=0) >= 0 and s.max(initial=0) < 3000
    with pytest.warns(SamplingWarning, match="takes the whole pool"):  # valid, but nothing was balanced
        s = balanced_sample(fitted, 3000, strategy=strategy)
    assert np.array_equal(s, np.arange(3000))


def test_balanced_sample_is_reproducible_from_the_seed(fitted):
    a = balanced_sample(fitted, 500, seed=3)
    assert np.array_equal(a, balanced_sample(fitted, 500, seed=3))
    assert not np.array_equal(a, balanced_sample(fitted, 500, seed=4))


def test_balanced_sample_respects_level1_quotas(fitted):
    s = balanced_sample(fitted, 800, seed=0)
    per_cluster = np.bincount(fitted.labels_[s], minlength=40)
    quotas = hierarchical_quotas(fitted.tree_, 800, np.random.default_rng(0))
    assert np.array_equal(per_cluster, quotas)


def test_balanced_sample_closest_picks_the_rows_nearest_each_centroid(fitted):
    s = balanced_sample(fitted, 400, strategy="closest")
    lv = fitted.levels_[0]
    for c in np.unique(lv.labels[s])[:10]:
        members = np.flatnonzero(lv.labels == c)
        chosen = np.intersect1d(members, s)
        rest = np.setdiff1d(members, s)
        if rest.size:
            assert lv.distances[chosen].max() <= lv.distances[rest].min()


def test_target_larger_than_pool_is_an_error_unless_repeats(fitted):
    with pytest.raises(InputDataError, match=r"n=3001 .*3000 rows"):
        balanced_sample(fitted, 3001)
    with pytest.warns(SamplingWarning, match="more than the pool of 3000: every row is drawn, some up to 2 times"):
        s = balanced_sample(fitted, 4500, max_repeats=2)
    assert s.size == 4500 and np.bincount(s).max() <= 2


def test_bad_strategy_and_unfitted_tree_are_errors(fitted):
    with pytest.raises(ConfigError, match="strategy='nearest'"):
        balanced_sample(fitted, 10, strategy="nearest")
    with pytest.raises(ConfigError, match="not fitted"):
        balanced_sample(HierarchicalKMeans([3]), 10)
