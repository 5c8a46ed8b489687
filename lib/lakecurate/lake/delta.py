"""Reading Delta tables as the Delta protocol defines them, with delta-rs and pyarrow (no Spark).

A table's snapshot (:class:`Snapshot`) is its live files, each with its partition values and, where
a deletion vector marks rows deleted, which rows are live; the logical schema, and for column
mapping (``name`` or ``id`` mode) the physical name each column has in the files. Every read of a
Delta table in lakecurate goes through one snapshot: the Arrow scans here (report, ``runs``, the
loaders) and the embedded backend's Spark reads (:mod:`lakecurate.lake.spark_read`). A reader
feature this module cannot honour is refused with one line naming the table and the feature,
before any row is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator, Optional
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from lakecurate.errors import TableError
from lakecurate.lake.paths import absolute, filesystem, first_line, hadoop_uri, rs_uri
from lakecurate.lake.pieces import FilePiece, InputFiles, read_piece


#: reader features (protocol version 3) this reader honours; a table that needs any other is refused
SUPPORTED_READER_FEATURES = frozenset({"deletionVectors", "columnMapping", "timestampNtz", "vacuumProtocolCheck"})
#: the newest reader protocol version this reader knows (3: reader features listed by name)
MAX_READER_VERSION = 3


@dataclass(frozen=True)
class DeltaFile:
    """One live data file of a Delta table's version.

    ``uri`` is where the file is (a local path or an object-store URI, as pyarrow takes it),
    ``partition`` its partition values by logical column name (as strings; None for null),
    ``rows`` its live rows (None when the log records no count), ``bytes`` its size, and ``live``,
    when a deletion vector marks some of its rows deleted, a boolean mask over its rows in file
    order (True: live).
    """

    uri: str
    partition: dict
    rows: Optional[int]
    bytes: int
    live: Optional[np.ndarray] = None

    @property
    def name(self) -> str:
        """The file's name (its last path segment, decoded)."""
        return _decoded(self.uri).rstrip("/").rsplit("/", 1)[-1]


def _decoded(path: str) -> str:
    """``path`` with percent-escapes decoded until none is left (log paths are escaped once, some
    of delta-rs's URIs twice)."""
    while True:
        out = unquote(path)
        if out == path:
            return out
        path = out


def refuse_unreadable(path: str, dt) -> None:
    """TableError naming the table and what this reader cannot honour: a reader protocol newer
    than it knows, a reader feature outside :data:`SUPPORTED_READER_FEATURES`."""
    protocol = dt.protocol()
    if protocol.min_reader_version > MAX_READER_VERSION:
        raise TableError(f"Delta table {path!r} needs reader protocol version {protocol.min_reader_version}; lakecurate reads "
                         f"versions up to {MAX_READER_VERSION}: nothing was read")
    unknown = sorted(set(protocol.reader_features or ()) - SUPPORTED_READER_FEATURES)
    if unknown:
        raise TableError(f"Delta table {path!r} uses the reader feature(s) {unknown}, which lakecurate cannot honour (it reads "
                         f"{sorted(SUPPORTED_READER_FEATURES)}): nothing was read rather than read wrongly")


