"""Vectors a metric cannot take are refused by name in the in-process API, never clustered silently:
zero (and sub-normal) rows under cosine, squared norms that leave float32's range under l2."""

from __future__ import annotations

import numpy as np
import pytest

from lakecurate import HierarchicalKMeans, target_coreset
from lakecurate.errors import InputDataError
from lakecurate.validation import F32_SQUARED_NORM_MAX, F32_TINY, unusable_rows


def pool(n=400, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_zero_rows_under_cosine_are_refused_with_their_count_and_rows():
    x = pool()
    x[[5, 17, 300]] = 0
    with pytest.raises(InputDataError, match=r"X has 3 row\(s\) that metric='cosine' cannot take: 3 with zero vector.*rows \[5, 17, 300\]"):
        HierarchicalKMeans([10, 3], n_iter=2, metric="cosine").fit(x)


def test_zero_rows_are_points_under_l2():
    x = pool()
    x[[5, 17]] = 0
    fit = HierarchicalKMeans([10, 3], n_iter=2, metric="l2").fit(x)
    assert fit.labels_.shape == (400,)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_squared_norms_outside_float32_are_refused(metric):
    big = pool() * np.float32(1e20)  # squares ~1e40: beyond float32, though every value is finite
    with pytest.raises(InputDataError, match=r"400 row\(s\).*squared norm above"):
        HierarchicalKMeans([10, 3], n_iter=2, metric=metric).fit(big)
    tiny = pool() * np.float32(1e-30)  # squares ~1e-60: every distance would round to 0 in float32
    with pytest.raises(InputDataError, match=r"400 row\(s\).*squared norm below float32's smallest normal value"):
        HierarchicalKMeans([10, 3], n_iter=2, metric=metric).fit(tiny)


def test_the_limits_are_where_float32_stops():
    d = 4
    at_max = np.full((1, d), np.sqrt(F32_SQUARED_NORM_MAX / d) * 0.999, np.float32)
    over = np.full((1, d), np.sqrt(F32_SQUARED_NORM_MAX / d) * 1.001, np.float32)
    assert unusable_rows(at_max, "l2") == {}
    assert list(unusable_rows(over, "l2")) and np.isfinite(over).all()
    # the largest legal squared norm keeps the squared distance of two opposite rows finite in float32
    assert np.isfinite(np.sum((at_max - (-at_max)) ** 2, dtype=np.float32))
    at_tiny = np.full((1, d), np.sqrt(F32_TINY / d) * 1.001, np.float32)
    under = np.full((1, d), np.sqrt(F32_TINY / d) * 0.5, np.float32)
    assert unusable_rows(at_tiny, "cosine") == {}
    assert list(unusable_rows(under, "cosine"))


def test_the_coreset_refuses_zero_rows_in_pool_and_target():
    x = pool()
    t = pool(20, seed=1)
    x[7] = 0
    with pytest.raises(InputDataError, match=r"pool has 1 row\(s\).*zero vector.*rows \[7\]"):
        target_coreset(x, t, n_centroids=5)
    x[7] = 1
    t[3] = 0
    with pytest.raises(InputDataError, match=r"target has 1 row\(s\).*zero vector.*rows \[3\]"):
        target_coreset(x, t, n_centroids=5)
