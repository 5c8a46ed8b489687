"""The ``assignments`` rows: every input row's cluster at every level, computed on the executors.

Each task labels its blocks' rows with their nearest level-1 centroid (the exact kernel the fit
used, so a row gets the label the fit gave it) and walks the path up the tree through the small
``parents`` arrays shipped with the centroids. No row comes back to the driver.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lakecurate.core.assign import RoutedCentroids, nearest_centroid
from lakecurate.spark.blocks import EmbeddingBlocks
from lakecurate.spark.two_step import routed_rows


def assignment_schema(id_column: str, id_type):
    """The ``assignments`` rows' Spark schema: the same whatever the tree's depth."""
    from pyspark.sql import types as T

    return T.StructType([
        T.StructField(id_column, id_type), T.StructField("row_key", T.LongType()), T.StructField("cluster", T.IntegerType()),
        T.StructField("path", T.ArrayType(T.IntegerType(), containsNull=False)), T.StructField("distance", T.FloatType()),
    ])


def cluster_counts(assignments) -> dict[int, int]:
    """``{level-1 cluster: rows}`` of an ``assignments`` DataFrame (one aggregate; k rows reach the driver)."""
    return {int(r["cluster"]): int(r["count"]) for r in assignments.groupBy("cluster").count().collect()}


def _paths(lab: np.ndarray, parents) -> np.ndarray:
    path = np.empty((lab.size, len(parents) + 1), np.int32)
    path[:, 0] = lab
    for t, p in enumerate(parents):
        path[:, t + 1] = p[path[:, t]]
    return path


def assignment_rows(blocks: EmbeddingBlocks, centroids, parents: list[np.ndarray], *, id_column: str = "id"):
    """DataFrame (id, row_key, cluster, path, distance) for every row of ``blocks``.

    ``centroids`` are level 1's (k, d) array, or a two-step level 1's
    :class:`~lakecurate.core.assign.RoutedCentroids` (rows then meet their coarse group's fine
    centroids in a cogroup, :func:`lakecurate.spark.two_step.routed_rows`).

    ``cluster`` is the level-1 cluster, ``path`` the clusters from level 1 to the top
    (``element_at(path, t)`` is the level-t cluster); ``parents[t]`` maps a level-(t+1) cluster to
    its level-(t+2) parent; ``distance`` is the squared distance to the level-1 centroid.
    """
    schema = assignment_schema(id_column, blocks.id_type)
    names = schema.fieldNames()
    levels = len(parents) + 1
    parents = [np.asarray(p, np.int64) for p in parents]
    if isinstance(centroids, RoutedCentroids):
        import pandas as pd

        def emit(rows, lab, dist):
            path = _paths(lab, parents)
            return pd.DataFrame({id_column: rows["id"], "row_key": rows["row_key"].to_numpy(np.int64),
                                 "cluster": path[:, 0], "path": list(path), "distance": dist.astype(np.float32)})

        return routed_rows(blocks, centroids, emit, schema, with_ids=True)

    def label(batches, payload):
        c, par = payload
        for b in batches:
            lab, dist = nearest_centroid(b.vectors, c)
            path = _paths(lab, par)
            offsets = pa.array(np.arange(0, b.n * levels + 1, levels, dtype=np.int32))
            cols = [b.ids, pa.array(b.keys), pa.array(path[:, 0]), pa.ListArray.from_arrays(offsets, pa.array(path.ravel())),
                    pa.array(dist.astype(np.float32))]
            yield pa.record_batch(cols, names=names)

    payload = (np.asarray(centroids, np.float32), parents)
    return blocks.map(label, schema, payload)