class Snapshot:
    """One version of a Delta table as the protocol defines it (delta-rs reads the log).

    ``schema`` is the logical Arrow schema, ``partition_columns`` the logical partition columns,
    ``physical`` each column's name in the data files (its logical name unless column mapping is
    on), :meth:`files` the live files with their deletion vectors. Opening a snapshot refuses a
    table whose reader protocol or features this reader cannot honour (:func:`refuse_unreadable`).
    """

    def __init__(self, path: str, *, storage_options: Optional[dict] = None, version: Optional[int] = None,
                 added_after: Optional[int] = None):
        self.path = path
        self.options = storage_options
        self.dt = open_delta(path, storage_options, version)
        refuse_unreadable(path, self.dt)
        self.version = self.dt.version()
        #: with ``added_after``: only the live files a commit after that version added (the increment)
        self._added = None
        if added_after is not None:
            added = added_paths(path, storage_options, added_after, self.version)
            # every live file was live at ``added_after`` or added since: else the log and this reader disagree
            unexplained = self.live_paths() - added - Snapshot(path, storage_options=storage_options, version=added_after).live_paths()
            if unexplained:
                raise TableError(f"Delta table {path!r}: {len(unexplained)} live file(s) of version {self.version} (e.g. "
                                 f"{sorted(unexplained)[:2]}) were neither live at version {added_after} nor added after it: "
                                 "the files added since cannot be told")
            self._added = added
        self.schema = arrow_schema_of(self.dt)
        metadata = self.dt.metadata()
        self.partition_columns = list(metadata.partition_columns)
        self.table_id = metadata.id
        mode = (metadata.configuration or {}).get("delta.columnMapping.mode", "none")
        self.column_mapping = mode if mode in ("name", "id") else None
        self.physical = {}
        for field in self.dt.schema().fields:
            name = field.name
            if self.column_mapping:
                name = (field.metadata or {}).get("delta.columnMapping.physicalName") or field.name
                if _nested_names_mapped(field.type):
                    raise TableError(f"Delta table {path!r}: column {field.name!r} has nested fields renamed by column mapping, "
                                     "which lakecurate does not read: nothing was read rather than read wrongly")
            self.physical[field.name] = name
        features = set(self.dt.protocol().reader_features or ())
        self.has_deletion_vectors = "deletionVectors" in features

    def live_paths(self) -> set:
        """The live files' paths as the log names them, decoded (:func:`_decoded`)."""
        return {_decoded(p) for p in pa.table(self.dt.get_add_actions(flatten=True)).column("path").to_pylist()}

    @property
    def data_columns(self) -> list[str]:
        """The logical columns stored in the data files (not the partition columns)."""
        return [n for n in self.schema.names if n not in self.partition_columns]

    def files(self, partition: Optional[dict] = None) -> list[DeltaFile]:
        """The live files, optionally only those whose partition values equal ``partition``
        (``{"run_id": ..., "shard": "3"}``): those are all a reader opens."""
        actions = pa.table(self.dt.get_add_actions(flatten=True)).to_pylist()
        base = absolute(self.path).rstrip("/")
        deleted = self._deletion_masks() if self.has_deletion_vectors else {}
        files = []
        for a in actions:
            values = {k[len("partition."):]: (None if v is None else _partition_text(v)) for k, v in a.items()
                      if k.startswith("partition.")}
            if partition and any(values.get(k) != (None if v is None else str(v)) for k, v in partition.items()):
                continue
            rel = a["path"]
            if self._added is not None and _decoded(rel) not in self._added:  # decoded alike, however escaped
                continue
            uri = rel if "://" in rel else f"{base}/{unquote(rel)}"  # the log escapes the path once
            rows = a.get("num_records")
            f = DeltaFile(uri, values, None if rows is None else int(rows), int(a["size_bytes"]))
            mask = deleted.get(f.name)
            if mask is not None:
                if f.rows is not None and len(mask) < f.rows:  # rows past the vector's end are live
                    mask = np.concatenate([mask, np.ones(f.rows - len(mask), bool)])
                f = DeltaFile(f.uri, f.partition, None if f.rows is None else int(mask.sum()), f.bytes, mask)
            files.append(f)
        if deleted:
            names = [f.name for f in files]
            if len(set(names)) != len(names):
                raise TableError(f"Delta table {self.path!r}: two live files share a file name, so its deletion vectors cannot be "
                                 "matched to its files: nothing was read")
        return files

    def _deletion_masks(self) -> dict:
        """``{file name: live-row mask}`` of the files with a deletion vector in this version."""
        table = pa.table(self.dt.deletion_vectors().read_all())
        out = {}
        for path, mask in zip(table.column("filepath").to_pylist(), table.column("selection_vector").to_pylist()):
            out[_decoded(path).rstrip("/").rsplit("/", 1)[-1]] = np.asarray(mask, dtype=bool)
        return out

    def live_rows(self, partition: Optional[dict] = None) -> Optional[int]:
        """Live rows from the log alone (None when a file has no record count)."""
        counts = [f.rows for f in self.files(partition)]
        return None if any(c is None for c in counts) else int(sum(counts))

    def scan(self, columns: Optional[list[str]] = None, partition: Optional[dict] = None,
             batch_rows: int = 65536) -> Iterator[pa.Table]:
        """The live rows a piece at a time (bounded memory): pyarrow reads the files, ``batch_rows``
        rows at most per piece, only the ``columns`` asked for (by their physical names, returned
        under their logical ones), deleted rows dropped, partition columns filled from the log."""
        schema, parts = self.schema, self.partition_columns
        want = list(columns or schema.names)
        missing = [c for c in want if c not in schema.names]
        if missing:
            raise TableError(f"Delta table {self.path!r} has no column(s) {missing} (columns: {schema.names})")
        # a read of partition columns alone still reads one stored column, for the row count
        stored = [c for c in want if c not in parts] or self.data_columns[:1]
        target = pa.schema([schema.field(c) for c in want])
        files = InputFiles(f"Delta table {self.path!r}", (), tuple((c, self.physical[c]) for c in stored),
                           pa.schema([schema.field(c) for c in stored]), self.options)
        for f in self.files(partition):
            for batch in read_piece(files, FilePiece(f.uri, f.bytes, rows=f.rows, live=f.live), batch_rows):
                t = pa.Table.from_batches([batch])
                for c in parts:
                    if c in want:
                        t = t.append_column(pa.field(c, schema.field(c).type),
                                            pa.array([f.partition.get(c)] * t.num_rows).cast(schema.field(c).type))
                yield t.select(want).cast(target)


