"""An input's files as pieces a task reads itself with pyarrow (no Spark import).

Where an input is files at a path (a Delta table read with the protocol reader, a Parquet folder,
the generated pool's table), the driver lists them here, from metadata alone, as
:class:`FilePiece` s: a file, or a run of its row groups, with the physical names of the columns to
read and, where a deletion vector marks rows deleted, which of the piece's rows are live. A task
then reads its pieces with :func:`read_piece`, batch by batch (one file's batches in memory at a
time), so the vectors never pass through the JVM as ``list<float>`` rows.

What comes out of a piece is what the Delta reader (:meth:`lakecurate.lake.delta.Snapshot.scan`)
says is live, under the logical column names: the same rows, in the file's order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakecurate.errors import InputDataError
from lakecurate.lake.paths import filesystem, hadoop_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilePiece:
    """One file of an input, or the row groups ``row_groups`` of it (None: all of them).

    ``rows`` is the piece's live rows (None when unknown); ``live``, when some of the piece's rows
    are deleted, is a mask over its rows (True: live).
    """

    uri: str
    bytes: int
    row_groups: Optional[tuple[int, ...]] = None
    rows: Optional[int] = None
    live: Optional[np.ndarray] = None


@dataclass(frozen=True)
class RowFilter:
    """Rows kept where the file column ``physical`` is in ``values`` (``keep=True``) or is not
    (``keep=False``): what a stage hands on (the dedup stage's duplicates taken away, the coreset's
    rows, one model's embeddings) applied as the files are read. Nulls are never in ``values``."""

    physical: str
    values: pa.Array
    keep: bool

    def mask(self, column: pa.Array) -> pa.Array:
        inside = pc.is_in(column, value_set=self.values.cast(column.type) if self.values.type != column.type else self.values)
        return inside if self.keep else pc.invert(inside)


@dataclass(frozen=True)
class InputFiles:
    """What a task needs to read an input's rows itself: the pieces, the filesystem options,
    each column to read as ``(logical name, physical name in the files)``, and the filters the
    rows must pass."""

    where: str  # the input as messages name it
    pieces: tuple[FilePiece, ...]
    columns: tuple[tuple[str, str], ...]
    schema: pa.Schema  # the logical columns read, in order
    options: Optional[dict] = None
    filters: tuple[RowFilter, ...] = ()

    def physical_of(self, name: str) -> str:
        """The file column holding logical column ``name``."""
        return dict(self.columns)[name]

    def filtered(self, f: RowFilter) -> "InputFiles":
        return replace(self, filters=self.filters + (f,))

    def renamed(self, names: dict) -> "InputFiles":
        """The same files, read as the columns ``{new name: a logical column of these files}``."""
        return replace(self, columns=tuple((new, self.physical_of(old)) for new, old in names.items()),
                       schema=pa.schema([self.schema.field(old).with_name(new) for new, old in names.items()]))

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.pieces)


def delta_input(snap, columns: Sequence[str], where: str, partition: Optional[dict] = None) -> "InputFiles":
    """The live files of a Delta snapshot (:class:`lakecurate.lake.delta.Snapshot`) whose partition
    values equal ``partition``, to read ``columns`` from (none of them a partition column)."""
    pieces = tuple(FilePiece(f.uri, f.bytes, rows=f.rows, live=f.live) for f in snap.files(partition))
    return InputFiles(where, pieces, tuple((c, snap.physical[c]) for c in columns), pa.schema([snap.schema.field(c) for c in columns]),
                      snap.options)


def parquet_input(uris: Sequence[tuple[str, int]], columns: Sequence[str], where: str, options: Optional[dict] = None) -> "InputFiles":
    """Parquet files (``(uri, bytes)``, in order) to read ``columns`` from, typed as the first
    file's footer types them (as Spark's reader does without ``mergeSchema``)."""
    fs, path = filesystem(uris[0][0], options or {})
    schema = pq.read_schema(path, filesystem=fs)
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise InputDataError(f"{where}: column(s) {missing} not found; the input has columns {schema.names}")
    return InputFiles(where, tuple(FilePiece(u, b) for u, b in uris), tuple((c, c) for c in columns),
                      pa.schema([schema.field(c) for c in columns]), options)


