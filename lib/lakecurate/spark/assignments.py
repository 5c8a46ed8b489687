"""The ``assignments`` rows: every input row's cluster at every level, computed on the executors.

Each task labels its blocks' rows with their nearest level-1 centroid (the exact kernel the fit
used, so a row gets the label the fit gave it) and walks the path up the tree through the small
``parents`` arrays shipped with the centroids. No row comes back to the driver.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lakecurate.core.assign import nearest_centroid
from lakecurate.spark.blocks import EmbeddingBlocks


def assignment_rows(blocks: EmbeddingBlocks, centroids: np.ndarray, parents: list[np.ndarray], *, id_column: str = "id"):
    """DataFrame (id, row_key, cluster_1..cluster_T, distance) for every row of ``blocks``.

    ``parents[t]`` maps a level-(t+1) cluster to its level-(t+2) parent; ``distance`` is the
    squared distance to the level-1 centroid.
    """
    from pyspark.sql import types as T

    levels = len(parents) + 1
    fields = [T.StructField(id_column, blocks.id_type), T.StructField("row_key", T.LongType())]
    fields += [T.StructField(f"cluster_{t + 1}", T.IntegerType()) for t in range(levels)]
    fields.append(T.StructField("distance", T.FloatType()))
    schema = T.StructType(fields)
    names = [f.name for f in fields]

    def label(batches, payload):
        c, par = payload
        for b in batches:
            lab, dist = nearest_centroid(b.vectors, c)
            path = lab
            cols = [b.ids, pa.array(b.keys), pa.array(path.astype(np.int32))]
            for p in par:
                path = p[path]
                cols.append(pa.array(path.astype(np.int32)))
            cols.append(pa.array(dist.astype(np.float32)))
            yield pa.record_batch(cols, names=names)

    payload = (np.asarray(centroids, np.float32), [np.asarray(p, np.int64) for p in parents])
    return blocks.map(label, schema, payload)
