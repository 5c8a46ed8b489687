"""The figures the HTML report computes (pure numpy), and what a run does when its report fails."""

import numpy as np
import pytest

from lakecurate.core.metrics import covered, expected_group_counts, gini, guidance_targets, lorenz, size_summary
from lakecurate.core.sampling import hierarchical_quotas, tree_from_levels


def test_lorenz_and_gini_of_even_and_skewed_counts():
    x, y = lorenz(np.array([5, 5, 5, 5]))
    assert np.allclose(x, y) and gini([5, 5, 5, 5]) == pytest.approx(0.0)
    x, y = lorenz(np.array([0, 0, 0, 12]))  # one group holds everything; missed groups count
    assert y.tolist() == [0, 0, 0, 0, 1] and gini([0, 0, 0, 12]) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    skewed = rng.zipf(1.5, 400).clip(max=10_000)
    assert 0.5 < gini(skewed) < 1 and gini(skewed) > gini(rng.poisson(50, 400))


def test_size_summary_and_coverage():
    s = size_summary(np.array([10, 0, 30, 20]))
    assert (s["k"], s["largest"], s["median"], s["smallest"], s["empty"]) == (4, 30, 15.0, 0, 1)
    assert s["imbalance"] == pytest.approx(30 / 15)
    assert covered(np.array([9.5, 10, 150, 2000]), (10, 100, 1000)) == {10: 3, 100: 2, 1000: 1}


def test_expected_group_counts_spread_each_cluster_quota_over_its_labels():
    # cluster 0: 30 of label 0, 10 of label 1; cluster 1: 50 of label 1
    cluster, group, count = np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([30, 10, 50])
    got = expected_group_counts(np.array([8, 5]), cluster, group, count, 3)
    assert got.tolist() == pytest.approx([6.0, 2.0 + 5.0, 0.0])
    # taking every row gives the pool's own counts back
    assert expected_group_counts(np.array([40, 50]), cluster, group, count, 2).tolist() == pytest.approx([30, 60])


def test_guidance_targets_run_from_the_target_down():
    assert guidance_targets(20000) == [20000, 10000, 5000, 2000]
    assert guidance_targets(600) == [600, 500, 200, 100]
    big = guidance_targets(50_000_000)
    assert big[0] == 50_000_000 and big[-1] == 2000 and big == sorted(big, reverse=True)


def test_guidance_quotas_at_the_target_are_the_samplers():
    """The guidance panel's quotas are hierarchical_quotas with the run's seed: the same draw."""
    from lakecurate.report.gather import Level, ReportData, guidance

    rng = np.random.default_rng(1)
    sizes1 = rng.integers(1, 200, 40)
    parents1 = rng.integers(0, 6, 40)
    parents1[:6] = np.arange(6)
    sizes2 = np.bincount(parents1, weights=sizes1, minlength=6).astype(np.int64)
    data = ReportData(run=None, tree_run="t", id_column="id",
                      levels=[Level(1, sizes1, parents1), Level(2, sizes2, None)])
    rows = guidance(data, 1000, seed=7)
    quotas = hierarchical_quotas(tree_from_levels([sizes1, sizes2], [parents1, None]), 1000, np.random.default_rng(7))
    assert rows[0]["target_size"] == 1000 and rows[0]["level1"] == covered(quotas, (10, 100, 1000))
    assert [r["target_size"] for r in rows] == [1000, 500, 200, 100]
    assert all(a["top"][10] >= b["top"][10] for a, b in zip(rows, rows[1:]))  # smaller subsets cover no more


@pytest.mark.html_report
def test_a_failed_report_keeps_the_run_and_says_how_to_write_it(tmp_path, caplog):
    from lakecurate.config import LakeConfig
    from lakecurate.lake import Lake
    from lakecurate.pipeline import RunResult, write_html_report

    lake = Lake(None, LakeConfig(root=str(tmp_path / "lake")))
    result = RunResult(run_id="r1", lake_root=lake.root, backend="embedded")
    write_html_report(lake, result)  # no runs table: nothing to report
    assert result.html_report is None
    assert result.html_report_error.startswith("TableError: no 'runs' table")
    assert f"lakecurate report r1 --lake {lake.root}" in caplog.text
