"""One default per setting (issue 31): a setting has the same default whether it comes from a
config section (lakecurate.config) or from the in-process API's keyword arguments."""

import dataclasses
import inspect

import pytest

from lakecurate import HierarchicalKMeans, balanced_sample, deduplicate, target_coreset
from lakecurate.config import ClusteringConfig, CoresetConfig, DedupConfig, SamplingConfig
from lakecurate.core.dedup import find_duplicates, find_increment_duplicates

PAIRS = [
    (DedupConfig, deduplicate),
    (DedupConfig, find_duplicates),
    (DedupConfig, find_increment_duplicates),
    (CoresetConfig, target_coreset),
    (ClusteringConfig, HierarchicalKMeans.__init__),
    (SamplingConfig, balanced_sample),
]

#: settings whose defaults differ on purpose, and why
DIFFERENT = {
    ("ClusteringConfig", "n_coarse"): "'auto' sizes a level against one Spark task's memory (clustering.task_memory); "
                                      "in process there is no task, and 0 (one k-means) is what 'auto' picks below it",
}


@pytest.mark.parametrize("config, api", PAIRS, ids=lambda o: getattr(o, "__qualname__", str(o)))
def test_the_config_and_the_api_share_their_defaults(config, api):
    params = inspect.signature(api).parameters
    fields = {f.name: f for f in dataclasses.fields(config)}
    shared = [name for name in fields if name in params and params[name].default is not inspect.Parameter.empty]
    assert shared, f"{config.__name__} and {api.__qualname__} share no setting"
    for name in shared:
        if (config.__name__, name) in DIFFERENT:
            continue
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        api_default = params[name].default
        if isinstance(default, list):
            default = tuple(default)
        if isinstance(api_default, list):
            api_default = tuple(api_default)
        assert default == api_default, f"{config.__name__}.{name} defaults to {default!r} but {api.__qualname__} to {api_default!r}"


def test_dedup_compares_across_a_cluster_boundary_by_default():
    """conf/dedup.yaml says 1; a dedup section added to any other config must not silently say 0."""
    assert DedupConfig().n_neighbor_clusters == 1