def read_piece(files: InputFiles, piece: FilePiece, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The live rows of ``piece``, ``batch_rows`` at most per batch, under the logical column names
    and types of ``files.schema``. InputDataError naming the file when a column is missing or the
    file cannot be read (not Parquet, truncated, undecodable)."""
    fs, path = filesystem(piece.uri, files.options or {})
    physical = [p for _, p in files.columns]
    read = list(dict.fromkeys(physical + [f.physical for f in files.filters]))
    try:
        with fs.open_input_file(path) as handle:
            pf = pq.ParquetFile(handle)
            names = set(pf.schema_arrow.names)
            missing = [p for p in read if p not in names]
            if missing:
                named = {p: logical for logical, p in files.columns}
                raise InputDataError(f"{files.where}: file {piece.uri!r} has no column(s) {[named.get(p, p) for p in missing]} "
                                     f"(it has {sorted(names)})")
            at = 0
            for raw in pf.iter_batches(batch_size=batch_rows, columns=read,
                                       row_groups=list(piece.row_groups) if piece.row_groups is not None else None):
                n = raw.num_rows
                keep = live_window(piece.live, at, n) if piece.live is not None else None
                for f in files.filters:
                    passed = f.mask(raw.column(read.index(f.physical))).to_numpy(zero_copy_only=False)
                    keep = passed if keep is None else keep & passed
                batch = pa.RecordBatch.from_arrays([raw.column(read.index(p)) for p in physical], schema=pa.schema(
                    [pa.field(logical, raw.schema.field(p).type) for logical, p in files.columns]))
                if keep is not None:
                    batch = batch.filter(pa.array(keep))
                at += n
                if batch.num_rows:
                    yield batch.cast(files.schema) if batch.schema != files.schema else batch
    except (OSError, pa.ArrowException) as exc:  # the file, named as Spark's reader names it
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = f"it is not a Parquet file ({text})" if "magic bytes" in text else text
        raise InputDataError(f"cannot read {hadoop_uri(piece.uri)}: {why}") from exc


def first_width(files: InputFiles, column: str) -> Optional[int]:
    """The width of ``column`` (a list column): its fixed size, else the length of its first
    non-null value, reading a few rows of that column only; None when every value is null."""
    t = files.schema.field(column).type
    if pa.types.is_fixed_size_list(t):
        return int(t.list_size)
    only = InputFiles(files.where, files.pieces, tuple(c for c in files.columns if c[0] == column),
                      pa.schema([files.schema.field(column)]), files.options)
    for piece in files.pieces:
        try:
            for batch in read_piece(only, piece, 256):
                lengths = pc.list_value_length(batch.column(0)).drop_null()
                if len(lengths):
                    return int(lengths[0].as_py())
        except InputDataError as exc:  # an unreadable file is the tasks' to report, as the stage's error
            log.debug("%s: skipped while looking for the width: %s", piece.uri, exc)
    return None


def split(files: InputFiles, parts: int) -> InputFiles:
    """With fewer files than ``parts`` tasks, the larger files cut into runs of row groups (read from
    their footers, a few KB each) so every task has work; otherwise ``files`` as it is."""
    if len(files.pieces) >= parts or not files.pieces:
        return files
    per_file = -(-parts // len(files.pieces))
    out: list[FilePiece] = []
    for piece in files.pieces:
        fs, path = filesystem(piece.uri, files.options or {})
        try:
            meta = pq.read_metadata(path, filesystem=fs)
        except (OSError, pa.ArrowException) as exc:  # read whole by a task, which reports what is wrong with it
            log.debug("%s: no footer (%s): not cut", piece.uri, exc)
            out.append(piece)
            continue
        groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if len(groups) < 2:
            out.append(piece)
            continue
        starts = np.concatenate([[0], np.cumsum(groups)])
        for chunk in np.array_split(np.arange(len(groups)), min(per_file, len(groups))):
            first, end = int(starts[chunk[0]]), int(starts[chunk[-1] + 1])
            live = None if piece.live is None else live_window(piece.live, first, end - first)
            out.append(replace(piece, row_groups=tuple(int(g) for g in chunk),
                               rows=int(live.sum()) if live is not None else end - first,
                               live=None if live is None or live.all() else live,
                               bytes=int(sum(meta.row_group(int(g)).total_byte_size for g in chunk))))
    return replace(files, pieces=tuple(out))


def assign(pieces: Sequence[FilePiece], parts: int) -> list[list[int]]:
    """Piece indices per task, largest first onto the least loaded task (by bytes), each task's
    pieces in input order: the same pieces always land on the same tasks."""
    load = [0] * parts
    out: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(pieces)), key=lambda i: (-pieces[i].bytes, i)):
        t = min(range(parts), key=lambda t: (load[t], t))
        out[t].append(i)
        load[t] += max(1, pieces[i].bytes)
    return [sorted(o) for o in out]


def live_window(live: np.ndarray, at: int, n: int) -> np.ndarray:
    """Rows ``[at, at + n)`` of a live-row mask (rows past its end are live)."""
    part = live[at : at + n]
    return part if len(part) == n else np.concatenate([part, np.ones(n - len(part), bool)])
