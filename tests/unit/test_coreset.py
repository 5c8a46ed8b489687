"""Target-aware coresets (SimCore): the pure API against a direct transcription of the reference's greedy
(:func:`lakecurate.core.coreset.reference_greedy`, on the full similarity matrix)."""

import numpy as np
import pytest

from lakecurate import target_coreset
from lakecurate.core.coreset import (
    Candidates, greedy, merge_candidates, reference_greedy, similarities, target_centroids, top_candidates,
)
from lakecurate.core.kmeans import normalize_rows
from lakecurate.core.synthetic import long_tailed_pool
from lakecurate.errors import ConfigError, InputDataError


def domain_case(n=3000, d=16, n_target=60, seed=0, concepts=(0, 3)):
    pool = long_tailed_pool(n, d, 30, alpha=0.8, spread=0.3, seed=seed)
    rng = np.random.default_rng(seed + 1)
    where = np.flatnonzero(np.isin(pool.concept, concepts))
    target = pool.x[rng.choice(where, n_target, replace=False)] + rng.normal(0, 0.05, (n_target, d)).astype(np.float32)
    return pool, target.astype(np.float32)


def check_against_reference(pool_x, target, **kw):
    res = target_coreset(pool_x, target, details=True, **kw)
    sim = similarities(normalize_rows(pool_x), res.centroids)
    budget = kw.get("budget") or min(50 * target.shape[0], pool_x.shape[0])
    ref, taken_in, stop_round, why = reference_greedy(sim, min(budget, pool_x.shape[0]), kw.get("patience", 20),
                                                      kw.get("stop_threshold", 0.95), kw.get("seed", 0))
    np.testing.assert_array_equal(res.indices, ref)
    assert res.round.tolist() == [taken_in[i] for i in ref.tolist()]
    assert res.stop_round == len(res.utilities) == stop_round
    return res, why


def test_threshold_stop_equals_the_reference():
    pool, target = domain_case()
    res, why = check_against_reference(pool.x, target, n_centroids=8, patience=5, stop_threshold=0.95)
    assert why == "threshold" and res.stop_reason == "threshold"
    assert 0 < res.indices.size < 50 * target.shape[0]
    assert res.utilities[-1] < res.threshold <= res.utilities[4]


def test_budget_cut_equals_the_reference():
    pool, target = domain_case(seed=2)
    res, why = check_against_reference(pool.x, target, n_centroids=7, budget=101, patience=50, seed=3)
    assert why == "budget" and res.stop_reason == "budget" and res.indices.size == 101


def test_every_target_row_a_centroid_and_the_whole_pool_as_budget():
    pool, target = domain_case(n=400, n_target=12, seed=4)
    pool.x, target = np.abs(pool.x), np.abs(target)  # all similarities positive: the threshold (0 until patience) never stops it
    res, _ = check_against_reference(pool.x, target, n_centroids=100, budget=10_000, patience=10_000)
    assert res.centroids.shape[0] == 12
    np.testing.assert_allclose(res.centroids, normalize_rows(target), rtol=0, atol=0)
    assert res.stop_reason == "pool" and res.indices.size == 400


def test_exact_duplicates_in_the_pool_tie_by_row():
    pool, target = domain_case(n=600, seed=5)
    x = np.concatenate([pool.x, pool.x[:300]])  # 300 rows twice: equal similarities everywhere
    res, _ = check_against_reference(x, target, n_centroids=6, patience=4, stop_threshold=0.99)
    assert res.indices.size > 0


@pytest.mark.parametrize("candidates", [1, 3, 50])
def test_the_candidate_window_changes_passes_never_picks(candidates):
    pool, target = domain_case(seed=6)
    full = target_coreset(pool.x, target, n_centroids=9, patience=6, details=True)
    small = target_coreset(pool.x, target, n_centroids=9, patience=6, candidates=candidates, details=True)
    np.testing.assert_array_equal(small.indices, full.indices)
    np.testing.assert_array_equal(small.centroid, full.centroid)
    np.testing.assert_array_equal(small.similarity, full.similarity)
    assert small.fetches > full.fetches
    assert small.max_candidates < full.max_candidates


def test_candidates_merged_from_many_sources_equal_one_source():
    """The Spark path's merge, in memory: the pool split into 5 parts, each listing a short top-c."""
    pool, target = domain_case(n=2000, seed=7)
    cents = target_centroids(target, 5, seed=0)
    unit = normalize_rows(pool.x)
    keys = np.random.default_rng(0).permutation(10_000)[:2000].astype(np.int64)  # keys in no particular order
    parts = np.array_split(np.random.default_rng(1).permutation(2000), 5)

    def fetch(per_source):
        def f(queried, cs, ck, want):
            w = np.zeros(5, np.int64)
            w[queried] = per_source
            got = [top_candidates([(keys[p], unit[p])], cents, cs, ck, w) for p in parts]
            return merge_candidates(got, queried)
        return f

    def whole(queried, cs, ck, want):
        w = np.zeros(5, np.int64)
        w[queried] = want
        return merge_candidates([top_candidates([(keys, unit)], cents, cs, ck, w)], queried)

    ref = greedy(whole, 5, budget=700, pool_rows=2000, patience=8, seed=1)
    for c in (2, 7):
        got = greedy(fetch(c), 5, budget=700, pool_rows=2000, patience=8, seed=1, candidates=4)
        np.testing.assert_array_equal(got.keys, ref.keys)
        np.testing.assert_array_equal(got.round, ref.round)
        assert got.fetches > ref.fetches