def _nested_names_mapped(t) -> bool:
    """Whether a delta-rs type holds struct fields whose physical name differs from their name."""
    fields = getattr(t, "fields", None)
    if fields:
        return any(((f.metadata or {}).get("delta.columnMapping.physicalName", f.name) != f.name) or _nested_names_mapped(f.type)
                   for f in fields)
    for attr in ("element_type", "key_type", "value_type"):
        inner = getattr(t, attr, None)
        if inner is not None and _nested_names_mapped(inner):
            return True
    return False


def _partition_text(value) -> str:
    """A partition value from delta-rs's typed add actions as the log's text form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def delta_files(path: str, *, storage_options: Optional[dict] = None, version: Optional[int] = None,
                partition: Optional[dict] = None) -> tuple[int, list[DeltaFile]]:
    """``(version, live files)`` of the Delta table at ``path`` (:meth:`Snapshot.files`)."""
    snap = Snapshot(path, storage_options=storage_options, version=version)
    return snap.version, snap.files(partition)


def scan_delta(path: str, *, storage_options: Optional[dict] = None, columns: Optional[list[str]] = None,
               partition: Optional[dict] = None, batch_rows: int = 65536, version: Optional[int] = None) -> Iterator[pa.Table]:
    """A Delta table's live rows a piece at a time, no Spark (:meth:`Snapshot.scan`). (delta-rs's
    own scan leaves native threads that abort about one process in two at interpreter exit, an exit
    code 134 after a correct answer; a command must not end that way.)"""
    return Snapshot(path, storage_options=storage_options, version=version).scan(columns, partition, batch_rows)


def read_delta_files(path: str, *, storage_options: Optional[dict] = None, columns: Optional[list[str]] = None,
                     partition: Optional[dict] = None, version: Optional[int] = None) -> pa.Table:
    """A small Delta table's live rows as one Arrow table (:meth:`Snapshot.scan`, concatenated)."""
    snap = Snapshot(path, storage_options=storage_options, version=version)
    pieces = list(snap.scan(columns, partition))
    if pieces:
        return pa.concat_tables(pieces)
    return pa.schema([snap.schema.field(c) for c in (columns or snap.schema.names)]).empty_table()


