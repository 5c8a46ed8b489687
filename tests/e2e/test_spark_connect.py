"""Spark Connect: the same runs on a Connect session give the same tables as on a classic one.

One child process starts a local Spark Connect server (``spark.remote=local[2]``, as
``SPARK_REMOTE=local[2]`` would) and runs, on that session:

* the bundled demo on a redundant pool (``conf/demo-redundant.yaml`` at a test's size:
  de-duplication, clustering, sampling and the report) with
  ``spark.block_cache=lake``: no ``cache()`` at all, as on serverless (``auto`` on a local Connect
  server, which can cache, resolves to the block files of a classic session: checked too);
* the embed stage on a text table (with rows it must reject);
* the coreset stage on those embeddings, its target a text table embedded by the stage itself;
* ``lakecurate shards`` on the curation run (its curated rows laid out by top-level cluster);
* a nightly run on the grown pool: incremental dedup, assign and top-up into the curation's tree.

The coreset's rows must equal those of the same run on the classic ``spark`` fixture. The curation's table digests (ids, paths, centroids, distances, duplicates: exact bits) are
compared with those a classic session gave (``pinned_demo.json``, "demo-redundant-e2e"); the
embeddings with the same embed run on the classic ``spark`` fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import make_texts
from digests import _sha, assert_pinned, run_digests

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.spark, pytest.mark.connect]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: the bundled demo on a redundant pool (dedup, cluster, sample, report), at a test's size
DEMO = ["input.synthetic.n=2500", "input.synthetic.dim=16", "input.synthetic.n_concepts=30", "input.synthetic.n_items=1000",
        "dedup.n_clusters=4", "dedup.n_iter=2", "clustering.n_clusters=[30, 6]", "clustering.n_iter=3",
        "clustering.resample_size=[1, 3]", "clustering.n_resampling_steps=1", "sampling.target_size=400", "spark.master=null"]


def curate_plan(lake_root: str, block_cache: str):
    return load_plan("demo-redundant", [*DEMO, f"lake.root={lake_root}", f"spark.block_cache={block_cache}"])


def grown_input(lake_root: str, folder: str) -> str:
    """The curation's pool plus 60 new rows as Parquet: 40 exact copies (scaled) of pool rows, 20 others."""
    pool = DeltaTable(os.path.join(lake_root, "pool")).to_pandas(columns=["id", "embedding"]).sort_values("id")
    x = np.stack(pool["embedding"].to_numpy()).astype(np.float32)
    rng = np.random.default_rng(2)
    new = np.concatenate([2.0 * x[:40], x[100:120] + 0.5 * rng.standard_normal((20, x.shape[1]))]).astype(np.float32)
    ids = np.r_[pool["id"].to_numpy(np.int64), 1_000_000 + np.arange(60, dtype=np.int64)]
    os.makedirs(folder, exist_ok=True)
    from lakecurate.spark.arrow import matrix_to_list_array

    pq.write_table(pa.table({"id": pa.array(ids), "embedding": matrix_to_list_array(np.concatenate([x, new]))}),
                   os.path.join(folder, "part-0.parquet"))
    return folder


def two_step_plan(lake_root: str, extra=()):
    """Two steps at both levels, level 2 on the executors too: the group and cogroup passes."""
    return load_plan("demo-redundant", [*DEMO, *extra, f"lake.root={lake_root}", "stages=[cluster,sample]", "report.label_column=null",
                                        "clustering.n_coarse=[3,2]", "clustering.driver_max_rows=10", "spark.block_cache=lake"])


def nightly_plan(lake_root: str, grown: str, extra=()):
    """The curation's config as a nightly run on the grown input: incremental dedup, assign, top-up."""
    return load_plan("demo-redundant", [*DEMO, *extra, f"lake.root={lake_root}", "stages=[dedup,assign,sample]", "dedup.mode=incremental",
                                        "sampling.mode=top_up", "sampling.target_size=420", "report.label_column=null",
                                        "input.format=parquet", f"input.path={grown}", "spark.block_cache=lake"])


def embed_config(lake_root: str, source: str) -> dict:
    return {
        "name": "connect-embed", "run_id": "embed", "lake": {"root": lake_root},
        "embed": {"source": {"format": "parquet", "path": source}, "batch_rows": 64},
        "spark": {"block_cache": "lake"},
    }


def coreset_config(lake_root: str, pool: str, source: str, target: str) -> dict:
    return {
        "name": "connect-coreset", "run_id": "coreset", "stages": ["coreset"], "lake": {"root": lake_root},
        "input": {"format": "delta", "path": pool},
        "embed": {"source": {"format": "parquet", "path": source}, "batch_rows": 64},
        "coreset": {"target_source": {"format": "parquet", "path": target}, "n_centroids": 4, "patience": 3},
        "spark": {"block_cache": "lake"},
    }


def coreset_rows(lake_root: str) -> list:
    df = DeltaTable(os.path.join(lake_root, "coreset")).to_pandas().sort_values("id")
    return [[int(r.id), int(r.centroid), float(r.similarity), int(r.round)] for r in df.itertuples()]


