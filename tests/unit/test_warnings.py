"""Degraded but valid results warn (a LakecurateWarning subclass callers can catch) and log."""

import logging
import warnings

import numpy as np
import pytest

from lakecurate import HierarchicalKMeans
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.errors import ClusteringWarning, LakecurateWarning


def test_fewer_distinct_points_than_clusters_warns_and_logs(caplog):
    x = np.repeat(np.random.default_rng(0).normal(size=(5, 3)), 4, axis=0).astype(np.float32)  # 5 distinct points
    with caplog.at_level(logging.WARNING), pytest.warns(ClusteringWarning) as record:
        HierarchicalKMeans([8], n_iter=5).fit(x)
    messages = [str(w.message) for w in record]
    assert any("re-seeded" in m for m in messages)
    assert any("of 8 clusters are empty after the final assignment" in m for m in messages)
    assert any("clusters are empty" in r.getMessage() for r in caplog.records)  # the log says it too


def test_resampling_that_runs_out_of_points_warns():
    x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)  # 3 distinct points
    # at most 2 points near each of the (at most 3) non-empty clusters: fewer than k = 8, so it stops
    with pytest.warns(ClusteringWarning) as record:  # also: empty and re-seeded clusters
        HierarchicalKMeans([8], resample_size=2, n_resampling_steps=3, n_iter=3).fit(x)
    assert any("resampling stopped after 0 of 3 steps" in str(w.message) for w in record)


def test_a_clean_fit_does_not_warn():
    x = long_tailed_pool(3000, 8, 20, seed=2).x
    with warnings.catch_warnings():
        warnings.simplefilter("error", LakecurateWarning)
        HierarchicalKMeans([30, 5], resample_size=[3, 2], n_resampling_steps=1, n_iter=5).fit(x)


def test_a_level_where_one_cluster_holds_most_points_warns():
    # a tight ball of 1000 points and 3 far outliers: any 3-means gives the ball one cluster (99.7%)
    rng = np.random.default_rng(1)
    x = np.concatenate([0.01 * rng.standard_normal((1000, 4)), 50 * np.eye(4)[:3]]).astype(np.float32)
    with pytest.warns(ClusteringWarning) as record:
        HierarchicalKMeans([3], n_iter=5).fit(x)
    assert any("level 1: one of its 3 clusters holds 100% of the data points" in str(w.message) for w in record), \
        [str(w.message) for w in record]
