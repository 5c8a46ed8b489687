"""The pieces a task reads itself (lakecurate.lake.pieces), without Spark."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakecurate.errors import InputDataError
from lakecurate.lake.pieces import FilePiece, InputFiles, assign, first_width, parquet_input, read_piece, split


def files_of(path, live=None, columns=(("id", "id"), ("embedding", "embedding"))):
    schema = pq.read_schema(path)
    return InputFiles("input t", (FilePiece(str(path), path.stat().st_size, live=live),), tuple(columns),
                      pa.schema([schema.field(p).with_name(c) for c, p in columns]))


def test_cut_into_row_groups_the_pieces_read_the_files_live_rows_in_order(tmp_path):
    n = 1000
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": pa.array(np.arange(n)), "embedding": pa.array(list(x), pa.list_(pa.float32()))}), path,
                   row_group_size=90)  # 12 row groups
    live = np.random.default_rng(0).random(n - 37) > 0.3  # a deletion vector shorter than the file: the rest is live
    whole = files_of(path, live)
    cut = split(whole, 5)
    assert len(cut.pieces) == 5 and sum(len(p.row_groups) for p in cut.pieces) == 12
    want = np.flatnonzero(np.concatenate([live, np.ones(37, bool)]))
    got = np.concatenate([b.column("id").to_numpy() for p in cut.pieces for b in read_piece(cut, p, 64)])
    assert np.array_equal(got, want)
    assert sum(p.rows for p in cut.pieces) == len(want)
    assert np.array_equal(np.concatenate([b.column("id").to_numpy() for b in read_piece(whole, whole.pieces[0], 64)]), want)
    assert split(whole, 1) is whole  # enough files for the tasks: as it is


def test_column_mapping_reads_physical_names_under_logical_ones(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"col-1a": pa.array([5, 6], pa.int64()), "col-2b": pa.array([[1.0, 2.0], None], pa.list_(pa.float32()))}), path)
    files = files_of(path, columns=(("id", "col-1a"), ("embedding", "col-2b")))
    (batch,) = list(read_piece(files, files.pieces[0], 10))
    assert batch.schema.names == ["id", "embedding"] and batch.column("id").to_pylist() == [5, 6]
    assert first_width(files, "embedding") == 2


def test_a_file_without_a_column_is_named(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"id": [1], "embedding": pa.array([[1.0]], pa.list_(pa.float32()))}), a)
    pq.write_table(pa.table({"key": [2], "embedding": pa.array([[1.0]], pa.list_(pa.float32()))}), b)
    files = parquet_input([(str(a), 1), (str(b), 1)], ["id", "embedding"], "input t")
    with pytest.raises(InputDataError, match=r"input t: file '.*b\.parquet' has no column\(s\) \['id'\]"):
        list(read_piece(files, files.pieces[1], 10))
    with pytest.raises(InputDataError, match=r"column\(s\) \['id'\] not found"):
        parquet_input([(str(b), 1)], ["id", "embedding"], "input t")


def test_pieces_go_to_tasks_by_size_the_same_way_every_time():
    pieces = [FilePiece(f"f{i}", b) for i, b in enumerate([100, 10, 10, 80, 10, 10, 50])]
    shares = assign(pieces, 3)
    assert shares == assign(pieces, 3)
    assert sorted(i for s in shares for i in s) == list(range(7))
    loads = [sum(pieces[i].bytes for i in s) for s in shares]
    assert max(loads) == 100 and min(loads) >= 70
    assert all(s == sorted(s) for s in shares)


def test_row_filters_keep_or_drop_ids_as_the_anti_and_semi_joins_they_replace(tmp_path):
    """``keep=False`` is the dedup stage's left anti join (a null id stays, to be reported as a
    null id); ``keep=True`` the coreset's left semi join (a null id goes); the id types may differ."""
    from lakecurate.lake.pieces import RowFilter

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": pa.array([1, 2, None, 4], pa.int64()),
                             "embedding": pa.array([[1.0], [2.0], [3.0], [4.0]], pa.list_(pa.float32()))}), path)
    files = files_of(path)
    removed = files.filtered(RowFilter("id", pa.array([2, 4], pa.int32()), keep=False))
    chosen = files.filtered(RowFilter("id", pa.array([2, 4, 9], pa.int64()), keep=True))
    assert [v for b in read_piece(removed, removed.pieces[0], 10) for v in b.column("id").to_pylist()] == [1, None]
    assert [v for b in read_piece(chosen, chosen.pieces[0], 10) for v in b.column("id").to_pylist()] == [2, 4]
    assert files.physical_of("embedding") == "embedding"


def test_a_delta_snapshot_narrowed_to_the_files_added_after_a_version(tmp_path):
    """A nightly increment's files: those a commit after the version added and still live, matched
    however the log escapes their paths (partition values with ':', ' ', '%' and non-ASCII)."""
    from deltalake import DeltaTable, write_deltalake

    from lakecurate.errors import TableError
    from lakecurate.lake.delta import Snapshot

    def rows(ids, part):
        return pa.table({"id": pa.array(ids, pa.int64()), "part": pa.array([part] * len(ids))})

    t = str(tmp_path / "t")
    write_deltalake(t, rows(range(0, 10), "a:b c%"), partition_by=["part"])  # v0
    write_deltalake(t, rows(range(10, 20), "é 1"), partition_by=["part"], mode="append")  # v1
    write_deltalake(t, rows(range(20, 30), "a:b c%"), partition_by=["part"], mode="append")  # v2
    DeltaTable(t).delete("id = 25")  # v3: rewrites v2's file without row 25

    def ids(snap):
        return sorted(i for piece in snap.scan(["id"]) for i in piece.column("id").to_pylist())

    assert ids(Snapshot(t, added_after=0)) == [i for i in range(10, 30) if i != 25]
    assert ids(Snapshot(t, added_after=1)) == [i for i in range(20, 30) if i != 25]
    assert ids(Snapshot(t, version=2, added_after=1)) == list(range(20, 30))
    assert Snapshot(t, added_after=3).files() == [] and len(Snapshot(t).files()) == 3
    with pytest.raises(TableError, match="version 3 is newer than the version read"):
        Snapshot(t, version=2, added_after=3)