def embeddings_digest(lake_root: str) -> dict:
    emb = DeltaTable(os.path.join(lake_root, "embeddings")).to_pandas().sort_values("id")
    rej = DeltaTable(os.path.join(lake_root, "rejects")).to_pandas()
    return {"rows": len(emb), "ids": _sha(emb["id"].to_numpy(np.int64)),
            "vectors": _sha(np.stack(emb["embedding"].to_numpy()).astype(np.float32)),
            "rejects": sorted(str(r) for r in rej["reason"])}


CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from test_spark_connect import (DEMO, coreset_config, coreset_rows, curate_plan, embed_config, embeddings_digest, grown_input, nightly_plan,
                                two_step_plan)
from digests import run_digests
from lakecurate.pipeline import run
from lakecurate.plan import load_plan
from lakecurate.spark.cache import resolve
from lakecurate.spark.session import get_spark, is_connect

spark = get_spark(None, "connect-test", {"spark.sql.shuffle.partitions": "4"}, remote="local[2]")
assert is_connect(spark), type(spark)
out = {"auto_resolves_to": resolve(spark, "auto"), "root": f"{sys.argv[2]}/curate"}
root = f"{sys.argv[2]}/curate"
res = run(curate_plan(root, "lake"), spark=spark)
out["lake"] = {"digests": run_digests(root, res.run_id), "report": res.report, "block_cache": res.stages["cluster"]["block_cache"],
               "html_report": res.html_report, "html_report_error": res.html_report_error}
NO_HTML = ["report.html=false"]  # the curation run above wrote its HTML report on Connect; the others need not
res = run(load_plan("demo-redundant", [*DEMO, *NO_HTML, f"lake.root={root}", "spark.block_cache=lake", "shards.payload_columns=[concept]"],
                    alone="shards"), spark=spark)
out["shards"] = {"run_id": res.run_id, "skipped": res.skipped, "metrics": res.stages["shards"]}
res = run(nightly_plan(root, grown_input(root, f"{sys.argv[2]}/grown"), NO_HTML), spark=spark)
out["nightly"] = {"run_id": res.run_id, "stages": res.stages}
res = run(two_step_plan(f"{sys.argv[2]}/twostep", NO_HTML), spark=spark)
out["two_step"] = {"digests": run_digests(f"{sys.argv[2]}/twostep", res.run_id), "levels": res.stages["cluster"]["levels"]}
res = run(load_plan(data=embed_config(f"{sys.argv[2]}/embed", sys.argv[3]), overrides=NO_HTML, alone="embed"), spark=spark)
out["embed"] = {"digest": embeddings_digest(f"{sys.argv[2]}/embed"), "metrics": {k: res.stages["embed"][k] for k in ("embedded", "rejected")}}
cfg = coreset_config(f"{sys.argv[2]}/coreset", f"{sys.argv[2]}/embed/embeddings", sys.argv[3], sys.argv[4])
res = run(load_plan(data=cfg, overrides=NO_HTML), spark=spark)
out["coreset"] = {"rows": coreset_rows(f"{sys.argv[2]}/coreset"), "metrics": res.stages["coreset"]}
print("RESULT " + json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def text_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("connect-src")
    texts = make_texts(40, seed=4) + [None, "  "]
    pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string())}), path / "part-0.parquet")
    return str(path)


@pytest.fixture(scope="module")
def target_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("connect-target")
    texts = make_texts(12, seed=9)
    pq.write_table(pa.table({"id": pa.array(range(100, 112), pa.int64()), "text": pa.array(texts, pa.string())}), path / "part-0.parquet")
    return str(path)


@pytest.fixture(scope="module")
def connect_results(tmp_path_factory, text_source, target_source):
    out = tmp_path_factory.mktemp("connect")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "lib"), os.path.join(ROOT, "tests")])}
    env.pop("SPARK_REMOTE", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, os.path.join(ROOT, "tests", "e2e"), str(out), text_source, target_source],
                          capture_output=True, text=True, env=env, timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-4000:]
    return json.loads(line[0][len("RESULT "):])


def test_curation_on_spark_connect_without_a_cache_equals_classic(connect_results):
    """The tables equal, bit for bit, those a classic session gave for this config (pinned by
    ``scripts/pin_demo.py --pin``; ``make pin-demo`` re-checks the classic side)."""
    with open(os.path.join(os.path.dirname(__file__), "pinned_demo.json")) as f:
        classic = json.load(f)["demo-redundant-e2e"]
    assert set(classic) == {"level_1", "level_2", "assignments", "curated", "duplicates"}
    assert connect_results["lake"]["block_cache"] == "lake"  # staged in the lake, re-read every pass
    assert_pinned(connect_results["lake"]["digests"], "demo-redundant-e2e")
    report = connect_results["lake"]["report"]
    assert report["curated"]["n"] == 400 and report["deduplicated"]["n"] < report["pool"]["n"] == 2500
    # the HTML report at the end of the run, written on the Connect client through delta-rs
    assert connect_results["lake"]["html_report_error"] is None
    page = connect_results["lake"]["html_report"]
    assert page.endswith("/index.html") and 'id="dedup"' in open(page, encoding="utf-8").read()
    assert connect_results["auto_resolves_to"] == "local_files"  # a Connect server that can cache


