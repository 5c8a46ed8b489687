"""Training batches from a ``shards`` (or ``curated``) table: a streaming ``IterableDataset`` and a
map-style batch sampler, in three modes (:mod:`lakecurate.core.batching`) plus one shard alone.

:class:`ClusterBatches` streams: every (rank, DataLoader worker) slot takes a disjoint share of
the epoch's rows (:func:`~lakecurate.core.batching.split_rows`), reads its row groups a few at a
time, interleaved in slices, into a window of at most ``buffer_rows`` rows, orders the window
into batches with one gather, and yields them. Memory is the window plus one slice per open
file, whatever the table's size; the order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate.core.batching import MODES, check_mode, check_weights, epoch_generator, passes, split_rows, weighted_pass, window_batches
from lakecurate.torch.table import SHARD, ShardTable

try:
    import torch
    from torch.utils.data import IterableDataset, Sampler, get_worker_info
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("lakecurate.torch needs PyTorch: pip install 'lakecurate[torch]'") from exc

log = logging.getLogger(__name__)


def _check_int(value, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{where}={value!r} must be an integer >= {minimum}")
    return int(value)


def distributed_slot(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    """``(rank, world_size)``: as given, else from ``torch.distributed`` when it is initialised, else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank, world_size = rank or 0, world_size or 1
    world_size = _check_int(world_size, "world_size", 1)
    rank = _check_int(rank, "rank", 0)
    if rank >= world_size:
        raise ValueError(f"rank={rank} must be below world_size={world_size}")
    return rank, world_size


