"""The Lloyd loop against a brute-force reference, hand cases, re-seeding, init."""

import numpy as np
import pytest

from lakecurate.core.assign import nearest_centroid, top_r_per_cluster
from lakecurate.core.in_process import NumpyAssigner
from lakecurate.core.kmeans import fit_kmeans, kmeans_plusplus, lloyd, split_empty_clusters

from builders import split_twice_pool


def brute_force_lloyd(x, c, n_iter):
    """Textbook Lloyd in float64 numpy: the reference the faiss-backed loop must match."""
    x = x.astype(np.float64)
    c = c.astype(np.float64).copy()
    for _ in range(n_iter):
        d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        lab = d.argmin(1)
        for j in range(c.shape[0]):
            if (lab == j).any():
                c[j] = x[lab == j].mean(0)
    d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    return c, d.argmin(1), d.min(1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lloyd_matches_brute_force(dtype):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 5)) + rng.integers(0, 4, size=(300, 1)) * 3).astype(dtype)
    c0 = x[:6].astype(np.float32)
    fit = lloyd(NumpyAssigner(x), c0, 10, np.random.default_rng(0))
    ref_c, ref_lab, ref_d = brute_force_lloyd(x, c0, 10)
    assert fit.n_reseeded == 0
    np.testing.assert_allclose(fit.centroids, ref_c, rtol=1e-5, atol=1e-5)
    lab, dist = NumpyAssigner(x).labels(fit.centroids)
    assert np.array_equal(lab, ref_lab)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-4)
    assert fit.objective == pytest.approx(ref_d.sum(), rel=1e-5)
    assert np.array_equal(fit.counts, np.bincount(ref_lab, minlength=6))


def test_tiny_hand_case_exact_labels_and_centres():
    x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
    fit = lloyd(NumpyAssigner(x), np.array([[0, 0], [10, 10]], np.float32), 3, np.random.default_rng(0))
    np.testing.assert_array_equal(fit.centroids, [[0, 0.5], [10, 10.5]])
    assert fit.counts.tolist() == [2, 2]
    assert fit.objective == pytest.approx(4 * 0.25)


def test_objective_never_increases():
    x = np.random.default_rng(1).normal(size=(2000, 8)).astype(np.float32)
    fit, _, _ = fit_kmeans(x, 20, n_iter=15, seed=0)
    obj = [it.objective for it in fit.iterations] + [fit.objective]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(obj, obj[1:]))


def test_nearest_centroid_is_exact_against_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5000, 24)).astype(np.float32)
    c = rng.normal(size=(37, 24)).astype(np.float32)
    lab, dist = nearest_centroid(x, c)
    d = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
    assert np.array_equal(lab, d.argmin(1))
    np.testing.assert_allclose(dist, d.min(1), rtol=1e-5)


def test_nearest_centroid_does_not_depend_on_batch_boundaries():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, 32)).astype(np.float32)
    c = rng.normal(size=(50, 32)).astype(np.float32)
    lab, dist = nearest_centroid(x, c)
    parts = [nearest_centroid(x[i : i + 333], c) for i in range(0, 4000, 333)]
    assert np.array_equal(lab, np.concatenate([p[0] for p in parts]))
    assert np.array_equal(dist, np.concatenate([p[1] for p in parts]))


def test_nearest_centroid_is_the_rowwise_nearest_when_three_centroids_tie_within_rounding():
    """The label is the smallest row-wise distance (lowest index on a tie) over every centroid, not
    only over faiss's two best: with three split copies, faiss's top two missed it (one row in
    20 000 on this layout before the fix)."""
    from lakecurate.core.assign import rowwise_sq_dist

    x, c = split_twice_pool()
    lab, dist = nearest_centroid(x, c)
    every = np.stack([rowwise_sq_dist(x, c, np.full(x.shape[0], j)) for j in range(c.shape[0])], 1)
    assert np.array_equal(lab, every.argmin(1))  # argmin: the lowest index on a tie
    assert np.array_equal(dist, every.min(1))
    parts = [nearest_centroid(x[i : i + 777], c) for i in range(0, x.shape[0], 777)]
    assert np.array_equal(lab, np.concatenate([p[0] for p in parts]))


