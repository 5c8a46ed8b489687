"""Bad input to the pure API: clear errors that name the value and where."""

import numpy as np
import pytest

from lakecurate import ConfigError, HierarchicalKMeans, InputDataError


def x(n=50, d=4):
    return np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)


def test_nan_and_inf_name_the_row():
    a = x()
    a[17, 2] = np.nan
    with pytest.raises(InputDataError, match="first at row 17"):
        HierarchicalKMeans([3]).fit(a)
    a = x()
    a[3, 0] = np.inf
    with pytest.raises(InputDataError, match="NaN or infinite.*row 3"):
        HierarchicalKMeans([3]).fit(a)


def test_values_that_overflow_float32_are_caught():
    a = x().astype(np.float64)
    a[5, 1] = 1e300
    with pytest.raises(InputDataError, match="row 5"):
        HierarchicalKMeans([3]).fit(a)


def test_ragged_rows_and_wrong_shapes():
    with pytest.raises(InputDataError, match="different lengths"):
        HierarchicalKMeans([2]).fit([[1.0, 2.0], [1.0]])
    with pytest.raises(InputDataError, match="2-D"):
        HierarchicalKMeans([2]).fit(np.zeros(10))
    with pytest.raises(InputDataError, match="empty"):
        HierarchicalKMeans([2]).fit(np.zeros((0, 3)))


def test_more_clusters_than_inputs_names_the_level():
    with pytest.raises(InputDataError, match=r"n_clusters\[0\]=60 \(level 1\) is more than the 50 rows"):
        HierarchicalKMeans([60]).fit(x())


def test_levels_must_not_grow():
    with pytest.raises(ConfigError, match="level 2 has 10 > level 1's 5"):
        HierarchicalKMeans([5, 10]).fit(x())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metric": "manhattan"}, "metric='manhattan'"),
        ({"init": "kmeans||"}, "init='kmeans||'"),
        ({"n_iter": 0}, "n_iter=0 must be an integer >= 1"),
        ({"resample_size": [1, 2, 3]}, "resample_size has 3 entries but n_clusters has 2"),
        ({"n_resampling_steps": -1}, "n_resampling_steps=-1 must be an integer >= 0"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("|", r"\|")):
        HierarchicalKMeans([4, 2], **kwargs).fit(x())


def test_zero_clusters():
    with pytest.raises(ConfigError, match=r"n_clusters\[0\]=0 must be an integer >= 1"):
        HierarchicalKMeans([0]).fit(x())