class ClusterBatches(IterableDataset):
    """Batches of a run's ``shards`` (or ``curated``) table, streamed with delta-rs/pyarrow.

    Use with ``DataLoader(ds, batch_size=None, num_workers=...)``; call :meth:`set_epoch` before
    each epoch. Every rank (``rank``/``world_size``, default from ``torch.distributed``) and worker
    gets a disjoint share of the rows; together they see every row exactly once per epoch
    (with ``cluster_weights``, a row of cluster c w_c times in expectation). All ranks must use
    the same ``num_workers``.

    Each item is ``transform(batch)`` where ``batch`` is a ``pyarrow.RecordBatch`` of
    ``columns`` plus ``shard`` (the row's cluster at the level); without a transform, the batch.
    """

    def __init__(self, table: str, *, mode: str = "mixed", batch_size: int = 256, columns: Optional[Sequence[str]] = None,
                 transform: Optional[Callable[[pa.RecordBatch], object]] = None, run_id: Optional[str] = None,
                 level: Optional[int] = None, one_shard: Optional[int] = None, seed: int = 0, buffer_rows: int = 65536,
                 open_files: Optional[int] = None, slice_rows: int = 2048, read_threads: int = 2, drop_last: bool = False,
                 cluster_weights: Optional[dict] = None, rank: Optional[int] = None, world_size: Optional[int] = None,
                 storage_options: Optional[dict] = None, version: Optional[int] = None):
        super().__init__()
        self.mode = check_mode(mode)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.buffer_rows = _check_int(buffer_rows, "buffer_rows", 1)
        if self.buffer_rows < self.batch_size:
            raise ValueError(f"buffer_rows={buffer_rows} must be at least batch_size={batch_size}")
        self.slice_rows = _check_int(slice_rows, "slice_rows", 1)
        #: threads decoding row groups ahead of the consumer (Parquet decoding releases the GIL); 0: none
        self.read_threads = _check_int(read_threads, "read_threads", 0)
        self.seed = _check_int(seed, "seed", 0)
        self.weights = check_weights(cluster_weights)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.rank, self.world_size = distributed_slot(rank, world_size)
        self.table = ShardTable(table, run_id=run_id, level=level, shard=one_shard, columns=columns,
                                storage_options=storage_options, version=version)
        #: row groups open (decoded, interleaved) at once: the shards stage writes ~4 MiB row
        #: groups, other writers (a curated table) Spark's 128 MiB ones
        self.open_files = _check_int(open_files if open_files is not None else (32 if self.table.kind == "shards" else 4),
                                     "open_files", 1)
        self.epoch = 0
        log.info("%s table %s, run %s, level %d%s: %s rows in %d row groups of %d files; mode %s, batches of %d",
                 self.table.kind, table, self.table.run_id, self.table.level,
                 "" if one_shard is None else f", shard {one_shard}", self.table.num_rows if self.table.num_rows is not None else "?",
                 len(self.table.units), len(self.table.files), mode, batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration yields (call it on every rank before each epoch)."""
        self.epoch = _check_int(epoch, "epoch", 0)

    @property
    def num_rows(self) -> Optional[int]:
        return self.table.num_rows

    def slot(self) -> tuple[int, int]:
        """``(slot, n_slots)`` of this process: rank x DataLoader workers."""
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.rank * workers + worker, self.world_size * workers

    def __iter__(self) -> Iterator:
        slot, n_slots = self.slot()
        for batch in self.batches(slot, n_slots):
            yield batch if self.transform is None else self.transform(batch)

    # ------------------------------------------------------------------ the stream of one slot

    def batches(self, slot: int, n_slots: int) -> Iterator[pa.RecordBatch]:
        """Slot ``slot`` of ``n_slots``'s batches of the current epoch (no transform)."""
        held: list = []
        held_rows = 0
        rng = epoch_generator(self.seed, self.epoch, 0, 1 + slot)  # the windows' orders
        pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="lakecurate-read") if self.read_threads else None
        try:
            for part, clusters in self._all_slices(slot, n_slots, epoch_generator(self.seed, self.epoch, 1, 1 + slot), pool):
                held.append((part, clusters))
                held_rows += part.num_rows
                if held_rows >= self.buffer_rows:
                    carry, out = self._window(held, rng, final=False)
                    yield from out
                    held = [carry] if carry[0].num_rows else []
                    held_rows = carry[0].num_rows
            if held_rows:
                _, out = self._window(held, rng, final=True)
                yield from out
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _all_slices(self, slot: int, n_slots: int, rng, pool):
        """The slot's rows of every pass of the epoch, as (batch, clusters) slices."""
        units = self.table.units
        for p in range(passes(self.weights)):
            live = [i for i, u in enumerate(units) if p == 0 or self.weights is None or u.shard is None
                    or self.weights.get(u.shard, 1.0) > p]
            order = np.asarray(live, np.int64)[epoch_generator(self.seed, self.epoch, p).permutation(len(live))]
            yield from self._slices(split_rows([u.rows for u in units], order, n_slots, slot), rng, p, pool)

    def _slices(self, share, rng, pass_: int, pool):
        """The share's rows as slices, interleaved over ``open_files`` row groups at a time (chosen
        by ``rng``); the row groups are decoded whole by ``pool``'s threads, ahead, in the order
        they are opened, so the slices' order does not depend on the threads' timing."""
        pending = deque(share)
        readers: list = []  # per open row group: [future or list of slices, next slice]

        def read(unit, lo, hi):
            return list(self.table.read_unit(self.table.units[unit], lo, hi, slice_rows=self.slice_rows))

        while readers or pending:
            while len(readers) < self.open_files and pending:
                u, lo, hi = pending.popleft()
                readers.append([pool.submit(read, u, lo, hi) if pool is not None else read(u, lo, hi), 0])
            k = int(rng.integers(len(readers)))
            reader = readers[k]
            if not isinstance(reader[0], list):
                reader[0] = reader[0].result()
            if reader[1] >= len(reader[0]):
                readers.pop(k)
                continue
            part, clusters, rows = reader[0][reader[1]]
            reader[0][reader[1]] = None  # handed on: held by the window alone
            reader[1] += 1
            if self.weights is not None:
                keep = weighted_pass(clusters, rows, self.weights, self.seed, self.epoch, pass_)
                if not keep.all():
                    part, clusters = part.filter(pa.array(keep)), clusters[keep]
            if part.num_rows:
                yield part, clusters

    def _window(self, held, rng, *, final: bool):
        clusters = np.concatenate([c for _, c in held])
        order, bounds, rest = window_batches(clusters, self.mode, self.batch_size, rng, final=final)
        if not final and self.mode == "same_cluster" and rest.size > self.buffer_rows // 2:
            # many clusters, each with a part-filled batch: emit them short rather than hold them all
            log.info("same_cluster: %d rows of part-filled batches of %d clusters exceed half of buffer_rows=%d: emitted "
                     "as short batches (a larger buffer_rows, or a higher level, keeps batches full)",
                     rest.size, np.unique(clusters[rest]).size, self.buffer_rows)
            more, more_bounds, _ = window_batches(clusters[rest], self.mode, self.batch_size, rng, final=True)
            bounds = np.concatenate([bounds, bounds[-1] + more_bounds[1:]])
            order, rest = np.concatenate([order, rest[more]]), rest[:0]
        names = held[0][0].schema.names
        columns = gather([[b.column(i) for b, _ in held] for i in range(len(names))], np.concatenate([order, rest]))
        shard = pa.array(clusters[order], pa.int32())
        out = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            if self.drop_last and b - a < self.batch_size:
                continue
            out.append(pa.RecordBatch.from_arrays([c.slice(a, b - a) for c in columns] + [shard.slice(a, b - a)], names=[*names, SHARD]))
        k = order.size
        carry = pa.RecordBatch.from_arrays([c.slice(k) for c in columns], names=names)
        return (carry, clusters[rest]), out