def test_a_gpu_search_settles_ties_by_the_same_rule_as_the_cpu(monkeypatch):
    """Issue 31: on a GPU the assignment re-scored only faiss's two best candidates, so on the
    split-copies layout it missed the row-wise nearest centroid where the CPU found it. A stand-in
    for the GPU index (the same squared distances as ||x||^2 + ||c||^2 - 2 x.c, its float32
    products summed in another order, as a GPU's GEMM does; faiss_device() says "gpu") must give
    the CPU's labels and distances bit for bit."""
    from lakecurate.core import assign as assign_module
    from lakecurate.core.assign import rowwise_sq_dist

    x, c = split_twice_pool()
    cpu_lab, cpu_dist = nearest_centroid(x, c)
    asked = []

    def gpu_knn(xq, cents, kk, with_distances=False):
        asked.append(kk)
        perm = np.random.default_rng(kk).permutation(xq.shape[1])  # another summation order
        xp, cp = xq[:, perm], cents[:, perm]
        d = (np.einsum("ij,ij->i", xp, xp)[:, None] + np.einsum("ij,ij->i", cp, cp)[None, :] - 2.0 * (xp @ cp.T)).astype(np.float32)
        cand = np.argsort(d, axis=1, kind="stable")[:, :kk]
        dist = np.take_along_axis(d, cand, 1)
        return (dist, cand) if with_distances else cand

    monkeypatch.setattr(assign_module, "faiss_device", lambda: "gpu")
    monkeypatch.setattr(assign_module, "knn_candidates", gpu_knn)
    gpu_lab, gpu_dist = nearest_centroid(x, c)
    assert asked and min(asked) > 2  # more than the two best: the window's candidates
    every = np.stack([rowwise_sq_dist(x, c, np.full(x.shape[0], j)) for j in range(c.shape[0])], 1)
    assert np.array_equal(gpu_lab, every.argmin(1))
    assert np.array_equal(gpu_lab, cpu_lab) and np.array_equal(gpu_dist, cpu_dist)


def test_empty_clusters_are_reseeded_not_dropped():
    # adversarial: half the points identical; two identical initial centroids -> one starts empty
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros((100, 4)), rng.normal(size=(100, 4)) + 5]).astype(np.float32)
    c0 = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 0, 0]], np.float32)
    fit = lloyd(NumpyAssigner(x), c0, 10, np.random.default_rng(0))
    assert fit.iterations[0].n_reseeded == 1
    assert (fit.counts > 0).all()
    assert fit.counts.sum() == 200


def test_split_empty_clusters_reports_and_moves_centroids():
    c = np.array([[1.0, 2.0], [9.0, 9.0], [1.0, 2.0]], np.float32)
    counts = np.array([10, 5, 0])
    n = split_empty_clusters(c, counts, np.random.default_rng(0))
    assert n == 1
    assert not np.array_equal(c[2], [1.0, 2.0]) or not np.array_equal(c[0], [1.0, 2.0])


def test_kmeans_plusplus_picks_distinct_far_apart_seeds():
    x = np.concatenate([np.zeros((500, 2)), np.full((3, 2), 100.0), np.full((3, 2), -100.0)]).astype(np.float32)
    centers = kmeans_plusplus(x, 3, np.random.default_rng(0))
    # the two tiny far groups are each found despite holding ~1% of the points
    assert {tuple(r) for r in centers.round().tolist()} == {(0.0, 0.0), (100.0, 100.0), (-100.0, -100.0)}


def test_fit_kmeans_is_reproducible():
    x = np.random.default_rng(4).normal(size=(1000, 6)).astype(np.float32)
    a, la, _ = fit_kmeans(x, 12, n_iter=5, seed=7)
    b, lb, _ = fit_kmeans(x, 12, n_iter=5, seed=7)
    assert np.array_equal(a.centroids, b.centroids) and np.array_equal(la, lb)


def test_cosine_metric_gives_unit_centroids():
    x = np.random.default_rng(5).normal(size=(500, 6)).astype(np.float32) * 7
    fit, _, _ = fit_kmeans(x, 5, n_iter=5, metric="cosine", seed=0)
    np.testing.assert_allclose(np.linalg.norm(fit.centroids, axis=1), 1.0, rtol=1e-5)


def test_top_r_per_cluster_breaks_ties_by_row():
    labels = np.array([0, 0, 0, 1, 1])
    dist = np.array([1.0, 1.0, 0.5, 2.0, 2.0], np.float32)
    rows = np.array([7, 3, 9, 4, 2])
    # cluster 0: row 9 (0.5), then the tie at 1.0 goes to row 3 before row 7; cluster 1: tie -> row 2
    assert sorted(rows[top_r_per_cluster(labels, dist, rows, 2)].tolist()) == [2, 3, 4, 9]
    assert sorted(rows[top_r_per_cluster(labels, dist, rows, 1)].tolist()) == [2, 9]


def _kmeans_plusplus_unpruned(x, k, rng):
    """The textbook loop: every point's distance to every new centre."""
    x = x.astype(np.float64)
    centers = [x[int(rng.integers(len(x)))]]
    closest = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = closest.sum()
        idx = min(int(np.searchsorted(np.cumsum(closest), rng.random() * total, side="right")), len(x) - 1) if total > 0 else int(rng.integers(len(x)))
        centers.append(x[idx])
        closest = np.minimum(closest, ((x - x[idx]) ** 2).sum(1))
    return np.array(centers, np.float32)


def test_pruned_kmeans_plusplus_draws_exactly_what_the_textbook_loop_draws():
    # small integer coordinates: every distance is exact in float32, so pruning may not change a draw
    x = np.random.default_rng(8).integers(-6, 7, size=(3000, 8)).astype(np.float32)
    x = np.concatenate([x, x[:200]])  # with exact duplicates
    for seed in range(3):
        got = kmeans_plusplus(x, 60, np.random.default_rng(seed))
        ref = _kmeans_plusplus_unpruned(x, 60, np.random.default_rng(seed))
        assert np.array_equal(got, ref)