def table_schema(path: str, *, storage_options: Optional[dict] = None, version: Optional[int] = None) -> tuple[pa.Schema, list[str]]:
    """``(logical arrow schema, partition columns)`` of the Delta table at ``path`` (refusing one
    this reader cannot honour)."""
    snap = Snapshot(path, storage_options=storage_options, version=version)
    return snap.schema, snap.partition_columns


def open_delta(path: str, storage_options: Optional[dict], version: Optional[int]):
    from deltalake import DeltaTable

    uri = hadoop_uri(path)
    options = {str(k): str(v) for k, v in (storage_options or {}).items()} or None
    try:
        if not DeltaTable.is_deltatable(rs_uri(uri), storage_options=options):
            raise TableError(f"{path!r} is not a Delta table (no readable _delta_log)")
        return DeltaTable(rs_uri(uri), version=version, storage_options=options)
    except OSError as exc:
        raise TableError(f"{path!r} cannot be read: {first_line(exc)}") from exc


def arrow_schema_of(dt) -> pa.Schema:
    """A Delta table's schema as a pyarrow schema (delta-rs returns an arro3 one)."""
    return pa.schema(dt.schema().to_arrow())


def commit_file_actions(fs: pafs.FileSystem, log_file: str, kinds: tuple = ("add", "remove")) -> list[dict]:
    """The ``add`` and ``remove`` actions (``kinds``) of one commit file of a Delta log (OSError if it is gone)."""
    with fs.open_input_stream(log_file) as f:
        lines = f.read().decode().splitlines()
    actions = [json.loads(line) for line in lines if line.strip()]
    return [a[kind] for a in actions for kind in kinds if kind in a]


def added_paths(path: str, storage_options: Optional[dict], after: int, until: int) -> set:
    """The data files (log paths, decoded as :func:`_decoded` does) that the commits ``after + 1 .. until`` of the Delta
    table at ``path`` added: a file added there and still live at ``until`` holds every row that
    is live at ``until`` and was not live at ``after`` (a rewrite, a new deletion vector or a
    restore adds its file again). Raises TableError when one of those commits cannot be read."""
    if after > until:
        raise TableError(f"Delta table {path!r}: version {after} is newer than the version read ({until})")
    fs, base = filesystem(path, storage_options or {})
    out = set()
    for v in range(after + 1, until + 1):
        log_file = f"{base.rstrip('/')}/_delta_log/{v:020d}.json"
        try:
            actions = commit_file_actions(fs, log_file, ("add",))
        except OSError as exc:  # gone after a checkpoint, or unreadable: the caller reads the whole table instead
            raise TableError(f"Delta table {path!r}: commit {v} of its log cannot be read ({first_line(exc)}); "
                             "a log cleaned up after a checkpoint no longer says which files it added") from exc
        out.update(_decoded(a["path"]) for a in actions)
    return out


_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def _z85_decode(text: str) -> bytes:
    """Z85 (ZeroMQ's base-85, which Delta uses for deletion vector ids) to bytes."""
    if len(text) % 5:
        raise ValueError(f"not Z85: {text!r} (length {len(text)} is not a multiple of 5)")
    out = bytearray()
    for i in range(0, len(text), 5):
        value = 0
        for ch in text[i:i + 5]:
            value = value * 85 + _Z85.index(ch)
        out += value.to_bytes(4, "big")
    return bytes(out)


def deletion_vector_file(descriptor: Optional[dict]) -> Optional[str]:
    """The file a deletion vector descriptor (an ``add``/``remove`` action's ``deletionVector``)
    lives in: a path relative to the table for storage type ``u`` (a random prefix, then the
    file ``deletion_vector_<uuid>.bin``), the absolute path for ``p``, None for an inline one."""
    if not descriptor:
        return None
    kind, where = descriptor.get("storageType"), descriptor.get("pathOrInlineDv", "")
    if kind == "u":
        prefix, encoded = where[:-20], where[-20:]
        raw = _z85_decode(encoded).hex()
        uuid = f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
        return f"{prefix}/deletion_vector_{uuid}.bin" if prefix else f"deletion_vector_{uuid}.bin"
    if kind == "p":
        return where
    return None
