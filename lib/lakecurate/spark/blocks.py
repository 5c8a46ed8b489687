"""The cached embedding blocks: how every Spark stage gets at the vectors.

The input embeddings are read once, validated (null ids, null or wrong-length embeddings,
NaN/inf, duplicate ids: one :class:`InputReport` for the whole input) and cached as *blocks*: one
row per Arrow batch holding the batch's ids (Arrow IPC bytes), int64 row keys and float32 vectors
as raw bytes, so a pass turns them into numpy with ``np.frombuffer`` instead of decoding
``list<float>`` rows. Every stage then maps a function over the blocks with one of two calls:

* :meth:`EmbeddingBlocks.map` -> a DataFrame (lazy): the function's record batches, e.g. the
  ``assignments`` rows, de-duplication's routed rows;
* :meth:`EmbeddingBlocks.collect` -> the function's rows on the driver, in partition order: the
  k-means passes' small partial results. Where the executors hold block files
  (:mod:`lakecurate.spark.block_files`), a collect pass memory-maps them instead of streaming the
  vectors from the JVM; a partition whose files are missing is re-run on the streamed blocks, so
  the result never depends on where tasks ran.

The mapped function is ``fn(blocks, payload) -> iterator of pyarrow.RecordBatch``: ``blocks``
yields :class:`Block` views, ``payload`` is a driver-side object (e.g. the centroids)
shipped to every task in the closure, or through a file in the lake when it is large
(:func:`lakecurate.spark.tasks.ship_to_tasks`). Both calls give the task faiss threads equal to its cores (and its GPU).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa

from lakecurate.errors import ConfigError, InputDataError, LakecurateError
from lakecurate.spark.arrow import list_column_to_matrix, row_keys
from lakecurate.lake.pieces import InputFiles, first_width, read_piece
from lakecurate.lake.pieces import assign as assign_pieces
from lakecurate.lake.pieces import split as split_pieces
from lakecurate.spark.block_files import delete_block_files, open_block_files, write_block_files
from lakecurate.config import BLOCK_CACHES
from lakecurate.spark.cache import Kept, keep, resolve
from lakecurate.spark.progress import progress
from lakecurate.spark.session import default_parallelism
from lakecurate.spark import tasks
from lakecurate.validation import unusable_rows
from lakecurate.spark.tasks import (PayloadFiles, batches_with_partition, configure_faiss, set_task_partition, ship_to_tasks,
                                   with_task_partition)

log = logging.getLogger(__name__)

BLOCK_DDL = (
    "part INT, seq INT, n INT, ids_arrow BINARY, keys BINARY, vectors BINARY, "
    "n_null_id LONG, n_null_embedding LONG, n_bad_dim LONG, n_nonfinite LONG, n_unusable LONG, examples STRING"
)
#: how passes read the vectors (:mod:`lakecurate.spark.cache`): memory-mapped block files on the
#: executors, Spark's cache, or Parquet staged in the lake (no cache at all); ``auto`` picks
CACHES = BLOCK_CACHES
_MAX_EXAMPLES = 3

BlockFn = Callable[[Iterator["Block"], Any], Iterator[pa.RecordBatch]]


# ---------------------------------------------------------------- Arrow IPC of one array


def array_to_ipc(arr: pa.Array) -> bytes:
    """One Arrow array as IPC stream bytes (a binary cell that keeps any id type exactly)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([("v", arr.type)])) as w:
        w.write_batch(pa.record_batch([arr], names=["v"]))
    return sink.getvalue().to_pybytes()


def ipc_to_array(data) -> pa.Array:
    return pa.ipc.open_stream(pa.py_buffer(data) if isinstance(data, bytes) else data).read_all().column(0).combine_chunks()


def rows_of(batches) -> Iterator[dict]:
    """Rows of record batches as dicts; binary cells stay Arrow buffers (zero-copy into numpy)."""
    for batch in batches:
        names = batch.schema.names
        for i in range(batch.num_rows):
            row = {}
            for name in names:
                scalar = batch.column(name)[i]
                row[name] = scalar.as_buffer() if pa.types.is_binary(scalar.type) else scalar.as_py()
            yield row


# ---------------------------------------------------------------- one block


@dataclass
class Block:
    """One cached batch of valid rows: row keys and float32 vectors, viewed in place (no copy)."""

    part: int
    seq: int
    keys: np.ndarray  # (n,) int64 row keys: the id, or a stable hash of a string id
    vectors: np.ndarray  # (n, d) float32
    ids_ipc: Any = None  # the rows' ids as Arrow IPC (streamed blocks; block files hold none)

    @property
    def n(self) -> int:
        return int(self.keys.shape[0])

    @property
    def ids(self) -> pa.Array:
        """The rows' ids as an Arrow array of the input's id type."""
        if self.ids_ipc is None:
            raise LakecurateError("this block came from block files, which hold keys and vectors only: map() it for ids")
        return ipc_to_array(self.ids_ipc)

    @classmethod
    def from_row(cls, row: dict) -> "Block":
        keys = np.frombuffer(row["keys"], dtype=np.int64)
        x = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(keys), -1)
        return cls(row["part"], row["seq"], keys, x, row.get("ids_arrow"))


