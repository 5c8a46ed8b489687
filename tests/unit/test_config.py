"""Config loading: typed, validated, errors that name the dotted key and value."""

import os

import pytest

from lakecurate.config import RunConfig, apply_overrides, load_config
from lakecurate.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(data=None, overrides=()):
    base = {"input": {"format": "npy", "path": "x.npy"}, "clustering": {"n_clusters": [10, 2]}}
    base.update(data or {})
    return load_config(RunConfig, data=base, overrides=list(overrides))


def test_every_shipped_config_loads():
    for name in os.listdir(os.path.join(ROOT, "conf")):
        if name.endswith(".yaml"):
            cfg = load_config(RunConfig, os.path.join(ROOT, "conf", name))
            assert cfg.run_id


def test_overrides_are_parsed_as_yaml():
    cfg = load(overrides=["sampling.target_size=123", "clustering.n_clusters=[8, 4]", "lake.database=null"])
    assert cfg.sampling.target_size == 123
    assert cfg.clustering.n_clusters == [8, 4]
    assert cfg.lake.database is None


def test_run_id_is_stable_for_the_same_config_and_changes_with_it():
    assert load().run_id == load().run_id
    assert load().run_id != load(overrides=["sampling.target_size=7"]).run_id
    # Spark tuning does not change the result, so not the run id either
    assert load().run_id == load(overrides=["spark.partitions=16"]).run_id


@pytest.mark.parametrize(
    "override, message",
    [
        ("clustering.n_clustrs=[3]", "unknown config key clustering.n_clustrs"),
        ("bogus=1", "unknown config key bogus"),
        ("sampling.strategy=nearest", "sampling.strategy='nearest' is not one of"),
        ("sampling.target_size=0", "sampling.target_size=0 must be an integer >= 1"),
        ("sampling.target_size=abc", "sampling.target_size must be an integer; got 'abc'"),
        ("clustering.metric=dot", "clustering.metric='dot'"),
        ("clustering.n_clusters=[2, 10]", "level 2 has 10 > level 1's 2"),
        ("clustering.resample_size=[1, 2, 3]", "clustering.resample_size has 3 entries"),
        ("input.format=csv", "input.format='csv' is not one of"),
        ("lake.backend=hive", "lake.backend='hive'"),
        ("stages=[sample, cluster]", "must keep the order"),
        ("stages=[cluster, bogus]", r"stages\[1\]='bogus'"),
        ("run_id=a/b", "run_id='a/b' must match"),
        ("input.synthetic.n=10", None),
    ],
)
def test_bad_values_name_key_and_value(override, message):
    if message is None:  # synthetic settings only validated with format=synthetic; loads fine
        load(overrides=[override])
        return
    with pytest.raises(ConfigError, match=message):
        load(overrides=[override])


def test_input_needs_a_path_unless_synthetic():
    with pytest.raises(ConfigError, match="set input.path"):
        load_config(RunConfig, data={"input": {"format": "delta"}})
    cfg = load_config(RunConfig, data={"input": {"format": "synthetic", "synthetic": {"n": 500, "n_concepts": 5}}})
    assert cfg.input.synthetic.n == 500


def test_missing_config_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(RunConfig, str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_overrides({}, ["sampling.target_size"])