def test_shards_on_spark_connect(connect_results, tmp_path_factory):
    """``lakecurate shards`` on the Connect session: the run's curated rows, each in its top-level shard, with its concept."""
    shards = connect_results["shards"]
    assert {"cluster", "sample"} <= set(shards["skipped"]) and shards["metrics"]["rows"] == 400
    root = connect_results["root"]
    run_id = shards["run_id"]
    got = DeltaTable(os.path.join(root, "shards")).to_pandas().sort_values("id")
    curated = DeltaTable(os.path.join(root, "curated")).to_pandas()
    curated = curated[curated["run_id"] == run_id].sort_values("id")
    pool = DeltaTable(os.path.join(root, "pool")).to_pandas().set_index("id")
    np.testing.assert_array_equal(got["id"], curated["id"])
    np.testing.assert_array_equal(got["shard"], np.stack(curated["path"].to_numpy())[:, 1])
    np.testing.assert_array_equal(got["concept"], pool.loc[got["id"], "concept"])
    assert shards["metrics"]["n_shards"] == got["shard"].nunique()


def test_a_nightly_increment_on_spark_connect(connect_results):
    """Incremental dedup, assign and top-up on the Connect session: the 40 copies of pool rows go,
    pointing at the tree's rows; the rest join the tree; the top-up changes only what the quotas force."""
    m = connect_results["nightly"]["stages"]
    root = connect_results["root"]
    dedup, assign, sample = m["dedup"], m["assign"], m["sample"]
    assert dedup["mode"] == "incremental" and dedup["new_rows"] == 60 and dedup["removed_as_old"] >= 40
    tree = assign["tree_run_id"]
    dups = DeltaTable(os.path.join(root, "duplicates")).to_pandas()
    mine = dups[dups["run_id"] == connect_results["nightly"]["run_id"]].set_index("id")
    assert set(range(1_000_000, 1_000_040)) <= set(mine.index)
    assigned = set(DeltaTable(os.path.join(root, "assignments")).to_pandas().query("run_id == @tree")["id"])
    assert set(mine.loc[list(range(1_000_000, 1_000_040)), "kept_id"]) <= assigned
    assert assign["new_rows"] == 60 - dedup["removed"] and not set(mine.index) & assigned
    assert sample["added"] - sample["dropped"] == 20 and sample["previous_run_id"] == tree
    # the tree was fitted on the generated pool, not this folder: the whole folder is read, saying why
    # (the increment read on a Connect engine: tests/e2e/test_sail_native.py)
    assert dedup["input_read"]["read"] == assign["input_read"]["read"] == "whole"
    assert "no run of the tree" in assign["input_read"]["why"], assign["input_read"]


def test_two_step_levels_on_spark_connect_equal_classic(spark, tmp_path, connect_results):
    """The two-step passes (groups by coarse cluster, cogroups with each group's fine centroids) on
    Connect give the tables a classic session gives, bit for bit."""
    got = connect_results["two_step"]
    assert [lv["coarse_clusters"] for lv in got["levels"]] == [3, 2]
    root = str(tmp_path / "classic")
    res = run(two_step_plan(root, ["report.html=false"]), spark=spark)
    assert run_digests(root, res.run_id) == got["digests"]


def test_embedding_on_spark_connect_equals_classic(spark, tmp_path, text_source, connect_results):
    root = str(tmp_path / "classic-embed")
    res = run(load_plan(data=embed_config(root, text_source), alone="embed"), spark=spark)
    assert {k: res.stages["embed"][k] for k in ("embedded", "rejected")} == connect_results["embed"]["metrics"] == {"embedded": 40, "rejected": 2}
    assert embeddings_digest(root) == connect_results["embed"]["digest"]


def test_a_coreset_on_spark_connect_with_a_target_it_embeds_equals_classic(spark, tmp_path, text_source, target_source,
                                                                            connect_results):
    root = str(tmp_path / "classic")
    run(load_plan(data=embed_config(root, text_source), alone="embed"), spark=spark)
    res = run(load_plan(data=coreset_config(root, os.path.join(root, "embeddings"), text_source, target_source)), spark=spark)
    m = connect_results["coreset"]["metrics"]
    assert m["n_pool"] == 40 and m["n_target"] == 12 and m["target_embedded"] == 12 and m["n_centroids"] == 4
    assert m["target_models"] == res.stages["coreset"]["target_models"] and len(m["target_models"]) == 1
    assert 0 < m["selected"] <= 40
    assert coreset_rows(root) == connect_results["coreset"]["rows"]
    assert {k: res.stages["coreset"][k] for k in ("stop_reason", "utilities", "selected")} == {k: m[k] for k in ("stop_reason", "utilities", "selected")}
