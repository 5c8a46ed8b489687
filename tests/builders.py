"""Data the tests of every tier build: one definition each, imported by the unit, Spark and e2e tests."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa


def boundary_pool() -> tuple[np.ndarray, int, int]:
    """Two blobs around e0 and e1 and a pair of near-copies (rows p, q) on the boundary between them.

    The blob noise is mirrored, so the blob centres lie exactly on e0 and e1; p leans to e0, q to
    e1, and cos(p, q) = (1 - delta^2) / (1 + delta^2) = 0.995. With two coarse clusters the pair is
    split between them: only the neighbour option finds it. Returns (X, p, q).
    """
    rng = np.random.default_rng(0)
    d = 8
    half = 0.4 * rng.normal(size=(10, d - 2))
    noise = np.concatenate([half, -half])
    a = np.zeros((20, d))
    a[:, 0], a[:, 2:] = 1.0, noise
    b = np.zeros((20, d))
    b[:, 1], b[:, 2:] = 1.0, noise[::-1]
    delta = 0.05
    p = np.zeros(d)
    p[0], p[1] = 1 + delta, 1 - delta
    q = np.zeros(d)
    q[0], q[1] = 1 - delta, 1 + delta
    X = np.concatenate([a[:10], [p], a[10:], b[:10], [q], b[10:]]).astype(np.float32)
    return X, 10, 31


def save_npy(folder, x: np.ndarray, name: str = "pool.npy") -> str:
    """``x`` as a .npy input file in ``folder``; returns its path."""
    path = os.path.join(str(folder), name)
    np.save(path, x)
    return path


def embeddings_table(x: np.ndarray, ids=None) -> pa.Table:
    """(id, embedding list<float>) rows of a matrix, ids 0..n-1 unless given: the shape of an input table."""
    from lakecurate.spark.arrow import matrix_to_list_array

    ids = np.arange(len(x), dtype=np.int64) if ids is None else ids
    return pa.table({"id": pa.array(ids), "embedding": matrix_to_list_array(np.asarray(x, np.float32))})


WORDS = "river stone cloud market engine violet harbor signal garden copper winter lantern orbit meadow circuit".split()


def make_texts(n: int, seed: int) -> list[str]:
    """``n`` short texts of random words (the embed stage's test source)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 14)))) for _ in range(n)]


def split_twice_pool(seed: int = 0, d: int = 384, n: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """A cluster split twice the way split_empty_clusters splits (copies pushed apart by SPLIT_EPS):
    three centroids within the product's rounding of each other for most of its rows."""
    from lakecurate.core.kmeans import SPLIT_EPS

    rng = np.random.default_rng(seed)
    base = rng.standard_normal(d).astype(np.float32)
    sign = np.where(np.arange(d) % 2 == 0, 1.0, -1.0).astype(np.float32)
    bump = SPLIT_EPS * (np.abs(base) + 1e-6) * sign
    bump2 = SPLIT_EPS * (np.abs(base - bump) + 1e-6) * np.roll(sign, 1)
    others = 3.0 * rng.standard_normal((60, d)).astype(np.float32)
    c = np.concatenate([others, np.stack([base + bump, base - bump + bump2, base - bump - bump2])]).astype(np.float32)
    x = (base + 0.8 * rng.standard_normal((n, d))).astype(np.float32)
    return x, c


def block_rows(blocks) -> tuple[np.ndarray, np.ndarray]:
    """Every cached row of ``blocks`` on the driver: (row keys, vectors), in key order."""
    def rows(batches, _):
        for b in batches:
            yield pa.record_batch({"k": pa.array([b.keys.tobytes()]), "x": pa.array([np.ascontiguousarray(b.vectors).tobytes()])})

    got = blocks.collect(rows, "k BINARY, x BINARY")
    keys = np.concatenate([np.frombuffer(r["k"], np.int64) for r in got])
    x = np.concatenate([np.frombuffer(r["x"], np.float32) for r in got]).reshape(len(keys), blocks.d)
    order = np.argsort(keys)
    return keys[order], x[order]