def blocks_of(batches) -> Iterator[Block]:
    """The blocks in record batches of the cached block DataFrame."""
    for row in rows_of(batches):
        yield Block.from_row(row)


# ---------------------------------------------------------------- building blocks


@dataclass
class CheckedBatch:
    """One Arrow batch of the input after validation: its valid rows and what was wrong with the rest."""

    ids: pa.Array  # the valid rows' ids
    keys: np.ndarray  # their row keys
    vectors: np.ndarray  # (n, d) float32, transformed
    n_null_id: int
    n_null_embedding: int
    n_bad_dim: int
    n_nonfinite: int
    examples: list
    n_unusable: int = 0  # finite rows the metric cannot take (:func:`lakecurate.validation.unusable_rows`)


def check_batch(batch: pa.RecordBatch, id_col: str, emb_col: str, dim: int, transform: Optional[Callable],
                metric: Optional[str] = None) -> CheckedBatch:
    """Validate one batch of (id, embedding) rows: null ids, null or wrong-length embeddings, NaN/inf,
    and with ``metric`` the rows it cannot take (zero rows under cosine, squared norms outside float32)."""
    import pyarrow.compute as pc

    ids = batch.column(id_col)
    emb = batch.column(emb_col)
    null_id = ids.is_null().to_numpy(zero_copy_only=False)
    null_emb = emb.is_null().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(emb), -1).to_numpy(zero_copy_only=False)
    bad_dim = ~null_emb & (lengths != dim)
    ok = ~null_id & ~null_emb & ~bad_dim
    ok_idx = np.flatnonzero(ok)
    if ok_idx.size == len(emb):  # every row has an id and an embedding of the right length: no copy to take them
        x = list_column_to_matrix(emb, dim)
    else:
        x = list_column_to_matrix(emb.take(pa.array(ok_idx)), dim) if ok_idx.size else np.zeros((0, dim), np.float32)
    finite = np.isfinite(x).all(axis=1)
    unusable = np.zeros(finite.shape, bool)
    reasons = {}
    if metric is not None and finite.any():
        reasons = unusable_rows(x[finite], metric)
        for mask in reasons.values():
            unusable[np.flatnonzero(finite)[mask]] = True
    examples = []
    id_list = ids.to_pylist() if not ok.all() or not finite.all() or unusable.any() else None
    if id_list is not None:
        for j in np.flatnonzero(null_id)[:_MAX_EXAMPLES]:
            examples.append({"row_in_batch": int(j), "problem": "null id"})
        for j in np.flatnonzero(null_emb & ~null_id)[:_MAX_EXAMPLES]:
            examples.append({"id": id_list[j], "problem": f"null {emb_col}"})
        for j in np.flatnonzero(bad_dim & ~null_id)[:_MAX_EXAMPLES]:
            examples.append({"id": id_list[j], "problem": f"{int(lengths[j])} values, expected {dim}"})
        for j in ok_idx[~finite][:_MAX_EXAMPLES]:
            examples.append({"id": id_list[j], "problem": "NaN or infinite value"})
        finite_idx = ok_idx[finite]
        for reason, mask in reasons.items():
            for j in finite_idx[mask][:_MAX_EXAMPLES]:
                examples.append({"id": id_list[j], "problem": f"{reason}, metric {metric}"})
    usable = finite & ~unusable
    keep = ok_idx[usable]
    if keep.size == len(ids):
        kept_ids = ids
    else:
        kept_ids = ids.take(pa.array(keep))
        x = x[usable]
    if transform is not None:
        x = transform(x)
    return CheckedBatch(kept_ids, row_keys(kept_ids), x, int(null_id.sum()), int((null_emb & ~null_id).sum()),
                        int((bad_dim & ~null_id).sum()), int((~finite).sum()), examples, int(unusable.sum()))


def _make_blocks_fn(id_col: str, emb_col: str, dim: int, transform: Optional[Callable], cache_id: Optional[str],
                    metric: Optional[str] = None):
    def to_blocks(batches):
        part, batches = batches_with_partition(batches)
        for seq, batch in enumerate(batches):
            c = check_batch(batch, id_col, emb_col, dim, transform, metric)
            if cache_id is not None and c.keys.size:
                write_block_files(cache_id, part, seq, c.keys, c.vectors)
            yield _block_row(part, seq, c)

    return to_blocks


