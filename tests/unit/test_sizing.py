"""The sizing model: refusals name the level and the fix, ``auto`` picks two steps only where
memory requires it, and ``lakecurate plan`` prints the table and exits 1 for what cannot run."""

from __future__ import annotations

import pytest

from lakecurate.cli import main
from lakecurate.errors import ConfigError
from lakecurate.sizing import Hardware, parse_bytes, resolve_n_coarse, size_job

DINOV3 = [200_000_000, 8_000_000, 800_000, 100_000, 25_000]


@pytest.fixture(autouse=True)
def _calibration_cache(tmp_path, monkeypatch):
    """``plan`` keeps its kernel rates per machine kind: here in the test's folder, not the home."""
    import lakecurate.sizing as sizing

    monkeypatch.setattr(sizing, "CALIBRATION_CACHE", str(tmp_path / "calibration.json"))
GIB = 1 << 30


def test_parse_bytes_reads_spark_sizes_and_names_a_bad_value():
    assert parse_bytes("4g", "k") == 4 * GIB and parse_bytes("512m", "k") == 512 << 20 and parse_bytes(1000, "k") == 1000
    assert parse_bytes("1.5GiB", "k") == int(1.5 * GIB)
    with pytest.raises(ConfigError, match="clustering.task_memory='four' must be a size"):
        parse_bytes("four", "clustering.task_memory")


def test_auto_stays_one_step_where_it_fits_and_splits_where_it_does_not():
    assert resolve_n_coarse("auto", 1000, 1_000_000, 384, on_executors=True, task_memory=4 * GIB) == (0, "")
    c, why = resolve_n_coarse("auto", 1_000_000, 100_000_000, 384, on_executors=True, task_memory=4 * GIB)
    assert 1000 <= c < 1_000_000 and "two-step" in why and "task_memory" in why
    assert resolve_n_coarse(7, 1000, 10_000, 8, on_executors=True, task_memory=GIB)[0] == 7
    assert resolve_n_coarse("auto", 1_000_000, 2_000_000, 384, on_executors=False, task_memory=GIB)[0] == 0  # the driver's
    c, why = resolve_n_coarse("auto", 20_000, 1_700_000, 128, on_executors=True, task_memory=4 * GIB)  # fits, but large
    assert c == 142 and "k=20,000 >= 10,000" in why
    # issue 33: at DINOv3's k = 200M nothing fits an 8g task; auto went on doubling to k - 1 (199,999,999)
    c, why = resolve_n_coarse("auto", 200_000_000, 17_000_000_000, 1024, on_executors=True, task_memory=8 * GIB)
    assert c == 14_143 and "the fewest FLOPs" in why and "no number of coarse clusters up to k/2 fits" in why
    assert resolve_n_coarse("auto", 200_000_000, 17_000_000_000, 1024, on_executors=True, task_memory=32 * GIB)[0] == 56_572  # fits
    for k in (10_000, 1_000_000, 50_000_000):  # whatever it picks, never more than k/2
        assert resolve_n_coarse("auto", k, 100 * k, 256, on_executors=True, task_memory=GIB)[0] <= k // 2


def test_one_step_that_cannot_fit_a_task_is_refused_with_the_level_and_the_fix():
    size = size_job(10_000_000, 384, [1_000_000, 1000], n_coarse=[0, 0], hardware=Hardware(executors=10, cores=8, driver_memory=64 * GIB))
    assert [p.level for p in size.problems] == [1]
    text = str(size.problems[0])
    assert "one k-means with k=1,000,000" in text and "two-step at this level (clustering.n_coarse[0]" in text
    with pytest.raises(ConfigError, match="level 1: one k-means"):
        size.raise_if_impossible()
    auto = size_job(10_000_000, 384, [1_000_000, 1000], hardware=Hardware(executors=10, cores=8, driver_memory=64 * GIB))
    assert not auto.problems and auto.levels[0].n_coarse > 0 and auto.levels[1].n_coarse == 0
    assert auto.levels[0].flops_per_iteration < size.levels[0].flops_per_iteration / 100


