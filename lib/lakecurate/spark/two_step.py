"""The Spark half of a two-step level (:func:`lakecurate.core.hierarchy.fit_two_step_level`).

A two-step level never ships its fine centroids to every task: at DINOv3's level 1 they would be
200M x d. Instead every pass groups the rows by their coarse cluster (only the coarse centroids
are shipped) and brings each group together with its own fine centroids:

- :func:`fit_groups`: rows grouped by coarse label, ``applyInPandas`` fits each group
  (:class:`~lakecurate.core.hierarchy.FineFit`) and returns its fine centroids, counts and
  inertia; only those come back to the driver.
- :func:`routed_rows`: rows grouped by coarse label and *cogrouped* with a small DataFrame of each
  group's fine centroids, so a task holds one group's rows and one group's centroids. It gives the
  labels of a level 2..T's inputs (:func:`routed_labels`) and the ``assignments`` rows of a
  two-step level 1 (:mod:`lakecurate.spark.assignments`).

Each group's rows are sorted by row key before any kernel sees them, and every kernel is the
in-process one, so the result is the same bits as :class:`~lakecurate.core.in_process.NumpyAssigner`
on one machine whatever the partitioning.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import pyarrow as pa

from lakecurate.core.assign import GroupFit, RoutedCentroids, fit_group, nearest_centroid
from lakecurate.spark.blocks import EmbeddingBlocks
from lakecurate.spark.tasks import configure_faiss

log = logging.getLogger(__name__)


def _group_rows(with_ids: bool):
    """A block function: each row's coarse group, row key, vector bytes (and id)."""

    def label(batches, coarse):
        for b in batches:
            group, _ = nearest_centroid(b.vectors, coarse)
            cols = {
                "group": pa.array(group.astype(np.int32)),
                "row_key": pa.array(b.keys),
                "vec": pa.array([r.tobytes() for r in b.vectors], pa.binary()),
            }
            if with_ids:
                cols = {"id": b.ids, **cols}
            yield pa.record_batch(list(cols.values()), names=list(cols))

    return label


def _rows_schema(blocks: EmbeddingBlocks, with_ids: bool):
    from pyspark.sql import types as T

    fields = [T.StructField("group", T.IntegerType()), T.StructField("row_key", T.LongType()), T.StructField("vec", T.BinaryType())]
    if with_ids:
        fields = [T.StructField("id", blocks.id_type)] + fields
    return T.StructType(fields)


def _matrix(pdf, d: int) -> np.ndarray:
    return np.frombuffer(b"".join(pdf["vec"].tolist()), np.float32).reshape(-1, d)


def fit_groups(blocks: EmbeddingBlocks, coarse: np.ndarray, fit_one: Callable[[int, np.ndarray], np.ndarray]) -> list[GroupFit]:
    """:meth:`lakecurate.core.assign.Assigner.fit_groups` on the executors (one group per task call)."""
    import pandas as pd

    d = blocks.d
    threads = blocks.faiss_threads

    def fit(pdf: "pd.DataFrame") -> "pd.DataFrame":
        configure_faiss(threads)
        pdf = pdf.sort_values("row_key", kind="stable")  # the fit sees rows in key order: any partitioning
        f = fit_group(int(pdf["group"].iloc[0]), _matrix(pdf, d), fit_one)
        return pd.DataFrame({"group": [f.group], "centroids": [f.centroids.tobytes()], "counts": [f.counts.tobytes()],
                             "inertia": [f.inertia.tobytes()]})

    coarse = np.ascontiguousarray(coarse, np.float32)
    with blocks.mapped(_group_rows(False), _rows_schema(blocks, False), coarse) as rows:
        got = rows.groupBy("group").applyInPandas(fit, "group INT, centroids BINARY, counts BINARY, inertia BINARY").toArrow()
    fits = [
        GroupFit(int(g), np.frombuffer(c, np.float32).reshape(-1, d).copy(), np.frombuffer(n, np.int64).copy(),
                 np.frombuffer(i, np.float64).copy())
        for g, c, n, i in zip(*(got.column(name).to_pylist() for name in ("group", "centroids", "counts", "inertia")))
    ]
    return sorted(fits, key=lambda f: f.group)


def fine_frame(spark, routed: RoutedCentroids):
    """One row per coarse group: its first label and its fine centroids as float32 bytes."""
    g = routed.n_groups
    return spark.createDataFrame(pa.table({
        "group": pa.array(np.arange(g, dtype=np.int32)),
        "first": pa.array(routed.offsets[:-1].astype(np.int64)),
        "centroids": pa.array([routed.group(i).tobytes() for i in range(g)], pa.binary()),
    }))


def routed_rows(blocks: EmbeddingBlocks, routed: RoutedCentroids, emit, schema, *, with_ids: bool):
    """A lazy DataFrame of ``emit(rows_pdf, labels, distances)`` per coarse group (see the module docstring).

    ``rows_pdf`` holds the group's rows sorted by row key (``row_key``, ``vec``, and ``id`` when
    ``with_ids``); labels index the level's fine centroids.
    """
    import pandas as pd

    d = blocks.d
    threads = blocks.faiss_threads

    def assign(rows: "pd.DataFrame", fine: "pd.DataFrame") -> "pd.DataFrame":
        if rows.empty:
            return emit(rows, np.zeros(0, np.int64), np.zeros(0, np.float32))
        configure_faiss(threads)
        rows = rows.sort_values("row_key", kind="stable").reset_index(drop=True)
        centroids = np.frombuffer(fine["centroids"].iloc[0], np.float32).reshape(-1, d)
        lab, dist = nearest_centroid(_matrix(rows, d), centroids)
        return emit(rows, lab + int(fine["first"].iloc[0]), dist)

    rows = blocks.map(_group_rows(with_ids), _rows_schema(blocks, with_ids), np.ascontiguousarray(routed.coarse, np.float32))
    fine = fine_frame(blocks.spark, routed)
    return rows.groupBy("group").cogroup(fine.groupBy("group")).applyInPandas(assign, schema)


def routed_labels(blocks: EmbeddingBlocks, routed: RoutedCentroids) -> tuple[np.ndarray, np.ndarray]:
    """(labels, distances) of every row in row-key order (a level 2..T's inputs: O(k_{t-1}) rows)."""
    import pandas as pd

    def emit(rows, lab, dist):
        return pd.DataFrame({"row_key": rows["row_key"].to_numpy(np.int64), "label": lab.astype(np.int64),
                             "dist": dist.astype(np.float32)})

    t = routed_rows(blocks, routed, emit, "row_key LONG, label LONG, dist FLOAT", with_ids=False).toArrow()
    order = np.argsort(t.column("row_key").to_numpy(), kind="stable")
    if order.size != blocks.n:
        raise RuntimeError(f"two-step labels: {order.size} rows came back for {blocks.n} inputs")
    return t.column("label").to_numpy()[order], t.column("dist").to_numpy()[order]
