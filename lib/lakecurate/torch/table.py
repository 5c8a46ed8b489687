"""One run's rows of a ``shards`` or ``curated`` table, read with delta-rs and pyarrow (no Spark).

:class:`ShardTable` resolves the run, the level and the shard, checks the columns, and lists the
table's row groups (the unit a loader reads); :meth:`ShardTable.read_unit` streams one row
group's rows in slices. On a ``shards`` table (partitioned by ``shard``) a shard's rows are
whole files, and only those files are ever opened; on a ``curated`` table the cluster at the
level comes from the ``path`` column and every file is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakecurate.errors import InputDataError, TableError
from lakecurate.lake.delta import Snapshot
from lakecurate.lake.paths import filesystem

log = logging.getLogger(__name__)

RUN_ID = "run_id"
SHARD = "shard"


@dataclass(frozen=True)
class Unit:
    """One row group of one data file: what a loader reads at a time."""

    file: int  # index into ShardTable.files
    row_group: int
    rows: int
    first_row: int  # its first row's number in the table's order (files, then row groups)
    shard: Optional[int]  # the shard of every row, when the file is one shard's (shards tables)


class ShardTable:
    """A run's rows of a ``shards`` table (or a ``curated`` one) at a level, optionally one shard."""

    def __init__(self, path: str, *, run_id: Optional[str] = None, level: Optional[int] = None, shard: Optional[int] = None,
                 columns: Optional[Sequence[str]] = None, storage_options: Optional[dict] = None, version: Optional[int] = None):
        self.path = path
        self.options = storage_options
        snap = Snapshot(path, storage_options=storage_options, version=version)
        if snap.column_mapping:
            raise TableError(f"{path!r} uses column mapping ({snap.column_mapping!r} mode): the loaders read lakecurate's shards and "
                             "curated tables, which lakecurate writes without it")
        schema, partitions = snap.schema, snap.partition_columns
        self.schema = schema
        names = schema.names
        if SHARD in partitions:
            self.kind = "shards"
        elif "path" in names and "cluster" in names:
            self.kind = "curated"
        else:
            raise TableError(f"{path!r} is neither a lakecurate shards table (partitioned by shard) nor a curated table "
                             f"(columns cluster, path); it has columns {names}")
        self.version, files = snap.version, snap.files()
        marked = [f.name for f in files if f.live is not None]
        if marked:
            raise TableError(f"{path!r} has rows deleted by deletion vectors in {len(marked)} file(s) (e.g. {marked[0]}); the loaders read "
                             "whole row groups and do not apply them: rewrite the table without them (REORG TABLE ... APPLY (PURGE)) "
                             "or write its shards again")
        runs = sorted({f.partition.get(RUN_ID) for f in files if f.partition.get(RUN_ID) is not None})
        if run_id is None:
            if len(runs) > 1:
                raise TableError(f"{path!r} holds the rows of {len(runs)} runs {runs[:10]}: give run_id")
            run_id = runs[0] if runs else None
        elif run_id not in runs:
            raise TableError(f"{path!r} has no rows of run {run_id!r}; it holds run(s) {runs[:10]}")
        if run_id is None:
            raise TableError(f"{path!r} has no rows")
        self.run_id = run_id
        files = [f for f in files if f.partition.get(RUN_ID) == run_id]
        self.shards = sorted({int(f.partition[SHARD]) for f in files}) if self.kind == "shards" else None
        if shard is not None:
            shard = int(shard)
            if self.kind == "shards":
                if shard not in self.shards:
                    raise TableError(f"shard {shard} is not in {path!r} for run {run_id!r}: it has {len(self.shards)} shards "
                                     f"({self.shards[0]}..{self.shards[-1]})")
                files = [f for f in files if int(f.partition[SHARD]) == shard]  # only its files are opened
        self.shard = shard
        self.level = self._resolve_level(files, level)
        self.files = files
        self.columns = self._resolve_columns(columns)
        self.units = self._units()
        self.num_rows = sum(u.rows for u in self.units) if self.shard is None or self.kind == "shards" else None

    # ------------------------------------------------------------------ resolution

    def _first_rows(self, files, columns: list[str], n: int = 1) -> pa.Table:
        with self._open(files[0].uri) as f:
            return pq.ParquetFile(f).read_row_group(0, columns=columns).slice(0, n)

    def _open(self, uri: str):
        fs, inner = filesystem(uri, self.options)
        return fs.open_input_file(inner)

    def _resolve_level(self, files, level: Optional[int]) -> int:
        if not files:
            return int(level or 1)
        if self.kind == "shards":
            got = self._first_rows(files, ["level"]).column("level")[0].as_py()
            if level is not None and int(level) != int(got):
                raise TableError(f"{self.path!r} holds the shards of run {self.run_id!r} at level {got}, not level {level}: "
                                 f"write them at level {level} (lakecurate shards CONFIG shards.level={level}) or read its curated table")
            return int(got)
        depth = len(self._first_rows(files, ["path"]).column("path")[0].as_py())
        level = 1 if level is None else int(level)
        if not 1 <= level <= depth:
            raise TableError(f"level={level} but the tree of run {self.run_id!r} in {self.path!r} has {depth} level(s): give 1..{depth}")
        return level

    def _resolve_columns(self, columns: Optional[Sequence[str]]) -> list[str]:
        names = [n for n in self.schema.names if n != RUN_ID]
        if columns is None:
            return [n for n in names if n != SHARD]
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise InputDataError(f"column(s) {unknown} are not in {self.path!r} ({self.kind} table); it has {names}")
        return [c for c in columns if c != SHARD]

    def _units(self) -> list[Unit]:
        units, first = [], 0
        self._metadata = []  # each file's footer, parsed once: read_unit opens the file with it
        for i, f in enumerate(self.files):
            with self._open(f.uri) as handle:
                meta = pq.ParquetFile(handle).metadata
            self._metadata.append(meta)
            shard = int(f.partition[SHARD]) if self.kind == "shards" else None
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                if rows:
                    units.append(Unit(i, g, rows, first, shard))
                    first += rows
        return units

    # ------------------------------------------------------------------ reading

    @property
    def read_columns(self) -> list[str]:
        """The columns read from the files: the chosen ones, plus what gives the cluster (curated tables)."""
        extra = [] if self.kind == "shards" else (["cluster"] if self.level == 1 else ["path"])
        return list(dict.fromkeys([*self.columns, *extra]))

    def _clusters(self, unit: Unit, batch: pa.RecordBatch) -> np.ndarray:
        if unit.shard is not None:
            return np.full(batch.num_rows, unit.shard, np.int64)
        if self.level == 1:
            return batch.column("cluster").to_numpy(zero_copy_only=False).astype(np.int64)
        return pc.list_element(batch.column("path"), self.level - 1).to_numpy(zero_copy_only=False).astype(np.int64)

    def read_unit(self, unit: Unit, lo: int, hi: int, *, slice_rows: int = 2048) -> Iterator[tuple[pa.RecordBatch, np.ndarray, np.ndarray]]:
        """Rows ``[lo, hi)`` of ``unit`` as ``(batch of the chosen columns, cluster per row, row number per row)``
        slices of at most ``slice_rows`` rows (rows not of ``shard`` dropped on curated tables)."""
        with self._open(self.files[unit.file].uri) as handle:
            reader = pq.ParquetFile(handle, metadata=self._metadata[unit.file])
            at = 0
            for batch in reader.iter_batches(batch_size=slice_rows, row_groups=[unit.row_group], columns=self.read_columns,
                                             use_threads=False):
                n = batch.num_rows
                a, b = max(lo - at, 0), min(hi - at, n)
                at += n
                if a >= b:
                    if at >= hi:
                        break
                    continue
                part = batch.slice(a, b - a)
                clusters = self._clusters(unit, part)
                rows = np.arange(unit.first_row + at - n + a, unit.first_row + at - n + b, dtype=np.int64)
                if self.shard is not None and unit.shard is None:
                    keep = clusters == self.shard
                    part, clusters, rows = part.filter(pa.array(keep)), clusters[keep], rows[keep]
                yield part.select(self.columns), clusters, rows
                if at >= hi:
                    break

    def clusters(self) -> np.ndarray:
        """Every row's cluster (shard) at the level, in the table's order: for a map-style sampler."""
        out = [c for u in self.units for _, c, _ in self.read_unit(u, 0, u.rows, slice_rows=65536)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def read_all(self) -> pa.Table:
        """Every row of the chosen columns, in the order of :meth:`clusters` (small tables, map-style use)."""
        parts = [b for u in self.units for b, _, _ in self.read_unit(u, 0, u.rows, slice_rows=65536)]
        if not parts:
            return pa.table({c: pa.array([], self.schema.field(c).type) for c in self.columns})
        return pa.Table.from_batches(parts)