def _fixed_rows(chunks: list) -> Optional[list]:
    """The chunks of a list column of equal-length numeric rows without nulls as (rows, d) numpy
    views (no copy), else None."""
    views, width = [], None
    for chunk in chunks:
        t = chunk.type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
            return None
        if chunk.null_count or len(chunk) == 0:
            if chunk.null_count:
                return None
            continue
        offsets = chunk.offsets.to_numpy()
        d = offsets[1] - offsets[0]
        if width is None:
            width = int(d)
        if d != width or not np.all(np.diff(offsets) == width):
            return None
        values = chunk.flatten()
        if values.null_count:
            return None
        views.append(values.to_numpy(zero_copy_only=True).reshape(len(chunk), width))
    return views


def gather(columns: list[list], order: np.ndarray) -> list:
    """Each column (a list of chunks) taken in ``order`` as one array: a column of equal-length
    numeric rows (embeddings) with one numpy scatter, any other with Arrow's take."""
    out = []
    for chunks in columns:
        views = _fixed_rows(chunks)
        if views is None or not views:
            out.append(pa.concat_arrays(chunks).take(pa.array(order)) if chunks else pa.array([]))
            continue
        inverse = np.empty(order.size, np.int64)
        inverse[order] = np.arange(order.size)
        # from Arrow's memory pool (it keeps freed memory for the next window; fresh pages from the
        # OS cost more than the copy on some machines); the batches share it, no copy
        dtype, width = views[0].dtype, views[0].shape[1]
        dense = np.frombuffer(pa.allocate_buffer(max(1, order.size * width * dtype.itemsize)), dtype,
                              count=order.size * width).reshape(order.size, width)
        at = 0
        for v in views:
            dense[inverse[at:at + v.shape[0]]] = v
            at += v.shape[0]
        offsets = pa.array(np.arange(0, (order.size + 1) * width, width, dtype=np.int32 if order.size * width < 2**31 else np.int64))
        kind = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
        out.append(kind.from_arrays(offsets, pa.array(dense.reshape(-1))))
    return out


class ClusterBatchSampler(Sampler):
    """Map-style batches of indices in the same modes: ``DataLoader(dataset, batch_sampler=...)``.

    ``clusters[i]`` is row i's cluster (``ShardTable(...).clusters()`` gives them in the order of
    ``ShardTable(...).read_all()``). Rank r of ``world_size`` takes every world_size-th batch of
    the epoch's order: disjoint, together every batch once (the ranks' counts differ by at most one).
    """

    def __init__(self, clusters: Sequence[int], batch_size: int, *, mode: str = "same_cluster", seed: int = 0,
                 drop_last: bool = False, cluster_weights: Optional[dict] = None, rank: Optional[int] = None,
                 world_size: Optional[int] = None):
        self.clusters = np.asarray(clusters, np.int64)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.mode = check_mode(mode)
        self.seed = _check_int(seed, "seed", 0)
        self.drop_last = bool(drop_last)
        self.weights = check_weights(cluster_weights)
        self.rank, self.world_size = distributed_slot(rank, world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_int(epoch, "epoch", 0)

    def _all(self) -> list[np.ndarray]:
        rows = np.arange(self.clusters.shape[0], dtype=np.int64)
        out = []
        for p in range(passes(self.weights)):
            keep = weighted_pass(self.clusters, rows, self.weights, self.seed, self.epoch, p)
            idx = rows[keep]
            order, bounds, _ = window_batches(self.clusters[idx], self.mode, self.batch_size,
                                              epoch_generator(self.seed, self.epoch, p), final=True)
            out += [idx[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:]) if not self.drop_last or b - a == self.batch_size]
        return out[self.rank::self.world_size]

    def __iter__(self):
        for batch in self._all():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self._all())


def to_tensors(batch: pa.RecordBatch, columns: Optional[Sequence[str]] = None) -> dict:
    """A transform: every numeric column as a tensor (a list<float> column of equal-length rows as
    an (n, d) tensor); other columns (text, bytes) as Python lists, for a tokenizer or decoder."""
    out = {}
    for name in columns or batch.schema.names:
        col = batch.column(name)
        t = col.type
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False) if len(col) else np.zeros(0)
            numeric = pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)
            if len(col) and numeric and col.null_count == 0 and lengths.min() == lengths.max():
                out[name] = torch.from_numpy(np.require(col.flatten().to_numpy(zero_copy_only=False), requirements="W").reshape(len(col), -1))
                continue
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            out[name] = torch.from_numpy(np.require(col.to_numpy(zero_copy_only=False), requirements="W"))
            continue
        out[name] = col.to_pylist()
    return out


__all__ = ["MODES", "ClusterBatchSampler", "ClusterBatches", "ShardTable", "distributed_slot", "to_tensors"]