def _block_row(part: int, seq: int, c: "CheckedBatch") -> pa.RecordBatch:
    """One block as a row of :data:`BLOCK_DDL`."""
    return pa.record_batch(
        {
            "part": pa.array([part], pa.int32()),
            "seq": pa.array([seq], pa.int32()),
            "n": pa.array([c.keys.size], pa.int32()),
            "ids_arrow": pa.array([array_to_ipc(c.ids)], pa.binary()),
            "keys": pa.array([c.keys.tobytes()], pa.binary()),
            "vectors": pa.array([np.ascontiguousarray(c.vectors).tobytes()], pa.binary()),
            "n_null_id": pa.array([c.n_null_id], pa.int64()),
            "n_null_embedding": pa.array([c.n_null_embedding], pa.int64()),
            "n_bad_dim": pa.array([c.n_bad_dim], pa.int64()),
            "n_nonfinite": pa.array([c.n_nonfinite], pa.int64()),
            "n_unusable": pa.array([c.n_unusable], pa.int64()),
            "examples": pa.array([json.dumps(c.examples, default=str)], pa.string()),
        }
    )


def _make_file_blocks_fn(get, id_col: str, emb_col: str, dim: int, transform: Optional[Callable], cache_id: Optional[str],
                         metric: Optional[str], block_rows: int):
    """The task of :meth:`EmbeddingBlocks.from_files`: its row of ``spark.range`` names the task's
    share of the pieces (``get()`` -> (files, pieces per task)); their blocks out."""

    def read_blocks(batches):
        files, shares = get()
        for batch in batches:
            for part in batch.column("id").to_pylist():
                seq = 0
                for i in shares[part]:
                    for rb in read_piece(files, files.pieces[i], block_rows):
                        c = check_batch(rb, id_col, emb_col, dim, transform, metric)
                        if cache_id is not None and c.keys.size:
                            write_block_files(cache_id, part, seq, c.keys, c.vectors)
                        yield _block_row(part, seq, c)
                        seq += 1

    return read_blocks


#: an input of fewer pieces than tasks is spread over the tasks after the read from this size on
SPREAD_MIN_BYTES = 64 << 20


def _renumber_blocks_fn(cache_id: Optional[str]):
    """After :meth:`EmbeddingBlocks.from_files` spreads blocks over more tasks than read them: each
    block numbered in the partition it landed in (and its block files written there)."""

    def renumber(batches):
        part, batches = batches_with_partition(batches)
        seq = 0
        for batch in batches:
            batch = batch.drop_columns([tasks.TASK_PARTITION])
            seqs = range(seq, seq + batch.num_rows)
            seq += batch.num_rows
            if cache_id is not None:
                for at, keys, vectors, rows in zip(seqs, batch.column("keys").to_pylist(), batch.column("vectors").to_pylist(),
                                                   batch.column("n").to_pylist()):
                    if rows:
                        write_block_files(cache_id, part, at, np.frombuffer(keys, np.int64),
                                          np.frombuffer(vectors, np.float32).reshape(rows, -1))
            cols = {name: batch.column(name) for name in batch.schema.names}
            cols["part"] = pa.array([part] * batch.num_rows, pa.int32())
            cols["seq"] = pa.array(seqs, pa.int32())
            yield pa.record_batch(cols)

    return renumber


def _block_ids(name: str):
    """A task giving the ids of cached blocks (rows of their ``ids_arrow`` column) as column ``name``."""

    def ids_of(batches) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for data in batch.column("ids_arrow").to_pylist():
                ids = ipc_to_array(data)
                if len(ids):
                    yield pa.record_batch([ids], names=[name])

    return ids_of


#: Arrow id types a block takes, and the Spark type each is read back as
_ARROW_ID_TYPES = {"int16": "ShortType", "int32": "IntegerType", "int64": "LongType", "string": "StringType", "large_string": "StringType"}


def check_arrow_columns(schema: pa.Schema, id_column: str, embedding_column: str, where: str):
    """:func:`check_columns` for an input read as files: the id column's Spark type, or
    InputDataError naming what is wrong (same messages)."""
    from pyspark.sql import types as T

    missing = [c for c in (id_column, embedding_column) if c not in schema.names]
    if missing:
        raise InputDataError(f"{where}: column(s) {missing} not found; the input has columns {schema.names}")
    emb = schema.field(embedding_column).type
    listy = pa.types.is_list(emb) or pa.types.is_large_list(emb) or pa.types.is_fixed_size_list(emb)
    if not listy or not (pa.types.is_float32(emb.value_type) or pa.types.is_float64(emb.value_type)):
        raise InputDataError(f"{where}: column {embedding_column!r} must be array<float> or array<double>; got {emb}")
    id_type = schema.field(id_column).type
    name = _ARROW_ID_TYPES.get(str(id_type))
    if name is None:
        raise InputDataError(f"{where}: id column {id_column!r} must be an integer or string; got {id_type}")
    return getattr(T, name)()


