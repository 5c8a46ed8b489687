"""Config loading and planning: typed, validated, frozen; errors that name the dotted key and value."""

import dataclasses
import os

import pytest

from lakecurate.config import RunConfig, apply_overrides, load_config
from lakecurate.errors import ConfigError
from lakecurate.plan import load_plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(data=None, overrides=()):
    base = {"input": {"format": "npy", "path": "x.npy"}, "clustering": {"n_clusters": [10, 2]}}
    base.update(data or {})
    return load_plan(data=base, overrides=list(overrides))


def test_every_shipped_config_loads():
    for name in os.listdir(os.path.join(ROOT, "conf")):
        if name.endswith(".yaml"):
            plan = load_plan(os.path.join(ROOT, "conf", name))
            assert plan.run_id and plan.stages


def test_overrides_are_parsed_as_yaml():
    cfg = load(overrides=["sampling.target_size=123", "clustering.n_clusters=[8, 4]", "lake.database=null"]).config
    assert cfg.sampling.target_size == 123
    assert cfg.clustering.n_clusters == (8, 4)
    assert cfg.lake.database is None


def test_config_is_frozen_and_validation_stores_nothing():
    cfg = load_config(RunConfig, data={"input": {"format": "npy", "path": "x.npy"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sampling.target_size = 5
    assert cfg.run_id is None  # derived values live on the plan
    before = dataclasses.asdict(cfg)
    cfg.validate()
    assert dataclasses.asdict(cfg) == before
    assert {f.name for f in dataclasses.fields(cfg.clustering)} == set(vars(cfg.clustering))


def test_run_id_is_stable_for_the_same_config_and_changes_with_it():
    assert load().run_id == load().run_id
    assert load().run_id != load(overrides=["sampling.target_size=7"]).run_id
    # Spark tuning does not change the result, so not the run id either; nor where inputs are staged
    assert load().run_id == load(overrides=["spark.partitions=16"]).run_id
    assert load().run_id == load(overrides=["lake.staging=/somewhere/else"]).run_id


def test_plan_resolves_levels_stages_and_tables():
    plan = load(overrides=["clustering.resample_size=[1, 3]", "clustering.metric=cosine", "report.label_column=c"])
    assert [p.n_clusters for p in plan.levels] == [10, 2]
    assert [p.resample_size for p in plan.levels] == [1, 3] and all(p.spherical for p in plan.levels)
    assert plan.stage_names == ["cluster", "sample", "report"]  # the report runs when a label column is set
    assert plan.tables() == ["assignments", "clusters", "coarse_clusters", "curated", "label_counts"]
    alone = load_plan(os.path.join(ROOT, "conf", "embed-text.yaml"), alone="embed")
    assert alone.stage_names == ["embed"] and alone.tables() == ["embeddings", "rejects"]
    assert alone.run_id.startswith("texts-embed-")  # a fresh run each time it runs alone
    assert alone.encoder is not None and alone.encoder.normalize


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
        ("clustering.level1_coarse_clusters=10", r"clustering.level1_coarse_clusters is gone: write clustering.n_coarse: \[C, 0, ...\]"),
        ("clustering.n_coarse=[10, 0]", r"clustering.n_coarse\[0\]=10 must be 'auto', 0 \(one k-means\) or an integer in \[2, n_clusters\[0\]=10\)"),
        ("clustering.n_coarse=[3, 0, 0]", "clustering.n_coarse has 3 entries but n_clusters has 2 levels"),
        ("clustering.n_coarse=often", r"clustering.n_coarse\[0\]='often' must be 'auto'"),
        ("clustering.task_memory=lots", "clustering.task_memory='lots' must be a size such as 4g"),
        ("dedup.eps=0", r"dedup.eps=0.0 must be in \(0, 1\]"),
        ("input.format=csv", "input.format='csv' is not one of"),
        ("lake.backend=hive", "lake.backend='hive'"),
        ("spark.block_cache=disk", "spark.block_cache='disk' is not one of"),
        ("stages=[sample, cluster]", "must keep the order"),
        ("stages=[cluster, bogus]", r"stages\[1\]='bogus'"),
        ("stages=[cluster, report]", r"stages\[1\]='report'"),  # automatic, never listed
        ("stages=[embed, cluster]", "stages include 'embed' but the config has no embed section"),
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


def test_input_needs_a_path_unless_synthetic_or_embedded():
    with pytest.raises(ConfigError, match="set input.path"):
        load_plan(data={"input": {"format": "delta"}})
    plan = load_plan(data={"input": {"format": "synthetic", "synthetic": {"n": 500, "n_concepts": 5}}})
    assert plan.config.input.pool.n == 500
    assert load_plan(data={"input": {"format": "synthetic"}}).config.input.pool.n == 100_000  # the defaults
    # a run whose embed stage makes the input does not read input.path
    load_plan(data={"stages": ["embed", "cluster"], "embed": {"source": {"path": "texts"}}})


def test_missing_config_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_plan(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_overrides({}, ["sampling.target_size"])


def test_config_imports_no_curation_code():
    """config.py (and what it imports from lakecurate) is plain data and checks: no core, estimator, stage or Spark code."""
    import ast

    lib = os.path.join(ROOT, "lib")
    seen, todo = set(), ["lakecurate.config"]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        tree = ast.parse(open(os.path.join(lib, *mod.split(".")) + ".py").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lakecurate."):
                todo.append(node.module)
    assert seen == {"lakecurate.config", "lakecurate.errors", "lakecurate.validation", "lakecurate.embed.spec"}, seen


@pytest.mark.parametrize("eps", [0, -0.1, 1.5, float("nan"), "big"])
def test_dedup_eps_out_of_range_is_a_config_error(eps):
    with pytest.raises(ConfigError, match="dedup.eps"):
        load_plan(data={"stages": ["dedup", "cluster", "sample"], "input": {"format": "synthetic"}, "dedup": {"eps": eps}})


def test_embed_config_is_validated_at_load_time(tmp_path):
    def embed(source, encoder=None):
        return load_plan(data={"lake": {"root": str(tmp_path)}, "embed": {"source": source, "encoder": encoder or {}}}, alone="embed")

    with pytest.raises(ConfigError, match="embed: encoder.batch_size=0"):
        embed({"format": "parquet", "path": "x"}, {"batch_size": 0})
    with pytest.raises(ConfigError, match="reads image files but encoder kind 'text'"):
        embed({"format": "files", "path": "x"})
    with pytest.raises(ConfigError, match="unknown config key embed.source.colum"):
        embed({"format": "parquet", "path": "x", "colum": "t"})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["coreset.budget=0"], r"coreset.budget=0 must be an integer >= 1"),
        (["coreset.budget=-5"], r"coreset.budget=-5 must be an integer >= 1"),
        (["coreset.n_centroids=0"], r"coreset.n_centroids=0 must be an integer >= 1"),
        (["coreset.stop_threshold=1.2"], r"coreset.stop_threshold=1.2 must be in \[0, 1\]"),
        (["coreset.patience=0"], r"coreset.patience=0 must be an integer >= 1"),
        (["coreset.target=null"], r"give the target set as one of coreset.target"),
        (["coreset.target_source.path=/t"], r"both are set"),
        (["coreset.target.format=synthetic"], r"coreset.target.format='synthetic' is not a target"),
        (["coreset.target.path=null"], r"set coreset.target.path"),
        (["coreset=null"], "stages include 'coreset' but the config has no coreset section"),
    ],
)
def test_coreset_settings_are_checked_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_plan(os.path.join(ROOT, "conf", "coreset.yaml"), overrides)


def test_coreset_then_balanced_curation_plans_in_stage_order():
    plan = load_plan(os.path.join(ROOT, "conf", "coreset.yaml"), ["stages=[dedup, coreset, cluster, sample]"])
    assert plan.stage_names == ["dedup", "coreset", "cluster", "sample"]
    assert "coreset" in plan.tables()
    with pytest.raises(ConfigError, match="must keep the order"):
        load_plan(os.path.join(ROOT, "conf", "coreset.yaml"), ["stages=[cluster, coreset]"])


def test_a_coreset_section_outside_its_stage_leaves_the_run_id_alone():
    base = load_plan(os.path.join(ROOT, "conf", "demo.yaml"))
    with_section = load_plan(os.path.join(ROOT, "conf", "demo.yaml"), ["coreset.target.path=/t.parquet", "coreset.target.format=parquet"])
    assert with_section.run_id == base.run_id == "demo-fb41240049"  # the demo's run id since before the coreset stage


def test_the_shards_stage_keeps_the_run_id_and_its_command_adds_it():
    demo = os.path.join(ROOT, "conf", "demo.yaml")
    base = load_plan(demo)
    listed = load_plan(demo, ["stages=[cluster,sample,shards]", "shards.level=2"])
    command = load_plan(demo, alone="shards")
    assert base.run_id == listed.run_id == command.run_id == "demo-fb41240049"
    assert command.stage_names == ["cluster", "sample", "shards", "report"]
    assert listed.stage_fingerprints["sample"] == base.stage_fingerprints["sample"]  # cluster and sample resume
    assert listed.stage_fingerprints["shards"] != command.stage_fingerprints["shards"]  # another level reruns shards


def test_the_html_report_switch_changes_no_run_id_and_no_stage():
    """report.html only says whether a page is written beside the tables: the run and its stages stay."""
    on = load(overrides=["report.label_column=c"])
    off = load(overrides=["report.label_column=c", "report.html=false"])
    assert on.run_id == off.run_id and on.stage_fingerprints == off.stage_fingerprints
    assert on.config.report.html is True and off.config.report.html is False
    with pytest.raises(ConfigError, match="report.html"):
        load(overrides=["report.html=maybe"])