def test_merge_keeps_only_the_certain_prefix():
    a = Candidates(np.array([[1, 2, 3]]), np.array([[0.9, 0.8, 0.5]], np.float32), np.array([3]), np.array([False]))
    b = Candidates(np.array([[7, 8, 9]]), np.array([[0.85, 0.7, 0.6]], np.float32), np.array([3]), np.array([False]))
    (ks, ss, complete), = merge_candidates([a, b], np.array([0]))
    assert ks.tolist() == [1, 7, 2, 8, 9] and not complete  # b may hold rows just below 0.6; a's 0.5 is not certain
    b.complete[0] = True
    (ks, _, complete), = merge_candidates([a, b], np.array([0]))
    assert ks.tolist() == [1, 7, 2, 8, 9, 3] and not complete
    a.complete[0] = True
    assert merge_candidates([a, b], np.array([0]))[0][2]


def test_picks_come_from_the_target_concepts():
    pool, target = domain_case(n=5000, d=32, n_target=80, seed=8, concepts=(2, 5))
    idx = target_coreset(pool.x, target, n_centroids=10)
    precision = np.isin(pool.concept[idx], (2, 5)).mean()
    share = np.isin(pool.concept, (2, 5)).mean()
    assert precision > 0.9 > share, (precision, share)


def test_same_seed_same_result_and_the_seed_matters_for_kmeans_centroids():
    pool, target = domain_case(seed=9)
    a = target_coreset(pool.x, target, n_centroids=5, budget=300, seed=1, details=True)
    b = target_coreset(pool.x, target, n_centroids=5, budget=300, seed=1, details=True)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    # another seed starts k-means++ elsewhere: other centroids (the picks may still agree)
    c = target_coreset(pool.x, target, n_centroids=5, budget=300, seed=2, details=True)
    assert not np.array_equal(a.centroids, c.centroids)


def simcore_reference(pool_x, target, n_centroids, *, patience=20, stop_threshold=0.95, seed=0):
    """SimCore's ``simcore_sampling`` transcribed, with ``args.stop`` on: the target's unit rows,
    ``KMeans(n_clusters=K, random_state=0).fit(...)`` with scikit-learn's defaults, the centroids
    made unit length, the similarities, then the reference's greedy with budget 50 x |target|.
    Its two deviations are lakecurate's pinned choices: similarities rounded from float64
    (:func:`similarities`; torch.mm's float32 sums differ by rounding only) and the fit on one
    thread (scikit-learn's multi-thread sums depend on which thread finishes first)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    feats = normalize_rows(target)
    if n_centroids < feats.shape[0]:
        with threadpool_limits(limits=1):
            centroids = KMeans(n_clusters=n_centroids, random_state=0).fit(feats).cluster_centers_
    else:
        centroids = feats
    centroids = normalize_rows(centroids)
    sim = similarities(normalize_rows(pool_x), centroids)
    budget = min(50 * target.shape[0], pool_x.shape[0])
    picks, _, _, _ = reference_greedy(sim, budget, patience, stop_threshold, seed)
    return centroids, picks


@pytest.mark.parametrize("n_centroids", [4, 10, 25])
def test_target_summary_and_picks_equal_simcores_end_to_end(n_centroids):
    """Issue 31: the target's centroids are SimCore's (scikit-learn's Euclidean k-means with greedy
    k-means++), not a spherical k-means of our own; the picks then equal the reference's, on a
    labelled pool whose target is two of its concepts."""
    pool, target = domain_case(n=4000, d=24, n_target=120, seed=11, concepts=(1, 4))
    ref_centroids, ref_picks = simcore_reference(pool.x, target, n_centroids)
    res = target_coreset(pool.x, target, n_centroids=n_centroids, details=True)
    np.testing.assert_array_equal(res.centroids, ref_centroids)
    np.testing.assert_array_equal(res.indices, ref_picks)
    precision = np.isin(pool.concept[res.indices], (1, 4)).mean()
    assert precision > 2 * np.isin(pool.concept, (1, 4)).mean()


@pytest.mark.parametrize(
    "kw, error, words",
    [
        ({"target": np.zeros((0, 16), np.float32)}, InputDataError, "target is empty"),
        ({"target": np.ones((5, 8), np.float32)}, InputDataError, "target has dimension 8 but pool has dimension 16"),
        ({"budget": 0}, ConfigError, "budget=0"),
        ({"budget": -3}, ConfigError, "budget=-3"),
        ({"n_centroids": 0}, ConfigError, "n_centroids=0"),
        ({"stop_threshold": 1.5}, ConfigError, "stop_threshold=1.5"),
        ({"patience": 0}, ConfigError, "patience=0"),
        ({"target": np.array([[np.nan] * 16] + [[1.0] * 16], np.float32)}, InputDataError, "target has 1 row(s) with NaN"),
    ],
)
def test_bad_input_is_refused_with_the_value(kw, error, words):
    pool, target = domain_case(n=300)
    args = {"target": target, **kw}
    with pytest.raises(error) as e:
        target_coreset(pool.x, args.pop("target"), **args)
    assert words in str(e.value)


def test_the_reference_as_written_and_over_python_ints_agree():
    pool, target = domain_case(n=800, seed=10)
    sim = similarities(normalize_rows(pool.x), target_centroids(target, 5))
    a = reference_greedy(sim, 300, 6, 0.95, 0, as_written=True)
    b = reference_greedy(sim, 300, 6, 0.95, 0)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
