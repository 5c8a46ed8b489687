"""The performance paths added for the benchmark (issue 4) compute the same numbers as before."""

from __future__ import annotations

import numpy as np

from lakecurate.core.assign import assign_batch, cluster_sums, faiss_device, nearest_centroid


def test_nearest_centroid_does_not_depend_on_batching():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 24)).astype(np.float32)
    c = x[:50].copy()
    c[1] = c[0]  # an exact tie: the lower label must win wherever the row falls
    lab, dist = nearest_centroid(x, c)
    parts = [nearest_centroid(x[s : s + 777], c) for s in range(0, 5000, 777)]
    assert np.array_equal(lab, np.concatenate([p[0] for p in parts]))
    assert np.array_equal(dist, np.concatenate([p[1] for p in parts]))
    assert (lab != 1).all()
    brute = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
    assert np.allclose(dist, brute[np.arange(5000), lab], rtol=1e-5)
    assert (brute[np.arange(5000), lab] <= brute.min(axis=1) * (1 + 1e-5) + 1e-6).all()


def test_sums_methods_agree():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    lab = rng.integers(0, 40, size=3000)
    lab[lab == 7] = 8  # an empty cluster
    c1, s1 = cluster_sums(x, lab, 40, "sparse")
    c2, s2 = cluster_sums(x, lab, 40, "add_at")
    assert np.array_equal(c1, c2) and c1[7] == 0
    assert np.allclose(s1, s2, rtol=1e-12, atol=1e-9)
    a = assign_batch(x, x[:40], "add_at")
    b = assign_batch(x, x[:40], "sparse")
    assert np.array_equal(a.counts, b.counts) and np.isclose(a.inertia, b.inertia)


def test_sparse_sums_add_each_chunks_rows_in_row_order():
    """The same bits as adding, chunk by chunk, each row into its cluster in row order (what the
    Spark and in-process passes rely on to round to the same centroids), at k below and above
    the chunk's rows, with empty clusters."""
    from lakecurate.core.assign import CHUNK_ROWS

    rng = np.random.default_rng(3)
    for n, k in [(5000, 40), (5000, 3000), (700, 20000), (1, 5)]:
        x = (rng.standard_normal((n, 16)) * 10.0 ** rng.integers(-3, 4, size=(n, 1))).astype(np.float32)
        lab = rng.integers(0, k, size=n)
        want = np.zeros((k, 16))
        for s in range(0, n, CHUNK_ROWS):
            part = np.zeros((k, 16))
            np.add.at(part, lab[s : s + CHUNK_ROWS], x[s : s + CHUNK_ROWS].astype(np.float64))
            want += part
        counts, got = cluster_sums(x, lab, k)
        assert np.array_equal(got, want), (n, k)
        assert np.array_equal(counts, np.bincount(lab, minlength=k))


def test_device_selection_follows_the_gpus_faiss_sees(monkeypatch):
    import faiss

    from lakecurate.core import assign

    for gpus, device in ((0, "cpu"), (1, "gpu")):
        monkeypatch.setattr(faiss, "get_num_gpus", lambda n=gpus: n, raising=False)
        monkeypatch.setitem(assign._gpu_state, "count", None)  # asked again, as in a fresh process
        assert faiss_device() == device
    monkeypatch.setenv("LAKECURATE_FAISS_DEVICE", "cpu")  # forced, whatever faiss sees
    assert faiss_device() == "cpu"


