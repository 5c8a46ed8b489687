"""The Spark side of the assigner seam: the Lloyd loop's data questions answered on executors.

The embeddings are read once and cached as *blocks*: one row per Arrow batch holding the batch's
ids, int64 row keys and float32 vectors as raw bytes. Each Lloyd iteration then broadcasts the
k x d centroids and every task turns its blocks into numpy with ``np.frombuffer`` (no decoding of
list<float> columns), runs the same faiss kernels as the in-process assigner, and returns one
row of per-cluster partial counts and float64 sums. The driver adds those up: its memory is
O(k x d) whatever N is, and no O(N) data ever comes back to it.

Block files (``AssignTuning.cache = "local_files"``, the default): while the blocks are built,
each task also writes its blocks' keys and vectors as ``.npy`` files into its executor's Spark
work directory. A pass then runs over the cached DataFrame's two small ``part, seq`` columns only
(so every task is scheduled where its cached partition lives) and memory-maps its files instead of
receiving the vectors from the JVM over Arrow: the N x d stream per Lloyd iteration is gone, the
page cache serves the bytes. A task that finds its files missing (an executor was lost or
replaced, a task ran elsewhere) reports its partition, and the driver re-runs just those
partitions on the streamed blocks, so the result never depends on where tasks ran.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from lakecurate.core.assign import (
    Assignment,
    assign_batch,
    faiss_device,
    nearest_centroid,
    smallest_keys,
    top_r_per_cluster,
    use_gpu_device,
)
from lakecurate.core.keys import random_keys
from lakecurate.core.kmeans import normalize_rows
from lakecurate.errors import InputDataError
from lakecurate.spark.arrow import list_column_to_matrix, row_keys

log = logging.getLogger(__name__)

BLOCK_DDL = (
    "part INT, seq INT, n INT, ids_arrow BINARY, keys BINARY, vectors BINARY, "
    "n_null_id LONG, n_null_embedding LONG, n_bad_dim LONG, n_nonfinite LONG, examples STRING"
)
_MAX_EXAMPLES = 3


def _ipc_bytes(arr: pa.Array) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([("v", arr.type)])) as w:
        w.write_batch(pa.record_batch([arr], names=["v"]))
    return sink.getvalue().to_pybytes()


def _ipc_array(data: bytes) -> pa.Array:
    return pa.ipc.open_stream(pa.py_buffer(data) if isinstance(data, bytes) else data).read_all().column(0).combine_chunks()


def _block_arrays(row) -> tuple[np.ndarray, np.ndarray]:
    """(row keys, float32 vectors) of one cached block, without copying the vector bytes.

    ``row["keys"]`` / ``row["vectors"]`` are Arrow buffers (streamed blocks) or memory-mapped
    arrays (block files); either is viewed in place.
    """
    keys = np.frombuffer(row["keys"], dtype=np.int64)
    x = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(keys), -1)
    return keys, x


# ---------------------------------------------------------------- block files on the executors

_BLOCK_FILES = "lakecurate-blocks"


def _block_dir(cache_id: str) -> str:
    """This process's folder for a cache's block files: under Spark's per-application work dir
    (``SparkFiles``: the executor's work directory, removed with the application)."""
    from pyspark import SparkFiles

    return os.path.join(SparkFiles.getRootDirectory(), _BLOCK_FILES, cache_id)


def _block_paths(folder: str, part: int, seq: int) -> tuple[str, str]:
    stem = os.path.join(folder, f"p{part:05d}-s{seq:05d}")
    return stem + "-keys.npy", stem + "-vectors.npy"


def _save_npy(path: str, arr: np.ndarray) -> None:
    """Write atomically: a retried or speculative task never leaves a half-written file behind."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_block_files(cache_id: str, part: int, seq: int, keys: np.ndarray, x: np.ndarray) -> None:
    """Best effort: block files only speed passes up, so a full or read-only local disk must not
    fail the job; the partition's passes then run on the streamed blocks."""
    try:
        folder = _block_dir(cache_id)
        os.makedirs(folder, exist_ok=True)
        kp, vp = _block_paths(folder, part, seq)
        _save_npy(vp, np.ascontiguousarray(x, dtype=np.float32))
        _save_npy(kp, np.ascontiguousarray(keys, dtype=np.int64))
    except OSError as e:
        log.warning("block files for partition %d not written (%s): its passes will stream", part, e)


def _open_block_files(cache_id: str, metas: list[tuple[int, int, int]]) -> Optional[list[dict]]:
    """Memory-mapped blocks for ``(part, seq, n)`` entries; None when any file is missing or short."""
    folder = _block_dir(cache_id)
    out = []
    for part, seq, n in metas:
        if not n:  # a batch with no valid rows writes no files
            continue
        kp, vp = _block_paths(folder, part, seq)
        try:
            keys = np.load(kp, mmap_mode="r")
            x = np.load(vp, mmap_mode="r")
        except (FileNotFoundError, ValueError, OSError):
            return None
        if keys.shape[0] != n or x.shape[0] != n:
            return None
        out.append({"part": part, "seq": seq, "n": n, "keys": keys, "vectors": x})
    return out


@dataclass
class AssignTuning:
    """How the executors compute and combine one assignment pass (results are the same bits).

    The defaults are the fast choices; the others exist so ``bench/clustering.py`` can measure
    each optimisation one at a time.
    """

    #: faiss threads in a task: 0 = the task's cores (``spark.task.cpus``, so Spark's
    #: parallelism and faiss's do not fight), -1 = faiss's own default (every core of the machine
    #: in every task), n > 0 = exactly n
    faiss_threads: int = 0
    #: partial sums per batch: ``sparse`` one-hot matmul or ``add_at`` (np.add.at)
    sums: str = "sparse"
    #: partial results per partition: ``dense`` (k x d float64 per partition), ``sparse`` (only the
    #: partition's non-empty clusters, combined on the driver), ``shuffle`` (non-empty clusters as
    #: rows, summed per cluster on the executors, so the driver receives k rows whatever the
    #: number of partitions), ``auto`` = ``shuffle`` when the dense partials of all partitions
    #: would reach ``shuffle_min_bytes`` (the driver would otherwise receive that much), else ``sparse``
    partials: str = "auto"
    shuffle_min_bytes: int = 1 << 30  # e.g. k >= ~22k at d = 384 on 16 partitions
    #: how a pass gets the vectors: ``local_files`` (memory-mapped block files written next to
    #: the cached partitions; see module docstring) or ``spark`` (streamed from Spark's cache
    #: over Arrow every pass)
    cache: str = "local_files"

    def partials_for(self, k: int, d: int, partitions: int) -> str:
        if self.partials != "auto":
            return self.partials
        return "shuffle" if 8 * k * d * partitions >= self.shuffle_min_bytes else "sparse"


def _one_thread_per_core(faiss_threads: int = 0) -> None:
    """faiss gets the task's cores, not the machine's: Spark already runs one task per core.

    When Spark gave the task a GPU (``spark.task.resource.gpu.amount``) faiss searches on that one.
    """
    import faiss
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if faiss_threads == 0:
        faiss.omp_set_num_threads(max(1, ctx.cpus() if ctx is not None else 1))
    elif faiss_threads > 0:
        faiss.omp_set_num_threads(faiss_threads)
    if ctx is not None and faiss_device() == "gpu":
        gpus = ctx.resources().get("gpu")
        if gpus is not None and gpus.addresses:
            use_gpu_device(int(gpus.addresses[0]))


def _iter_blocks(batches) -> Iterator[dict]:
    """Rows of record batches (cached blocks, or a pass's collected results) as dicts; binary
    fields stay Arrow buffers (zero-copy into numpy)."""
    for batch in batches:
        names = batch.schema.names
        for i in range(batch.num_rows):
            row = {}
            for name in names:
                scalar = batch.column(name)[i]
                row[name] = scalar.as_buffer() if pa.types.is_binary(scalar.type) else scalar.as_py()
            yield row


def _make_blocks_fn(id_col: str, emb_col: str, dim: int, normalize: bool, cache_id: Optional[str] = None):
    def to_blocks(batches):
        from pyspark import TaskContext
        import pyarrow.compute as pc

        part = TaskContext.get().partitionId()
        for seq, batch in enumerate(batches):
            ids = batch.column(id_col)
            emb = batch.column(emb_col)
            null_id = ids.is_null().to_numpy(zero_copy_only=False)
            null_emb = emb.is_null().to_numpy(zero_copy_only=False)
            lengths = pc.fill_null(pc.list_value_length(emb), -1).to_numpy(zero_copy_only=False)
            bad_dim = ~null_emb & (lengths != dim)
            ok = ~null_id & ~null_emb & ~bad_dim
            ok_idx = np.flatnonzero(ok)
            x = list_column_to_matrix(emb.take(pa.array(ok_idx)), dim) if ok_idx.size else np.zeros((0, dim), np.float32)
            finite = np.isfinite(x).all(axis=1)
            examples = []
            id_list = ids.to_pylist() if not ok.all() or not finite.all() else None
            if id_list is not None:
                for j in np.flatnonzero(null_id)[:_MAX_EXAMPLES]:
                    examples.append({"row_in_batch": int(j), "problem": "null id"})
                for j in np.flatnonzero(null_emb & ~null_id)[:_MAX_EXAMPLES]:
                    examples.append({"id": id_list[j], "problem": f"null {emb_col}"})
                for j in np.flatnonzero(bad_dim & ~null_id)[:_MAX_EXAMPLES]:
                    examples.append({"id": id_list[j], "problem": f"{int(lengths[j])} values, expected {dim}"})
                for j in ok_idx[~finite][:_MAX_EXAMPLES]:
                    examples.append({"id": id_list[j], "problem": "NaN or infinite value"})
            keep = ok_idx[finite]
            kept_ids = ids.take(pa.array(keep))
            x = x[finite]
            if normalize:
                x = normalize_rows(x)
            keys = row_keys(kept_ids)
            if cache_id is not None and keep.size:
                _write_block_files(cache_id, part, seq, keys, x)
            yield pa.record_batch(
                {
                    "part": pa.array([part], pa.int32()),
                    "seq": pa.array([seq], pa.int32()),
                    "n": pa.array([keep.size], pa.int32()),
                    "ids_arrow": pa.array([_ipc_bytes(kept_ids)], pa.binary()),
                    "keys": pa.array([keys.tobytes()], pa.binary()),
                    "vectors": pa.array([np.ascontiguousarray(x).tobytes()], pa.binary()),
                    "n_null_id": pa.array([int(null_id.sum())], pa.int64()),
                    "n_null_embedding": pa.array([int((null_emb & ~null_id).sum())], pa.int64()),
                    "n_bad_dim": pa.array([int((bad_dim & ~null_id).sum())], pa.int64()),
                    "n_nonfinite": pa.array([int((~finite).sum())], pa.int64()),
                    "examples": pa.array([json.dumps(examples, default=str)], pa.string()),
                }
            )

    return to_blocks


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
        if problems:
            raise InputDataError(f"{where}: " + "; ".join(problems) + f"; examples: {json.dumps(self.examples[:6], default=str)}")


def _partition_assignment(blocks, centroids: np.ndarray, sums_method: str) -> Assignment:
    """Assignment statistics of one partition's blocks (every partial-aggregation form starts here)."""
    k, d = centroids.shape
    acc = Assignment.zeros(k, d)
    for b in blocks:
        _, x = _block_arrays(b)
        if x.shape[0]:
            acc = acc + assign_batch(x, centroids, sums_method)
    return acc


def _with_part(rb: pa.RecordBatch, part: pa.Array) -> pa.RecordBatch:
    """``rb`` plus the partition it came from and ``_missing = False`` (one value per row)."""
    n = rb.num_rows
    cols = list(rb.columns) + [pa.repeat(part[0], n) if n else pa.array([], pa.int32()), pa.array([False] * n, pa.bool_())]
    return pa.record_batch(cols, names=list(rb.schema.names) + ["_part", "_missing"])


class SparkAssigner:
    """Assigner over a cached DataFrame of embedding blocks (see module docstring)."""

    in_memory = False

    def __init__(self, spark, blocks, n: int, d: int, id_type, tuning: Optional[AssignTuning] = None, cache_id: Optional[str] = None):
        self.spark = spark
        self.tuning = tuning or AssignTuning()
        #: set when the blocks were also written as block files (``from_dataframe``)
        self.cache_id = cache_id
        self.fallback_partitions = 0  # partitions re-run on streamed blocks (block files missing)
        self._partitions: Optional[int] = None
        self.blocks = blocks
        self.n = n
        self.d = d
        self.id_type = id_type
        self.passes = 0  # Spark jobs over the data, for the benchmark and the runs table

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
        normalize: bool = False,
        where: str = "input",
        tuning: Optional[AssignTuning] = None,
    ) -> tuple["SparkAssigner", InputReport]:
        """Validate and cache ``df``'s (id, embedding) rows as blocks; raises on bad input.

        ``normalize`` scales every row to unit norm once, here (cosine metric). With
        ``tuning.cache == "local_files"`` the blocks are also written as block files.
        """
        tuning = tuning or AssignTuning()
        if tuning.cache not in ("local_files", "spark"):
            raise ValueError(f"AssignTuning.cache={tuning.cache!r} is not one of ['local_files', 'spark']")
        cache_id = uuid.uuid4().hex if tuning.cache == "local_files" else None
        from pyspark import StorageLevel
        from pyspark.sql import functions as F
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
        first = df.where(F.col(embedding_column).isNotNull()).select(F.size(embedding_column).alias("d")).first()
        if first is None:
            raise InputDataError(f"{where} is empty: no rows with an embedding")
        dim = int(first["d"])
        if dim <= 0:
            raise InputDataError(f"{where}: the first embedding has {dim} values")
        src = df.select(id_column, embedding_column)
        parts = partitions or 2 * spark.sparkContext.defaultParallelism
        if src.rdd.getNumPartitions() != parts:
            src = src.repartition(parts)
        blocks = src.mapInArrow(_make_blocks_fn(id_column, embedding_column, dim, normalize, cache_id), BLOCK_DDL).persist(StorageLevel.MEMORY_AND_DISK)
        made = cls(spark, blocks, 0, dim, id_type, tuning, cache_id)
        meta = blocks.select("n", "n_null_id", "n_null_embedding", "n_bad_dim", "n_nonfinite", "examples").collect()
        report = InputReport(
            n_rows=sum(r["n"] for r in meta),
            dim=dim,
            n_null_id=sum(r["n_null_id"] for r in meta),
            n_null_embedding=sum(r["n_null_embedding"] for r in meta),
            n_bad_dim=sum(r["n_bad_dim"] for r in meta),
            n_nonfinite=sum(r["n_nonfinite"] for r in meta),
            examples=[e for r in meta for e in json.loads(r["examples"])],
        )
        try:
            report.raise_if_bad(where)
            if report.n_rows == 0:
                raise InputDataError(f"{where} is empty: 0 rows")
            dups = df.groupBy(id_column).count().where(F.col("count") > 1).limit(_MAX_EXAMPLES).collect()
            if dups:
                shown = ", ".join(f"{r[id_column]!r} x{r['count']}" for r in dups)
                raise InputDataError(f"{where}: id column {id_column!r} has duplicate ids, e.g. {shown}")
        except InputDataError:
            made.release()
            raise
        made.n = report.n_rows
        log.info(
            "%s: cached %d rows x %d dims in %d blocks over %d partitions%s", where, report.n_rows, dim, len(meta), parts,
            " (+ block files on the executors)" if cache_id else "",
        )
        return made, report

    @classmethod
    def from_numpy(cls, spark, x: np.ndarray, *, block_rows: int = 20_000, partitions: int = 0) -> "SparkAssigner":
        """Blocks from a driver-side matrix (levels 2..T above ``driver_max_rows``); row keys 0..n-1."""
        from pyspark import StorageLevel

        x = np.ascontiguousarray(x, dtype=np.float32)
        rows = []
        for seq, start in enumerate(range(0, x.shape[0], block_rows)):
            xb = x[start : start + block_rows]
            ids = pa.array(np.arange(start, start + xb.shape[0], dtype=np.int64))
            rows.append((0, seq, xb.shape[0], _ipc_bytes(ids), np.asarray(ids).tobytes(), xb.tobytes(), 0, 0, 0, 0, "[]"))
        parts = partitions or 2 * spark.sparkContext.defaultParallelism
        blocks = spark.createDataFrame(rows, BLOCK_DDL).repartition(min(parts, len(rows))).persist(StorageLevel.MEMORY_AND_DISK)
        from pyspark.sql import types as T

        return cls(spark, blocks, x.shape[0], x.shape[1], T.LongType())

    def _num_partitions(self) -> int:
        if self._partitions is None:
            self._partitions = self.blocks.rdd.getNumPartitions()
        return self._partitions

    def release(self) -> None:
        """Unpersist the blocks and delete the block files (best effort: Spark removes its work
        directories with the application anyway)."""
        if self.cache_id is not None:
            cache_id = self.cache_id
            self.cache_id = None

            def drop(batches):
                for _ in batches:
                    pass
                shutil.rmtree(_block_dir(cache_id), ignore_errors=True)
                yield pa.record_batch({"ok": pa.array([True])})

            try:  # one task per cached partition, where it lives: reaches every executor holding files
                self.blocks.select("part").mapInArrow(drop, "ok BOOLEAN").collect()
                from pyspark import SparkFiles

                shutil.rmtree(os.path.join(SparkFiles.getRootDirectory(), _BLOCK_FILES, cache_id), ignore_errors=True)
            except Exception as e:  # never mask the error that made us release
                log.warning("could not delete block files %s: %s", cache_id, e)
        self.blocks.unpersist()

    # ------------------------------------------------------------------ the seam

    def _run(self, fn, schema: str, payload) -> list:
        """``fn(blocks, payload)`` on every partition's blocks; the result rows in partition order.

        ``fn`` yields record batches of ``schema`` (BINARY columns). With block files each task
        memory-maps its partition's files; partitions whose files are missing are run again on
        the streamed blocks.
        """
        from pyspark.sql import functions as F

        bc = self.spark.sparkContext.broadcast(payload)
        self.passes += 1
        try:
            if self.cache_id is None:
                rows = self._pass_streamed(fn, schema, bc, self.blocks)
            else:
                rows, missing = self._pass_block_files(fn, schema, bc)
                if missing:
                    self.fallback_partitions += len(missing)
                    log.warning("block files missing for %d partition(s) %s: those run on the streamed blocks", len(missing), missing[:10])
                    rows += self._pass_streamed(fn, schema, bc, self.blocks.where(F.col("part").isin(missing)))
        finally:
            bc.unpersist()
        rows.sort(key=lambda r: r["_part"])  # stable: a partition's rows keep their order
        return rows

    def _pass_streamed(self, fn, schema: str, bc, blocks) -> list:
        threads = self.tuning.faiss_threads

        def wrapped(batches):
            from pyspark import TaskContext

            _one_thread_per_core(threads)
            part = pa.array([TaskContext.get().partitionId()], pa.int32())
            for rb in fn(_iter_blocks(batches), bc.value):
                yield _with_part(rb, part)

        return list(_iter_blocks(blocks.mapInArrow(wrapped, schema + ", _part INT, _missing BOOLEAN").toArrow().to_batches()))

    def _pass_block_files(self, fn, schema: str, bc) -> tuple[list, list[int]]:
        threads = self.tuning.faiss_threads
        cache_id = self.cache_id
        names = [c.strip().split()[0] for c in schema.split(",")]

        def wrapped(batches):
            from pyspark import TaskContext

            metas = []
            for b in batches:
                metas += zip(b.column("part").to_pylist(), b.column("seq").to_pylist(), b.column("n").to_pylist())
            tc_part = TaskContext.get().partitionId()
            blocks = _open_block_files(cache_id, sorted(metas))
            if blocks is None:  # this executor does not hold the files: the driver re-runs the partition
                cols = [pa.nulls(1, pa.binary()) for _ in names] + [pa.array([metas[0][0]], pa.int32()), pa.array([True])]
                yield pa.record_batch(cols, names=names + ["_part", "_missing"])
                return
            _one_thread_per_core(threads)
            part = pa.array([tc_part], pa.int32())
            for rb in fn(iter(blocks), bc.value):
                yield _with_part(rb, part)

        result = self.blocks.select("part", "seq", "n").mapInArrow(wrapped, schema + ", _part INT, _missing BOOLEAN").toArrow()
        rows = list(_iter_blocks(result.to_batches()))
        missing = sorted({r["_part"] for r in rows if r["_missing"]})
        return [r for r in rows if not r["_missing"]], missing

    def sample(self, size: int, salt: int) -> np.ndarray:
        # pass 1: the size smallest keys per partition -> the global cut-off key
        def smallest(blocks, payload):
            size_, salt_ = payload
            best_k = np.zeros(0, np.uint64)
            best_r = np.zeros(0, np.int64)
            for b in blocks:
                rows, _ = _block_arrays(b)
                k = np.concatenate([best_k, random_keys(rows, salt_)])
                r = np.concatenate([best_r, rows])
                pos = smallest_keys(k, r, size_)
                best_k, best_r = k[pos], r[pos]
            yield pa.record_batch({"keys": pa.array([best_k.tobytes()]), "rows": pa.array([best_r.tobytes()])})

        ks, rs = [], []
        for row in self._run(smallest, "keys BINARY, rows BINARY", (size, salt)):
            ks.append(np.frombuffer(row["keys"], np.uint64))
            rs.append(np.frombuffer(row["rows"], np.int64))
        k, r = np.concatenate(ks), np.concatenate(rs)
        chosen_rows = r[smallest_keys(k, r, size)]

        # pass 2: fetch exactly those rows' vectors
        def fetch(blocks, wanted):
            for b in blocks:
                rows, x = _block_arrays(b)
                hit = np.flatnonzero(np.isin(rows, wanted))
                if hit.size:
                    yield pa.record_batch({"rows": pa.array([rows[hit].tobytes()]), "vectors": pa.array([x[hit].tobytes()])})

        got_r, got_x = [], []
        for row in self._run(fetch, "rows BINARY, vectors BINARY", chosen_rows):
            got_r.append(np.frombuffer(row["rows"], np.int64))
            got_x.append(np.frombuffer(row["vectors"], np.float32).reshape(-1, self.d))
        rows_all, x_all = np.concatenate(got_r), np.concatenate(got_x)
        pos = {int(v): i for i, v in enumerate(rows_all)}
        return x_all[[pos[int(v)] for v in chosen_rows]]

    def assign(self, centroids: np.ndarray) -> Assignment:
        k, d = centroids.shape
        mode = self.tuning.partials_for(k, d, self._num_partitions())
        sums_method = self.tuning.sums
        if mode == "shuffle":
            return self._assign_shuffle(np.asarray(centroids, np.float32))

        def partial(blocks, c):
            acc = _partition_assignment(blocks, c, sums_method)
            if mode == "dense":
                cid = np.arange(k, dtype=np.int32)
            else:  # only the clusters this partition touched: at most its row count, not k
                cid = np.flatnonzero(acc.counts).astype(np.int32)
            yield pa.record_batch(
                {
                    "cid": pa.array([cid.tobytes()]),
                    "counts": pa.array([acc.counts[cid].tobytes()]),
                    "sums": pa.array([np.ascontiguousarray(acc.sums[cid]).tobytes()]),
                    "inertia": pa.array([acc.cluster_inertia[cid].tobytes()]),
                }
            )

        counts = np.zeros(k, np.int64)
        sums = np.zeros((k, d))
        per_cluster = np.zeros(k)
        # partitions arrive in partition order, so the float64 additions happen in a fixed order
        for row in self._run(partial, "cid BINARY, counts BINARY, sums BINARY, inertia BINARY", np.asarray(centroids, np.float32)):
            cid = np.frombuffer(row["cid"], np.int32)
            counts[cid] += np.frombuffer(row["counts"], np.int64)
            sums[cid] += np.frombuffer(row["sums"], np.float64).reshape(-1, d)
            per_cluster[cid] += np.frombuffer(row["inertia"], np.float64)
        return Assignment(counts, sums, float(per_cluster.sum()), per_cluster)

    def _assign_shuffle(self, centroids: np.ndarray) -> Assignment:
        """Per-cluster rows summed on the executors (large k): the driver receives k rows, once.

        Each partition emits one row per non-empty cluster; a shuffle by cluster id brings a
        cluster's rows together, where they are added in partition order (the order the driver
        would use), so the result is the same bits as the other forms.
        """
        from pyspark import TaskContext

        k, d = centroids.shape
        sums_method = self.tuning.sums
        threads = self.tuning.faiss_threads
        bc = self.spark.sparkContext.broadcast(centroids)
        self.passes += 1

        def partial(batches):
            _one_thread_per_core(threads)
            part = TaskContext.get().partitionId()
            acc = _partition_assignment(_iter_blocks(batches), bc.value, sums_method)
            cid = np.flatnonzero(acc.counts)
            for s in range(0, cid.size, 4096):
                sel = cid[s : s + 4096]
                yield pa.record_batch(
                    {
                        "cid": pa.array(sel.astype(np.int32)),
                        "part": pa.array(np.full(sel.size, part, np.int32)),
                        "count": pa.array(acc.counts[sel]),
                        "inertia": pa.array(acc.cluster_inertia[sel]),
                        "sum": pa.array([r.tobytes() for r in acc.sums[sel]], pa.binary()),
                    }
                )

        def combine(batches):
            tables = [pa.Table.from_batches([b]) for b in batches if b.num_rows]
            if not tables:
                return
            t = pa.concat_tables(tables)
            cid = t.column("cid").to_numpy()
            part = t.column("part").to_numpy()
            order = np.lexsort((part, cid))
            cid = cid[order]
            cnt = t.column("count").to_numpy()[order]
            ine = t.column("inertia").to_numpy()[order]
            vec = np.frombuffer(b"".join(t.column("sum").to_pylist()), np.float64).reshape(-1, d)[order]
            starts = np.flatnonzero(np.r_[True, cid[1:] != cid[:-1]])
            ends = np.r_[starts[1:], cid.size]
            out_s = np.zeros((starts.size, d))
            out_c = np.zeros(starts.size, np.int64)
            out_i = np.zeros(starts.size)
            for j in range(int(np.diff(np.r_[starts, cid.size]).max())):  # j-th partition of every cluster
                live = starts + j < ends
                rows = starts[live] + j
                out_s[live] += vec[rows]
                out_c[live] += cnt[rows]
                out_i[live] += ine[rows]
            yield pa.record_batch(
                {
                    "cid": pa.array(cid[starts].astype(np.int32)),
                    "count": pa.array(out_c),
                    "inertia": pa.array(out_i),
                    "sums": pa.array([r.tobytes() for r in out_s], pa.binary()),
                }
            )

        try:
            rows = self.blocks.mapInArrow(partial, "cid INT, part INT, count LONG, inertia DOUBLE, sum BINARY")
            combined = rows.repartition(max(1, self._num_partitions()), "cid").mapInArrow(combine, "cid INT, count LONG, inertia DOUBLE, sums BINARY")
            counts = np.zeros(k, np.int64)
            sums = np.zeros((k, d))
            per_cluster = np.zeros(k)
            table = combined.toArrow()
            if table.num_rows:
                cid = table.column("cid").to_numpy()
                counts[cid] = table.column("count").to_numpy()
                per_cluster[cid] = table.column("inertia").to_numpy()
                sums[cid] = np.frombuffer(b"".join(table.column("sums").to_pylist()), np.float64).reshape(-1, d)
        finally:
            bc.unpersist()
        return Assignment(counts, sums, float(per_cluster.sum()), per_cluster)

    def closest_per_cluster(self, centroids: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        def candidates(blocks, c):
            lab = np.zeros(0, np.int64)
            dist = np.zeros(0, np.float32)
            rows = np.zeros(0, np.int64)
            xs = np.zeros((0, c.shape[1]), np.float32)
            for b in blocks:
                rb, xb = _block_arrays(b)
                lb, db = nearest_centroid(xb, c)
                lab, dist, rows = np.r_[lab, lb], np.r_[dist, db], np.r_[rows, rb]
                xs = np.concatenate([xs, xb])
                keep = top_r_per_cluster(lab, dist, rows, r)
                lab, dist, rows, xs = lab[keep], dist[keep], rows[keep], xs[keep]
            yield pa.record_batch(
                {
                    "labels": pa.array([lab.tobytes()]),
                    "dist": pa.array([dist.tobytes()]),
                    "rows": pa.array([rows.tobytes()]),
                    "vectors": pa.array([xs.tobytes()]),
                }
            )

        parts = list(self._run(candidates, "labels BINARY, dist BINARY, rows BINARY, vectors BINARY", np.asarray(centroids, np.float32)))
        lab = np.concatenate([np.frombuffer(p["labels"], np.int64) for p in parts])
        dist = np.concatenate([np.frombuffer(p["dist"], np.float32) for p in parts])
        rows = np.concatenate([np.frombuffer(p["rows"], np.int64) for p in parts])
        xs = np.concatenate([np.frombuffer(p["vectors"], np.float32).reshape(-1, self.d) for p in parts])
        keep = top_r_per_cluster(lab, dist, rows, r)
        order = keep[np.argsort(rows[keep], kind="stable")]
        return rows[order], xs[order]

    def labels(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row labels collected to the driver, ordered by row key (levels > 1 only: O(k) rows)."""

        def label(blocks, c):
            for b in blocks:
                rows, x = _block_arrays(b)
                lab, dist = nearest_centroid(x, c)
                yield pa.record_batch({"rows": pa.array([rows.tobytes()]), "labels": pa.array([lab.tobytes()]), "dist": pa.array([dist.tobytes()])})

        parts = list(self._run(label, "rows BINARY, labels BINARY, dist BINARY", np.asarray(centroids, np.float32)))
        rows = np.concatenate([np.frombuffer(p["rows"], np.int64) for p in parts])
        lab = np.concatenate([np.frombuffer(p["labels"], np.int64) for p in parts])
        dist = np.concatenate([np.frombuffer(p["dist"], np.float32) for p in parts])
        order = np.argsort(rows, kind="stable")
        return lab[order], dist[order]

    # ------------------------------------------------------------------ outputs

    def assignments(self, centroids: np.ndarray, parents: list[np.ndarray], *, id_column: str = "id"):
        """DataFrame (id, row_key, cluster_1..cluster_T, distance) for every row, computed on executors.

        ``parents[t]`` maps a level-(t+1) cluster to its level-(t+2) parent; the path above level 1
        is looked up from those small arrays, broadcast with the centroids.
        """
        from pyspark.sql import types as T

        levels = len(parents) + 1
        fields = [T.StructField(id_column, self.id_type), T.StructField("row_key", T.LongType())]
        fields += [T.StructField(f"cluster_{t + 1}", T.IntegerType()) for t in range(levels)]
        fields.append(T.StructField("distance", T.FloatType()))
        schema = T.StructType(fields)
        bc = self.spark.sparkContext.broadcast((np.asarray(centroids, np.float32), [np.asarray(p, np.int64) for p in parents]))
        names = [f.name for f in fields]

        threads = self.tuning.faiss_threads

        def label(batches):
            _one_thread_per_core(threads)
            c, par = bc.value
            for b in _iter_blocks(batches):
                rows, x = _block_arrays(b)
                ids = _ipc_array(b["ids_arrow"])
                lab, dist = nearest_centroid(x, c)
                cols = [ids, pa.array(rows)]
                path = lab
                cols.append(pa.array(path.astype(np.int32)))
                for p in par:
                    path = p[path]
                    cols.append(pa.array(path.astype(np.int32)))
                cols.append(pa.array(dist.astype(np.float32)))
                yield pa.record_batch(cols, names=names)

        self.passes += 1
        return self.blocks.mapInArrow(label, schema)
