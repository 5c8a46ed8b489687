"""Any valid path works: spaces, non-ASCII, ``%``, ``=`` and ``#`` in the lake root, the staging
folder and the inputs, on the Spark side and the delta-rs side alike."""

from __future__ import annotations

import os

import numpy as np
import pytest
from deltalake import DeltaTable, write_deltalake

from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import embeddings_table, save_npy
from digests import run_digests

pytestmark = pytest.mark.spark

#: one folder name with every character that has a meaning in a URI, a Hive partition path or a shell
ODD = "sp ace ü% a=b #x"


def config(root, staging, input_cfg) -> dict:
    return {"name": "paths", "stages": ["cluster", "sample"], "lake": {"root": str(root), "staging": str(staging)},
            "input": input_cfg,
            "clustering": {"n_clusters": [12, 3], "n_iter": 3, "n_resampling_steps": 1, "resample_size": [1, 2], "seed": 2},
            "sampling": {"target_size": 100}, "spark": {"partitions": 2, "block_cache": "spark"}}


def test_odd_characters_in_every_path_give_the_plain_paths_tables(spark, tmp_path):
    """A Delta input (three versions, deleted rows), the lake
    root and the staging folder all under a folder with every odd character: the same tables as
    under plain names."""
    x = np.random.default_rng(4).normal(size=(500, 6)).astype(np.float32)
    results = {}
    for kind, folder in (("plain", tmp_path / "plain"), ("odd", tmp_path / ODD / ODD)):
        folder.mkdir(parents=True)
        source = folder / "pool"
        write_deltalake(str(source), embeddings_table(x))
        write_deltalake(str(source), embeddings_table(x[:10] * 0 + 1, ids=np.arange(10_000, 10_010)), mode="append")
        DeltaTable(str(source)).delete("id >= 10000")  # a third version whose live rows are the first's
        res = run(load_plan(data=config(folder / "lake", folder / "staging", {"format": "delta", "path": str(source)})), spark=spark)
        results[kind] = run_digests(str(folder / "lake"), res.run_id)
        assert os.path.isdir(folder / "lake" / "curated")
    assert results["odd"] == results["plain"]
    assert results["odd"]["curated"]["rows"] == 100
    # an input that is staged (a .npy copied to Parquet under the odd staging folder) reads the same rows
    npy = run(load_plan(data=config(tmp_path / ODD / "lake-npy", tmp_path / ODD / "staging-npy",
                                    {"format": "npy", "path": save_npy(tmp_path / ODD, x)})), spark=spark)
    assert run_digests(str(tmp_path / ODD / "lake-npy"), npy.run_id)["curated"]["rows"] == 100


def test_a_location_delta_rs_would_misread_is_refused_by_name_before_anything_is_written(spark, tmp_path):
    from lakecurate.errors import TableError

    x = np.random.default_rng(4).normal(size=(50, 6)).astype(np.float32)
    folder = tmp_path / "a%20b"
    folder.mkdir()
    cfg = config(folder / "lake", folder / "staging", {"format": "npy", "path": save_npy(tmp_path, x)})
    with pytest.raises(TableError, match=r"lake.root=.*a%20b/lake.*cannot read a table whose location holds '%20'"):
        run(load_plan(data=cfg), spark=spark)
    assert not os.path.exists(folder / "lake")
