"""The coreset's passes over the pool's blocks: candidates per centroid, and the chosen rows' ids.

:func:`spark_fetch` is the ``fetch`` of :func:`lakecurate.core.coreset.greedy` on Spark: one
pass over the cached blocks in which every original partition lists, per queried centroid, its
best rows after the centroid's cursor (:func:`~lakecurate.core.coreset.top_candidates`); the
driver keeps the certainly-complete prefix of their union
(:func:`~lakecurate.core.coreset.merge_candidates`). A partition lists about 1.5 x its share of
the rows asked for (the blocks are spread evenly over partitions), so the driver holds
O(K x candidates) rows per pass, and a centroid whose prefix runs short simply asks again.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from lakecurate.core.coreset import Candidates, Fetch, merge_candidates, top_candidates
from lakecurate.spark.progress import progress

log = logging.getLogger(__name__)

_CANDIDATES_DDL = "k INT, c INT, keys BINARY, sims BINARY, counts BINARY, complete BINARY"
#: a partition lists this many times its even share of the rows asked for
SHARE_MARGIN = 1.5
#: up to this many chosen rows with integer ids are sent from the driver (a Connect plan stays small)
DRIVER_ROWS_MAX = 1_000_000


def per_partition(want: np.ndarray, partitions: int) -> np.ndarray:
    """Rows each partition lists per centroid: 1.5 x an even share, at least 4, at most ``want``."""
    share = np.ceil(want * SHARE_MARGIN / max(partitions, 1)).astype(np.int64) + 4
    return np.where(want > 0, np.minimum(share, want), 0)


def _list_candidates(blocks, payload):
    centroids, cursor_sims, cursor_keys, want = payload
    got = top_candidates(((b.keys, b.vectors) for b in blocks), centroids, cursor_sims, cursor_keys, want)
    yield pa.record_batch({
        "k": pa.array([got.keys.shape[0]], pa.int32()), "c": pa.array([got.keys.shape[1]], pa.int32()),
        "keys": pa.array([got.keys.tobytes()], pa.binary()), "sims": pa.array([got.sims.tobytes()], pa.binary()),
        "counts": pa.array([got.counts.tobytes()], pa.binary()), "complete": pa.array([got.complete.tobytes()], pa.binary()),
    })


def _candidates(row: dict) -> Candidates:
    k, c = row["k"], row["c"]
    return Candidates(
        np.frombuffer(row["keys"], np.int64).reshape(k, c), np.frombuffer(row["sims"], np.float32).reshape(k, c),
        np.frombuffer(row["counts"], np.int64), np.frombuffer(row["complete"], np.bool_),
    )


def spark_fetch(blocks, centroids: np.ndarray, *, label: str = "coreset") -> Fetch:
    """``fetch`` over the pool's :class:`~lakecurate.spark.blocks.EmbeddingBlocks` (unit rows)."""
    k = centroids.shape[0]
    centroids = np.ascontiguousarray(centroids, np.float32)
    state = {"pass": 0}

    def fetch(queried, cursor_sims, cursor_keys, want):
        state["pass"] += 1
        w = np.zeros(k, np.int64)
        w[queried] = per_partition(np.asarray(want, np.int64), blocks.num_partitions)
        what = (f"{label}: candidates for all {k} centroids" if len(queried) == k
                else f"{label}: pass {state['pass']}, more candidates for {len(queried)} of {k} centroids")
        with progress(blocks.spark, what, rows=blocks.n):
            rows = blocks.collect(_list_candidates, _CANDIDATES_DDL, payload=(centroids, cursor_sims, cursor_keys, w))
        merged = merge_candidates([_candidates(r) for r in rows], queried)
        log.info("%s: %d candidate rows for %d centroid(s) from %d partitions", what, sum(m[0].shape[0] for m in merged),
                 len(queried), len(rows))
        return merged

    return fetch


def chosen_schema(id_type):
    from pyspark.sql import types as T

    return T.StructType([
        T.StructField("id", id_type, False), T.StructField("centroid", T.IntegerType(), False),
        T.StructField("similarity", T.FloatType(), False), T.StructField("round", T.IntegerType(), False),
    ])


def _chosen_rows(blocks, payload):
    keys, centroid, similarity, rnd = payload
    for b in blocks:
        pos = np.searchsorted(keys, b.keys)
        pos = np.minimum(pos, max(keys.shape[0] - 1, 0))
        hit = np.flatnonzero(keys[pos] == b.keys) if keys.shape[0] else np.zeros(0, np.int64)
        if hit.size == 0:
            continue
        at = pos[hit]
        yield pa.record_batch({
            "id": b.ids.take(pa.array(hit)), "centroid": pa.array(centroid[at], pa.int32()),
            "similarity": pa.array(similarity[at], pa.float32()), "round": pa.array(rnd[at], pa.int32()),
        })


def chosen_frame(blocks, result):
    """The chosen rows as a DataFrame (id, centroid, similarity, round), ids as the input has them.

    An integer id is its own row key, so the driver builds the rows itself; string ids are
    looked up in one pass over the blocks."""
    from pyspark.sql import types as T

    schema = chosen_schema(blocks.id_type)
    if isinstance(blocks.id_type, (T.IntegerType, T.LongType, T.ShortType)) and result.keys.shape[0] <= DRIVER_ROWS_MAX:
        rows = pa.table({"id": pa.array(result.keys, pa.int64()), "centroid": pa.array(result.centroid, pa.int32()),
                         "similarity": pa.array(result.similarity, pa.float32()), "round": pa.array(result.round, pa.int32())})
        return blocks.spark.createDataFrame(rows.to_pandas(), schema=schema)
    payload = (result.keys, result.centroid, result.similarity, result.round)
    return blocks.map(_chosen_rows, schema, payload=payload)