def check_columns(df, id_column: str, embedding_column: str, where: str):
    """The id column's Spark type; InputDataError unless (id, embedding) are columns of usable types."""
    from pyspark.sql import types as T

    missing = [c for c in (id_column, embedding_column) if c not in df.columns]
    if missing:
        raise InputDataError(f"{where}: column(s) {missing} not found; the input has columns {df.columns}")
    emb_type = df.schema[embedding_column].dataType
    if not isinstance(emb_type, T.ArrayType) or not isinstance(emb_type.elementType, (T.FloatType, T.DoubleType)):
        raise InputDataError(f"{where}: column {embedding_column!r} must be array<float> or array<double>; got {emb_type.simpleString()}")
    id_type = df.schema[id_column].dataType
    if not isinstance(id_type, (T.IntegerType, T.LongType, T.ShortType, T.StringType)):
        raise InputDataError(f"{where}: id column {id_column!r} must be an integer or string; got {id_type.simpleString()}")
    return id_type


def small_input(df, *, id_column: str, embedding_column: str, where: str, max_rows: int,
                transform: Optional[Callable] = None, metric: Optional[str] = None) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """A small input (a coreset's target set) on the driver: (ids, row keys, float32 rows), sorted by
    row key, checked as :meth:`EmbeddingBlocks.from_dataframe` checks an input (one Spark job, no cache).

    InputDataError on bad rows, duplicate ids, no rows, or more than ``max_rows`` rows.
    """
    check_columns(df, id_column, embedding_column, where)
    table = df.select(id_column, embedding_column).limit(max_rows + 1).toArrow()
    if table.num_rows > max_rows:
        raise InputDataError(f"{where} has more than {max_rows} rows: a target set is brought to the driver whole")
    lengths = [len(v) for v in table.column(embedding_column).drop_null().slice(0, 1).to_pylist()]
    if not lengths:
        raise InputDataError(f"{where} is empty: no rows with an embedding")
    dim = lengths[0]
    if dim <= 0:
        raise InputDataError(f"{where}: the first embedding has {dim} values")
    checked = [check_batch(b, id_column, embedding_column, dim, transform, metric) for b in table.to_batches()]
    report = InputReport(
        n_rows=sum(c.keys.size for c in checked), dim=dim, n_null_id=sum(c.n_null_id for c in checked),
        n_null_embedding=sum(c.n_null_embedding for c in checked), n_bad_dim=sum(c.n_bad_dim for c in checked),
        n_nonfinite=sum(c.n_nonfinite for c in checked), examples=[e for c in checked for e in c.examples],
        n_unusable=sum(c.n_unusable for c in checked), metric=metric,
    )
    report.raise_if_bad(where)
    if report.n_rows == 0:
        raise InputDataError(f"{where} is empty: 0 rows")
    ids = pa.concat_arrays([c.ids for c in checked])
    keys = np.concatenate([c.keys for c in checked])
    x = np.concatenate([c.vectors for c in checked])
    uniq, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        dup = set(uniq[counts > 1][:_MAX_EXAMPLES].tolist())
        shown = ", ".join(sorted({repr(i) for i, k in zip(ids.to_pylist(), keys.tolist()) if k in dup}))
        raise InputDataError(f"{where}: id column {id_column!r} has duplicate ids, e.g. {shown}")
    order = np.argsort(keys, kind="stable")
    return ids.take(pa.array(order)), keys[order], x[order]


@dataclass
class InputReport:
    """What the blocking pass found in the input (all counts over the whole input)."""

    n_rows: int
    dim: int
    n_null_id: int = 0
    n_null_embedding: int = 0
    n_bad_dim: int = 0
    n_nonfinite: int = 0
    examples: list = field(default_factory=list)
    n_unusable: int = 0
    metric: Optional[str] = None

    def raise_if_bad(self, where: str) -> None:
        problems = []
        if self.n_null_id:
            problems.append(f"{self.n_null_id} row(s) with a null id")
        if self.n_null_embedding:
            problems.append(f"{self.n_null_embedding} row(s) with a null embedding")
        if self.n_bad_dim:
            problems.append(f"{self.n_bad_dim} row(s) whose embedding does not have {self.dim} values (the first row's dimension)")
        if self.n_nonfinite:
            problems.append(f"{self.n_nonfinite} row(s) with NaN or infinite values")
        if self.n_unusable:
            problems.append(f"{self.n_unusable} row(s) that metric {self.metric!r} cannot take (zero rows have no direction "
                            "under cosine; squared norms must stay inside float32's range); remove or rescale them")
        if problems:
            raise InputDataError(f"{where}: " + "; ".join(problems) + f"; examples: {json.dumps(self.examples[:6], default=str)}")


