"""Two-step levels in-process: the split of k, the routed labels, the fit's determinism and quality."""

from __future__ import annotations

import numpy as np
import pytest

from lakecurate.core.assign import RoutedCentroids, nearest_centroid
from lakecurate.core.in_process import NumpyAssigner
from lakecurate.core.hierarchy import LevelParams, fit_hierarchy
from lakecurate.core.two_step import allocate_subclusters


def test_allocate_subclusters_is_proportional_and_exact():
    sizes = np.array([1000, 10, 0, 1, 300, 5])
    share = allocate_subclusters(sizes, 100)
    assert share.sum() == 100
    assert share[2] == 0 and (share[sizes > 0] >= 1).all() and (share <= sizes).all()
    assert share[0] > share[4] > share[1]
    assert allocate_subclusters(np.array([3, 2]), 10).tolist() == [3, 2]  # capped by the rows


def test_allocate_subclusters_adds_up_when_many_small_clusters_get_their_one():
    # 19 tiny clusters each get 1 although their proportional share is < 1: the big one gives back
    sizes = np.array([14755, 1518, 298, 267, 2, 434, 200, 1682, 68, 4, 239, 11, 302, 11, 16, 2, 95, 3, 21, 72])
    share = allocate_subclusters(sizes, 400)
    assert share.sum() == 400 and (share >= 1).all() and (share <= sizes).all()
    with pytest.raises(ValueError, match="need at least one fine cluster each"):
        allocate_subclusters(np.array([5, 5, 5]), 2)


def _mixture(n=6000, d=8, seed=2):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)) * 10
    sizes = rng.zipf(1.5, 40).astype(float)
    return (centres[rng.choice(40, n, p=sizes / sizes.sum())] + rng.standard_normal((n, d))).astype(np.float32)


PARAMS = [LevelParams(80, resample_size=4, n_resampling_steps=2, n_iter=8, n_coarse=6),
          LevelParams(10, resample_size=3, n_resampling_steps=1, n_iter=8, n_coarse=3), LevelParams(3, n_iter=8)]


def test_a_two_step_hierarchy_is_a_tree_of_the_asked_shape_and_routes_rows_exactly():
    x = _mixture()
    levels = fit_hierarchy(NumpyAssigner(x), PARAMS, 7)
    assert [lv.n_clusters for lv in levels] == [80, 10, 3]
    assert levels[0].routing is not None and levels[1].routing is not None and levels[2].routing is None
    r = levels[0].routing
    assert r.offsets[0] == 0 and r.offsets[-1] == 80 and np.all(np.diff(r.offsets) >= 1)
    # a row's label is its nearest coarse centroid's nearest fine centroid: checked row by row
    groups, _ = nearest_centroid(x, r.coarse)
    for i in range(0, len(x), 97):
        fine = r.group(int(groups[i]))
        j = np.argmin(((fine - x[i]) ** 2).sum(1))
        assert levels[0].labels[i] == r.offsets[groups[i]] + j
    assert np.array_equal(np.bincount(levels[0].labels, minlength=80), levels[0].counts)
    assert levels[0].objective == pytest.approx(float(levels[0].distances.astype(np.float64).sum()), rel=1e-6)
    assert levels[2].sizes.sum() == len(x)
    # routing does not depend on how the rows are batched
    lab, dist = NumpyAssigner(x, batch_rows=333).labels(r)
    assert np.array_equal(lab, levels[0].labels) and np.array_equal(dist, levels[0].distances)
    again = fit_hierarchy(NumpyAssigner(x), PARAMS, 7)
    assert all(np.array_equal(a.centroids, b.centroids) for a, b in zip(levels, again))
    other = fit_hierarchy(NumpyAssigner(x), PARAMS, 8)
    assert not np.array_equal(other[0].centroids, levels[0].centroids)


def test_two_steps_cost_little_objective_on_clustered_data():
    x = _mixture()
    flat = fit_hierarchy(NumpyAssigner(x), [LevelParams(80, n_iter=8)], 7)[0]
    two = fit_hierarchy(NumpyAssigner(x), [LevelParams(80, n_iter=8, n_coarse=6)], 7)[0]
    assert two.objective < 1.5 * flat.objective  # within-cluster noise dominates both


@pytest.mark.filterwarnings("ignore:level 1:UserWarning")
def test_routed_centroids_skip_groups_without_fine_centroids():
    """A coarse cluster that stays empty (the pool has fewer distinct points than coarse clusters)
    gets no fine centroids; the fit leaves it out of the routing, so every row still reaches a fine
    centroid of its own coarse cluster. Before, this test built a routing with no empty group."""
    rng = np.random.default_rng(0)
    points = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    x = points[rng.integers(0, 3, 900)]  # three distinct points: at most three coarse clusters hold rows
    level = fit_hierarchy(NumpyAssigner(x), [LevelParams(6, n_iter=5, n_coarse=5)], 3)[0]
    routed = level.routing
    assert isinstance(routed, RoutedCentroids)
    assert routed.n_groups < 5, "expected a coarse cluster without rows (and so without fine centroids)"
    assert routed.offsets[-1] == routed.fine.shape[0] and (np.diff(routed.offsets) >= 1).all()
    lab, dist = nearest_centroid(x, routed)
    assert np.array_equal(lab, level.labels) and (lab >= 0).all() and (lab < routed.fine.shape[0]).all()
    # each row's fine centroid lies in the group of its nearest kept coarse centroid
    groups, _ = nearest_centroid(x, routed.coarse)
    assert ((lab >= routed.offsets[groups]) & (lab < routed.offsets[groups + 1])).all()


def test_the_public_api_checks_n_coarse_and_names_the_level():
    from lakecurate import HierarchicalKMeans
    from lakecurate.errors import ConfigError

    x = _mixture(600)
    with pytest.raises(ConfigError, match=r"n_coarse\[0\]=80 must be 0 \(one k-means\) or an integer in \[2, n_clusters\[0\]=80\)"):
        HierarchicalKMeans([80, 10], n_coarse=[80, 0]).fit(x)
    with pytest.raises(ConfigError, match="n_coarse has 3 entries but n_clusters has 2 levels"):
        HierarchicalKMeans([80, 10], n_coarse=[2, 0, 0]).fit(x)
