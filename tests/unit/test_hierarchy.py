"""Hierarchical k-means with resampling: tree structure and the method's balance properties."""

import faiss
import numpy as np
import pytest

from lakecurate import HierarchicalKMeans, balanced_sample
from lakecurate.core.metrics import balance_figures, centroid_spread
from lakecurate.core.synthetic import long_tailed_pool


@pytest.fixture(scope="module")
def pool():
    return long_tailed_pool(20000, 16, 30, alpha=1.5, spread=0.2, seed=0)


def test_tree_is_consistent(pool):
    h = HierarchicalKMeans([120, 30, 6], resample_size=[1, 4, 3], n_resampling_steps=2, n_iter=8).fit(pool.x)
    n = pool.x.shape[0]
    assert [lv.n_clusters for lv in h.levels_] == [120, 30, 6]
    assert h.levels_[0].labels.shape == (n,)
    for prev, lv in zip(h.levels_, h.levels_[1:]):
        assert lv.labels.shape == (prev.n_clusters,)
        # a parent's size is the sum of its children's sizes
        assert np.array_equal(lv.sizes, np.bincount(lv.labels, weights=prev.sizes, minlength=lv.n_clusters).astype(np.int64))
    for lv in h.levels_:
        assert lv.sizes.sum() == n
        assert lv.centroids.shape == (lv.n_clusters, 16)
    path = h.leaf_path()
    assert path.shape == (n, 3)
    assert np.array_equal(np.bincount(path[:, 2], minlength=6), h.levels_[2].sizes)


def test_one_level_without_resampling_is_plain_kmeans(pool):
    from lakecurate.core.kmeans import fit_kmeans

    h = HierarchicalKMeans([25], n_iter=6, seed=3).fit(pool.x)
    fit, labels, _ = fit_kmeans(pool.x, 25, n_iter=6, seed=np.random.SeedSequence(3).spawn(1)[0])
    assert np.array_equal(h.levels_[0].labels, labels)
    np.testing.assert_array_equal(h.levels_[0].centroids, fit.centroids)


def test_resampling_steps_are_recorded(pool):
    h = HierarchicalKMeans([100, 20], resample_size=[1, 5], n_resampling_steps=3, n_iter=5).fit(pool.x)
    assert len(h.levels_[0].steps) == 1  # r = 1: no resampling at level 1
    assert len(h.levels_[1].steps) == 4  # the first k-means + 3 resampling steps
    assert h.levels_[1].steps[1]["n_points"] <= 20 * 5


def test_same_seed_same_tree(pool):
    a = HierarchicalKMeans([60, 10], resample_size=[1, 3], n_resampling_steps=2, n_iter=5, seed=1).fit(pool.x)
    b = HierarchicalKMeans([60, 10], resample_size=[1, 3], n_resampling_steps=2, n_iter=5, seed=1).fit(pool.x)
    for la, lb in zip(a.levels_, b.levels_):
        assert np.array_equal(la.centroids, lb.centroids) and np.array_equal(la.labels, lb.labels)


def _concept_centres(p, k):
    return np.stack([p.x[p.concept == c].mean(0) for c in range(k)]).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_level_centroids_spread_more_evenly_than_flat_kmeans(seed):
    """The method's claim, on a long-tailed mixture: resampled hierarchy covers the tail concepts."""
    p = long_tailed_pool(20000, 16, 30, alpha=1.5, spread=0.2, seed=seed)
    centres = _concept_centres(p, 30)

    def kl_of(centroids):
        _, nearest = faiss.knn(centroids.astype(np.float32), centres, 1)
        return centroid_spread(nearest[:, 0], 30)

    flat = HierarchicalKMeans([30], n_iter=20, seed=seed).fit(p.x)
    hier = HierarchicalKMeans([300, 30], resample_size=[1, 5], n_resampling_steps=5, n_iter=20, seed=seed).fit(p.x)
    assert kl_of(hier.levels_[-1].centroids) < kl_of(flat.levels_[-1].centroids)


def test_curated_subset_is_more_balanced_than_random(pool):
    h = HierarchicalKMeans([300, 30], resample_size=[1, 5], n_resampling_steps=5, n_iter=20).fit(pool.x)
    curated = balance_figures(pool.concept[balanced_sample(h, 3000)], 30)
    rand = balance_figures(pool.concept[np.random.default_rng(0).choice(20000, 3000, replace=False)], 30)
    assert curated["kl_to_uniform_bits"] < 0.5 * rand["kl_to_uniform_bits"]
    assert curated["largest_share"] < 0.5 * rand["largest_share"]
    assert curated["concepts_covered"] == 30
