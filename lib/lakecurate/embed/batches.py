"""One Arrow batch of raw rows in, embedded rows and rejected rows out (no Spark import).

The executor half of the embed stage calls :func:`encode_record_batch` on every batch with the
process's cached :class:`~lakecurate.embed.encoders.Encoder`; everything about the rows' fate
(embedded, or rejected with a reason) is decided here, so it can be tested without Spark.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from lakecurate.embed.encoders import Encoder, find_text_rejects
from lakecurate.spark.arrow import matrix_to_list_array

#: the output columns of an encoded batch besides the id and the pass-through columns
EMBEDDING = "embedding"
REASON = "reason"


def encode_record_batch(
    encoder: Encoder,
    batch: pa.RecordBatch,
    *,
    id_column: str,
    payload_column: str,
    passthrough: Sequence[str],
    oversized_column: Optional[str] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> Iterator[pa.RecordBatch]:
    """One Arrow batch -> a batch of embedded rows and a batch of rejected rows (either may be absent).

    Output columns: id, embedding (null for a reject), reason (null when embedded), passthrough.
    Every input row comes out exactly once. ``oversized_column`` (files) holds the size of a file
    that was too large to read (its payload is null), else null. ``progress`` hears of rows as the
    model gets through them (a few model batches at a time), each input row once in all.
    """
    n = batch.num_rows
    if n == 0:
        return
    ids = batch.column(id_column)
    payload = batch.column(payload_column).to_pylist()
    reasons: dict[int, str] = {}
    if oversized_column is not None:
        limit = encoder.spec.max_bytes
        for i, size in enumerate(batch.column(oversized_column).to_pylist()):
            if size is not None:
                reasons[i] = f"file is {size} bytes, over encoder.max_bytes={limit}"
    for i in np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False)):
        reasons[int(i)] = "null id"
    usable = [i for i in range(n) if i not in reasons]
    items = [payload[i] for i in usable]
    if encoder.modality == "text":
        for j, reason in find_text_rejects(items):
            reasons[usable[j]] = reason
        kept = [i for i in usable if i not in reasons]
        if progress is not None:
            progress(len(reasons))
        emb = encoder.encode_texts([payload[i] for i in kept], progress=progress)
    else:
        if progress is not None:
            progress(n - len(usable))
        result = encoder.encode_images(items, progress=progress)
        for j, reason in result.rejects:
            reasons[usable[j]] = reason
        kept = [usable[j] for j in result.kept]
        emb = result.embeddings
    extra = [batch.column(c) for c in passthrough]
    names = [id_column, EMBEDDING, REASON, *passthrough]
    if kept:
        take = pa.array(kept, pa.int64())
        yield pa.RecordBatch.from_arrays(
            [ids.take(take), matrix_to_list_array(emb), pa.nulls(len(kept), pa.string())] + [c.take(take) for c in extra],
            names=names,
        )
    if reasons:
        order = sorted(reasons)
        take = pa.array(order, pa.int64())
        yield pa.RecordBatch.from_arrays(
            [ids.take(take), pa.nulls(len(order), pa.list_(pa.float32())), pa.array([reasons[i] for i in order], pa.string())]
            + [c.take(take) for c in extra],
            names=names,
        )