def test_dinov3_at_full_scale_is_refused_for_the_driver_and_fits_scaled_down():
    full = size_job(17_000_000_000, 1024, DINOV3, resample_size=[1, 20, 8, 8, 4], n_iter=20,
                    hardware=Hardware(executors=400, cores=32, gpus=8, task_memory=64 * GIB, driver_memory=512 * GIB))
    assert full.problems and full.problems[0].level == 1 and "driver holds" in full.problems[0].message
    assert all(lv.n_coarse > 0 for lv in full.levels[:1])
    small = size_job(1_700_000, 128, [20_000, 800, 80, 10, 3], resample_size=[1, 20, 8, 4, 2], n_iter=20,
                     hardware=Hardware(task_memory=4 * GIB, driver_memory=16 * GIB))
    assert not small.problems
    assert small.levels[0].where == "executors" and all(lv.where == "driver" for lv in small.levels[1:])
    assert small.seconds > small.cache_seconds > 0


def test_lakecurate_plan_prints_the_table_and_refuses_what_cannot_run(capsys):
    assert main(["plan", "demo", "--rows", "200000", "--dim", "64"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 1,000 | 200,000 | executors | one |" in out and "GFLOP per iteration" in out and "CANNOT RUN" not in out
    assert main(["plan", "demo", "clustering.n_clusters=[200000,1000,50]", "clustering.n_coarse=[0,0,0]",
                 "--rows", "50000000", "--dim", "1024", "--task-memory", "64m"]) == 1
    out = capsys.readouterr().out
    assert "CANNOT RUN" in out and "level 1: one k-means with k=200,000" in out
    assert main(["plan", "demo", "--rows", "0"]) == 2
    assert "--rows=0 must be an integer >= 1" in capsys.readouterr().err


def test_plan_reads_rows_and_dim_from_every_input_run_reads_and_says_why(tmp_path, capsys):
    """Issue 31: ``plan`` refused a Delta input without --rows/--dim though ``run`` reads the count
    from the log; now Delta (log + first row), Parquet (footers + first row) and .npy all say it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    x = np.random.default_rng(0).normal(size=(3000, 24)).astype(np.float32)
    t = pa.table({"id": np.arange(3000), "vec": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 24).cast(pa.list_(pa.float32()))})
    write_deltalake(str(tmp_path / "d"), t.slice(0, 1000))
    write_deltalake(str(tmp_path / "d"), t.slice(1000), mode="append")
    (tmp_path / "p").mkdir()
    pq.write_table(t.slice(0, 1200), tmp_path / "p" / "a.parquet")
    pq.write_table(t.slice(1200), tmp_path / "p" / "b.parquet")
    np.save(tmp_path / "x.npy", x)
    common = ["clustering.n_clusters=[40,5]", "clustering.resample_size=[1,1]", f"lake.root={tmp_path / 'lake'}",
              "input.embedding_column=vec"]
    for fmt, path in (("delta", "d"), ("parquet", "p"), ("npy", "x.npy")):
        assert main(["plan", "demo", f"input.format={fmt}", f"input.path={tmp_path / path}", *common]) == 0
        out = capsys.readouterr().out
        assert "3,000 rows x 24 dims (from its metadata)" in out, (fmt, out)
        assert "| 1 | 40 | 3,000 | executors | one |" in out
        assert "level 1: on the executors: level 1 reads the whole input" in out
        assert "level 2: on the driver: est. " in out and " on the executors (" in out  # the plan's choice, with both times
        assert "time: " in out and "% of the estimate" in out
    # a --dim given wins; a path with nothing there is refused with what to give
    assert main(["plan", "demo", "input.format=delta", f"input.path={tmp_path / 'd'}", *common, "--dim", "48"]) == 0
    assert "x 48 float32" in capsys.readouterr().out
    assert main(["plan", "demo", "input.format=parquet", f"input.path={tmp_path / 'none'}", *common]) == 2
    err = capsys.readouterr().err
    assert "does not say its rows and dim from metadata" in err and "give --rows and --dim" in err


def test_plan_takes_options_and_overrides_in_any_order_and_measures_the_kernel_once_per_machine(tmp_path, capsys):
    """Issue 33: ``plan CONFIG --rows N key=value`` was refused ("unrecognized arguments"), and
    every call measured the kernel again."""
    args = ["plan", "demo", "--rows", "200000", "clustering.n_clusters=[300,20]", "--dim", "64", "clustering.resample_size=[1,2]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| 1 | 300 | 200,000 | executors | one |" in out  # the overrides after the options were applied
    assert f"kernel rates measured now (kept in {tmp_path / 'calibration.json'})" in out
    assert main(args) == 0
    assert "kernel rates measured on this machine at " in capsys.readouterr().out  # from the cache
    assert main([*args, "--recalibrate"]) == 0
    assert "kernel rates measured now" in capsys.readouterr().out
    assert main([*args[:2], "--dim", "128", *args[2:4]]) == 0  # another width: measured for it
    assert "kernel rates measured now" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["plan", "demo", "--rows", "10", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["runs", "a=b"])


def test_levels_2_to_t_run_where_the_plan_says_with_both_times_and_the_same_shape_anywhere():
    """A level 2..T goes to the driver while it is no slower there and fits, else to the executors;
    clustering.driver_max_rows (a number) still overrides; n_coarse auto shapes a level the same
    way wherever it runs (the tree never depends on the placement)."""
    gpu_cluster = Hardware(executors=64, cores=8, gpus=1, task_memory=32 * GIB, driver_memory=64 * GIB, driver_cores=8)
    paper = size_job(743_000_000, 1024, [10_000_000, 500_000, 50_000, 10_000], resample_size=[1, 10, 5, 3], hardware=gpu_cluster)
    where = {lv.level: lv.where for lv in paper.levels}
    # 10M inputs against 500k centroids: about a day on the driver's 8 cores, an hour on 64 GPUs
    assert where[2] == "executors" and paper.levels[1].seconds * 10 < float(paper.levels[1].placed.split("against ")[1].split(" h")[0]) * 3600
    assert where[3] == "executors" and "on the executors: est. " in paper.levels[2].placed and "on the driver's 8 cores" in paper.levels[2].placed
    small = size_job(1_700_000, 128, [20_000, 800, 80], hardware=Hardware(task_memory=4 * GIB, driver_memory=16 * GIB))
    assert [lv.where for lv in small.levels] == ["executors", "driver", "driver"]
    # a driver too small for a level's inputs and sums: the executors, saying why
    tiny_driver = size_job(2_000_000, 256, [400_000, 200_000], n_coarse=[0, 0],
                           hardware=Hardware(executors=8, cores=8, task_memory=32 * GIB, driver_memory=6 * GIB))
    assert not tiny_driver.problems
    assert tiny_driver.levels[1].where == "executors" and "on the driver it would hold" in tiny_driver.levels[1].placed
    # a level whose one k-means cannot fit an executor's task but fits the driver: the driver, however much
    # faster the executors would be, saying why
    small_tasks = size_job(4_000_000, 1024, [400_000, 200_000], hardware=Hardware(executors=64, cores=8, task_memory=4 * GIB,
                                                                                   driver_memory=512 * GIB, driver_cores=8))
    assert not small_tasks.problems and small_tasks.levels[1].where == "driver" and small_tasks.levels[1].n_coarse == 0
    assert small_tasks.levels[1].placed.startswith("on the driver: on the executors, one k-means with k=200,000 holds ")
    # the threshold, when set, decides as before
    forced = size_job(1_700_000, 128, [20_000, 800, 80], driver_max_rows=10, hardware=Hardware(task_memory=4 * GIB, driver_memory=16 * GIB))
    assert [lv.where for lv in forced.levels] == ["executors"] * 3
    assert "more than clustering.driver_max_rows=10" in forced.levels[1].placed
    # the shape: a level of more than SHAPE_INPUTS inputs with k >= AUTO_TWO_STEP_MIN_K is two-step on
    # either side; at or under it, one k-means on either side
    from lakecurate.sizing import AUTO_TWO_STEP_MIN_K, SHAPE_INPUTS

    for hw in (gpu_cluster, Hardware(task_memory=32 * GIB, driver_memory=512 * GIB)):
        big = size_job(10 * SHAPE_INPUTS, 64, [2 * SHAPE_INPUTS, AUTO_TWO_STEP_MIN_K], hardware=hw)
        assert big.levels[1].n_coarse > 0
        under = size_job(10 * SHAPE_INPUTS, 64, [SHAPE_INPUTS, AUTO_TWO_STEP_MIN_K], hardware=hw)
        assert under.levels[1].n_coarse == 0