def _with_part(rb: pa.RecordBatch, part: pa.Array) -> pa.RecordBatch:
    """``rb`` plus the partition it came from and ``_missing = False`` (one value per row)."""
    n = rb.num_rows
    cols = list(rb.columns) + [pa.repeat(part[0], n) if n else pa.array([], pa.int32()), pa.array([False] * n, pa.bool_())]
    return pa.record_batch(cols, names=list(rb.schema.names) + ["_part", "_missing"])


class EmbeddingBlocks:
    """The validated, cached blocks of an embeddings DataFrame (or a driver-side matrix).

    Attributes: ``n`` rows of ``d`` dimensions, ``id_type`` (the Spark type of the ids),
    ``report`` (what validation found), ``passes`` (Spark jobs run over the blocks),
    ``fallback_partitions`` (partitions re-run on streamed blocks because their files were missing).
    ``faiss_threads`` and ``read_block_files`` may be changed between passes (the benchmark does).
    """

    def __init__(self, spark, kept: Kept, n: int, d: int, id_type, *, partitions: int, report: Optional[InputReport] = None,
                 cache_id: Optional[str] = None, faiss_threads: int = 0, lake=None):
        self.spark = spark
        self._kept = kept
        #: the blocks (BLOCK_DDL): cached, or staged in the lake
        self.frame = kept.frame
        #: where the blocks live between passes: "local_files", "spark" or "lake"
        self.cache = "local_files" if cache_id is not None else kept.how
        self.n = n
        self.d = d
        self.id_type = id_type
        self.report = report if report is not None else InputReport(n_rows=n, dim=d)
        #: set when the executors also hold the blocks as block files
        self.cache_id = cache_id
        self.read_block_files = cache_id is not None
        self.faiss_threads = faiss_threads
        self.passes = 0
        self.fallback_partitions = 0
        self._partitions = partitions
        self._lake = lake
        self._payload_scratch = None  # a lake folder for payloads too large for a closure
        self._shipped: list[Callable[[], None]] = []  # frees the payloads of map() DataFrames

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dataframe(
        cls,
        spark,
        df,
        *,
        id_column: str,
        embedding_column: str,
        partitions: int = 0,
        transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        where: str = "input",
        cache: str = "auto",
        lake=None,
        metric: Optional[str] = None,
    ) -> "EmbeddingBlocks":
        """Validate and cache ``df``'s (id, embedding) rows as blocks; InputDataError on bad input.

        ``transform`` is applied once to every block's valid vectors as it is built (e.g.
        ``normalize_rows`` for cosine k-means, ``unit_rows`` for de-duplication); it must work row
        by row, so the result does not depend on the blocking. ``cache`` is one of
        :data:`CACHES`; ``lake`` (a :class:`~lakecurate.lake.Lake`) is where blocks are staged
        in ``lake`` mode and where payloads too large for a closure travel. ``metric`` (``l2``,
        ``cosine``) refuses the rows it cannot take (:func:`lakecurate.validation.unusable_rows`),
        counted with example ids like every other bad row.
        """
        if cache not in CACHES:
            raise ConfigError(f"cache={cache!r} is not one of {list(CACHES)}")
        mode = resolve(spark, cache)
        cache_id = uuid.uuid4().hex if mode == "local_files" else None
        from pyspark.sql import functions as F

        id_type = check_columns(df, id_column, embedding_column, where)
        first = df.where(F.col(embedding_column).isNotNull()).select(F.size(embedding_column).alias("d")).first()
        if first is None:
            raise InputDataError(f"{where} is empty: no rows with an embedding")
        dim = int(first["d"])
        if dim <= 0:
            raise InputDataError(f"{where}: the first embedding has {dim} values")
        parts = partitions or 2 * default_parallelism(spark)
        src = with_task_partition(df.select(id_column, embedding_column).repartition(parts))
        built = src.mapInArrow(_make_blocks_fn(id_column, embedding_column, dim, transform, cache_id, metric), BLOCK_DDL)
        log.info("%s: reading (through Spark), checking and caching the embeddings (%s) over %d partitions", where, mode, parts)

        def duplicates():
            return df.groupBy(id_column).count().where(F.col("count") > 1).limit(_MAX_EXAMPLES).collect()

        return cls._finish(spark, built, dim, id_type, parts=parts, mode=mode, cache_id=cache_id, lake=lake, where=where,
                           metric=metric, id_column=id_column, duplicates=duplicates)

    @classmethod
    def from_files(
        cls,
        spark,
        files: InputFiles,
        *,
        id_column: str,
        embedding_column: str,
        partitions: int = 0,
        transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        cache: str = "auto",
        lake=None,
        metric: Optional[str] = None,
        block_rows: int = 20_000,
    ) -> "EmbeddingBlocks":
        """:meth:`from_dataframe` for an input that is files (:mod:`lakecurate.lake.pieces`): each
        task reads its pieces itself with pyarrow, ``block_rows`` rows a block, one file's batches
        at a time, so no ``list<float>`` passes through the JVM; the checks, the row keys and the
        cache modes are the same, and so is every result computed from the blocks."""
        if cache not in CACHES:
            raise ConfigError(f"cache={cache!r} is not one of {list(CACHES)}")
        where = files.where
        id_type = check_arrow_columns(files.schema, id_column, embedding_column, where)
        dim = first_width(files, embedding_column)
        if dim is None:
            raise InputDataError(f"{where} is empty: no rows with an embedding")
        if dim <= 0:
            raise InputDataError(f"{where}: the first embedding has {dim} values")
        mode = resolve(spark, cache)
        cache_id = uuid.uuid4().hex if mode == "local_files" else None
        wanted = partitions or 2 * default_parallelism(spark)
        files = split_pieces(files, wanted)
        readers = max(1, min(wanted, len(files.pieces)))
        # fewer pieces than tasks (a large file of one row group): the blocks are spread over the
        # tasks after the read, so the passes use every core
        spread = readers < wanted and files.bytes >= SPREAD_MIN_BYTES
        parts = wanted if spread else readers
        scratch: list = []

        def payload_files() -> PayloadFiles:  # pieces too many for a closure (deletion vectors of many files)
            scratch.append(lake.scratch("input-pieces"))
            return PayloadFiles(scratch[0].path, scratch[0].options)

        get, ship_free = ship_to_tasks((files, assign_pieces(files.pieces, parts)), payload_files if lake is not None else None)

        def free() -> None:  # with the blocks: a cached partition Spark evicts is rebuilt from the pieces
            ship_free()
            for folder in scratch:
                folder.remove()

        reader = _make_file_blocks_fn(get, id_column, embedding_column, dim, transform, None if spread else cache_id, metric, block_rows)
        built = spark.range(0, readers, 1, readers).mapInArrow(reader, BLOCK_DDL)
        if spread:
            built = with_task_partition(built.repartition(parts)).mapInArrow(_renumber_blocks_fn(cache_id), BLOCK_DDL)
        log.info("%s: %d file piece(s), %.1f MB, read by the tasks with pyarrow, checked and cached (%s) over %d partitions%s",
                 where, len(files.pieces), files.bytes / 1e6, mode, parts, " (spread after the read)" if spread else "")

        return cls._finish(spark, built, dim, id_type, parts=parts, mode=mode, cache_id=cache_id, lake=lake, where=where,
                           metric=metric, id_column=id_column, duplicates=None, on_release=free)

    @classmethod
    def _finish(cls, spark, built, dim: int, id_type, *, parts: int, mode: str, cache_id, lake, where: str, metric,
                id_column: str, duplicates, on_release: Optional[Callable[[], None]] = None) -> "EmbeddingBlocks":
        """Cache the ``built`` blocks, sum their checks into an :class:`InputReport` and refuse bad
        input (bad rows, no rows, duplicate ids: from ``duplicates()`` or from the blocks' ids)."""
        from pyspark.sql import functions as F

        t0 = time.perf_counter()
        with progress(spark, f"{where}: caching the embeddings"):
            kept = keep(built, spark=spark, lake=lake, mode="lake" if mode == "lake" else "spark", what="embedding blocks")
            made = cls(spark, kept, 0, dim, id_type, partitions=parts, cache_id=cache_id, lake=lake)
            if on_release is not None:
                made._shipped.append(on_release)
            frame = kept.frame
            meta = frame.select("n", "n_null_id", "n_null_embedding", "n_bad_dim", "n_nonfinite", "n_unusable", "examples").collect()
        report = InputReport(
            n_rows=sum(r["n"] for r in meta),
            dim=dim,
            n_null_id=sum(r["n_null_id"] for r in meta),
            n_null_embedding=sum(r["n_null_embedding"] for r in meta),
            n_bad_dim=sum(r["n_bad_dim"] for r in meta),
            n_nonfinite=sum(r["n_nonfinite"] for r in meta),
            examples=[e for r in meta for e in json.loads(r["examples"])],
            n_unusable=sum(r["n_unusable"] for r in meta),
            metric=metric,
        )
        t_read = time.perf_counter() - t0
        try:
            report.raise_if_bad(where)
            if report.n_rows == 0:
                raise InputDataError(f"{where} is empty: 0 rows")
            if duplicates is not None:
                dups = duplicates()
            else:  # the ids of the cached blocks (their ids column alone): no second read of the input
                ids = made.frame.select("ids_arrow").mapInArrow(_block_ids(id_column), f"`{id_column}` {id_type.simpleString()}")
                dups = ids.groupBy(id_column).count().where(F.col("count") > 1).limit(_MAX_EXAMPLES).collect()
            if dups:
                shown = ", ".join(f"{r[id_column]!r} x{r['count']}" for r in dups)
                raise InputDataError(f"{where}: id column {id_column!r} has duplicate ids, e.g. {shown}")
        except InputDataError:
            made.release()
            raise
        made.n = report.n_rows
        made.report = report
        log.info(
            "%s: cached %d rows x %d dims in %d blocks over %d partitions (%s) in %.1fs, ids checked unique in %.1fs", where,
            report.n_rows, dim, len(meta), parts,
            {"local_files": "Spark's cache + block files on the executors", "spark": "Spark's cache", "lake": "staged in the lake"}[made.cache],
            t_read, time.perf_counter() - t0 - t_read,
        )
        return made

    @classmethod
    def from_numpy(cls, spark, x: np.ndarray, *, block_rows: int = 20_000, partitions: int = 0, cache: str = "auto",
                   lake=None) -> "EmbeddingBlocks":
        """Blocks of a driver-side matrix (levels 2..T above ``driver_max_rows``); row keys 0..n-1.

        A matrix too large to send in a query plan (Spark Connect's messages are capped) is
        written as Parquet into the lake by this process and read from there."""
        from pyspark.sql import types as T

        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = partitions or 2 * default_parallelism(spark)
        n_blocks = max(1, -(-x.shape[0] // block_rows))
        parts = min(parts, n_blocks)
        rows = []
        for seq, start in enumerate(range(0, x.shape[0], block_rows)):
            xb = x[start : start + block_rows]
            ids = pa.array(np.arange(start, start + xb.shape[0], dtype=np.int64))
            rows.append((seq % parts, seq, xb.shape[0], array_to_ipc(ids), np.asarray(ids).tobytes(), xb.tobytes(), 0, 0, 0, 0, 0, "[]"))
        mode = resolve(spark, cache)
        if lake is not None and (mode == "lake" or x.nbytes > tasks.CLOSURE_MAX_BYTES):
            scratch = lake.scratch("matrix")
            columns = list(zip(*rows))
            names = [c.strip().split()[0] for c in BLOCK_DDL.split(",")]
            types = [pa.int32(), pa.int32(), pa.int32(), pa.binary(), pa.binary(), pa.binary(), pa.int64(), pa.int64(), pa.int64(),
                     pa.int64(), pa.int64(), pa.string()]
            for part in range(parts):
                mine = [i for i in range(len(rows)) if rows[i][0] == part]
                table = pa.table([pa.array([columns[c][i] for i in mine], t) for c, t in enumerate(types)], names=names)
                lake.write_scratch_parquet(scratch, f"data/part-{part:05d}.parquet", table)
            kept = Kept(spark.read.parquet(lake.spark_path(f"{scratch.path}/data")), "lake", scratch=scratch)
        else:
            kept = keep(spark.createDataFrame(rows, BLOCK_DDL).repartition(parts, "part").sortWithinPartitions("part", "seq"), spark=spark, lake=lake,
                        mode="lake" if mode == "lake" else "spark", what="matrix blocks")
        return cls(spark, kept, x.shape[0], x.shape[1], T.LongType(), partitions=parts, lake=lake)

    @property
    def num_partitions(self) -> int:
        return self._partitions

    def release(self) -> None:
        """Unpersist the blocks and delete the block files (best effort: Spark removes its work
        directories with the application anyway)."""
        if self.cache_id is not None:
            cache_id = self.cache_id
            self.cache_id = None
            self.read_block_files = False

            def drop(batches):
                for _ in batches:
                    pass
                delete_block_files(cache_id)
                yield pa.record_batch({"ok": pa.array([True])})

            try:  # one task per cached partition, where it lives: reaches every executor holding files
                self.frame.select("part").mapInArrow(drop, "ok BOOLEAN").collect()
                delete_block_files(cache_id)  # the driver's own, in local mode
            except Exception as e:  # never mask the error that made us release
                log.warning("could not delete block files %s: %s", cache_id, e)
        for free in self._shipped:
            free()
        self._shipped.clear()
        if self._payload_scratch is not None:
            self._payload_scratch.remove()
            self._payload_scratch = None
        self._kept.release()

    # ------------------------------------------------------------------ mapping a function over the blocks

    def map(self, fn: BlockFn, schema, payload: Any = None):
        """``fn(blocks, payload)`` over every partition's streamed blocks, as a lazy DataFrame of ``schema``.

        The DataFrame may be read any number of times until :meth:`release`, which frees the
        payload; :meth:`mapped` frees it as soon as a ``with`` block ends.
        """
        df, free = self._map(fn, schema, payload)
        self._shipped.append(free)
        return df

    @contextmanager
    def mapped(self, fn: BlockFn, schema, payload: Any = None):
        """:meth:`map` for a DataFrame used only inside the ``with`` block (e.g. once per Lloyd iteration)."""
        df, free = self._map(fn, schema, payload)
        try:
            yield df
        finally:
            free()

    def ship(self, payload: Any):
        """``(get, free)`` for ``payload`` (:func:`~lakecurate.spark.tasks.ship_to_tasks`), with this
        input's lake folder for payloads too large for a closure."""
        return ship_to_tasks(payload, self._payload_files if self._lake is not None else None)

    def _payload_files(self) -> PayloadFiles:
        """The lake folder for this input's large payloads, made on first use, removed by :meth:`release`."""
        if self._payload_scratch is None:
            self._payload_scratch = self._lake.scratch("payloads")
        return PayloadFiles(self._payload_scratch.path, self._payload_scratch.options)

    def _map(self, fn: BlockFn, schema, payload: Any):
        get, free = self.ship(payload)
        threads = self.faiss_threads

        def run(batches):
            configure_faiss(threads)
            yield from fn(blocks_of(batches), get())

        self.passes += 1
        return self.frame.mapInArrow(run, schema), free

    def collect(self, fn: BlockFn, schema: str, payload: Any = None) -> list[dict]:
        """``fn(blocks, payload)`` on every partition; its result rows on the driver, in partition order.

        ``schema`` is a DDL string (binary columns for arrays). With block files each task
        memory-maps its partition's files; partitions whose files are missing are run again on
        the streamed blocks.
        """
        from pyspark.sql import functions as F

        get, free = self.ship(payload)
        self.passes += 1
        self._kept.touch()
        try:
            if not self.read_block_files:
                rows = self._collect_streamed(fn, schema, get, self.frame)
            else:
                rows, missing = self._collect_from_files(fn, schema, get)
                if missing:
                    self.fallback_partitions += len(missing)
                    log.warning("block files missing for %d partition(s) %s: those run on the streamed blocks", len(missing), missing[:10])
                    rows += self._collect_streamed(fn, schema, get, self.frame.where(F.col("part").isin(missing)))
        finally:
            free()
        rows.sort(key=lambda r: r["_part"])  # stable: a partition's rows keep their order
        return rows

    def _collect_streamed(self, fn: BlockFn, schema: str, get, frame) -> list:
        threads = self.faiss_threads

        def run(batches):  # fn once per partition the blocks were built in, whichever task reads them
            configure_faiss(threads)
            task, batches = batches_with_partition(batches)
            set_task_partition(task)
            for part, group in itertools.groupby(blocks_of(batches), key=lambda b: b.part):
                for rb in fn(group, get()):
                    yield _with_part(rb, pa.array([part], pa.int32()))

        return list(rows_of(with_task_partition(frame).mapInArrow(run, schema + ", _part INT, _missing BOOLEAN").toArrow().to_batches()))

    def _collect_from_files(self, fn: BlockFn, schema: str, get) -> tuple[list, list[int]]:
        threads = self.faiss_threads
        cache_id = self.cache_id
        names = [c.strip().split()[0] for c in schema.split(",")]

        def run(batches):
            tc_part, batches = batches_with_partition(batches)
            set_task_partition(tc_part)
            metas = []
            for b in batches:
                metas += zip(b.column("part").to_pylist(), b.column("seq").to_pylist(), b.column("n").to_pylist())
            if not metas:
                return
            opened = open_block_files(cache_id, sorted(metas))
            if opened is None:  # this executor does not hold the files: the driver re-runs the partition
                cols = [pa.nulls(1, pa.binary()) for _ in names] + [pa.array([metas[0][0]], pa.int32()), pa.array([True])]
                yield pa.record_batch(cols, names=names + ["_part", "_missing"])
                return
            configure_faiss(threads)
            part = pa.array([tc_part], pa.int32())
            for rb in fn((Block(p, s, np.asarray(k), np.asarray(x)) for p, s, k, x in opened), get()):
                yield _with_part(rb, part)

        result = with_task_partition(self.frame.select("part", "seq", "n")).mapInArrow(run, schema + ", _part INT, _missing BOOLEAN").toArrow()
        rows = list(rows_of(result.to_batches()))
        missing = sorted({r["_part"] for r in rows if r["_missing"]})
        return [r for r in rows if not r["_missing"]], missing

