"""Arrow <-> numpy conversions used inside mapInArrow functions (run on executors)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa


def list_column_to_matrix(col: pa.Array, dim: int) -> np.ndarray:
    """A list<float> column whose rows all have ``dim`` values, as a float32 (n, dim) matrix."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    values = col.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(len(col), dim)


def matrix_to_list_array(x: np.ndarray) -> pa.ListArray:
    """A float32 (n, d) matrix as a list<float> column (mapInArrow refuses FixedSizeList returns)."""
    n, d = x.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(x, dtype=np.float32).ravel()))


def matrix_to_binary_array(x: np.ndarray) -> pa.BinaryArray:
    """A float32 (n, d) matrix as one binary value per row (its raw bytes): Spark shuffles a binary
    column as a copy of bytes, an array<float> column value by value."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    offsets = pa.array(np.arange(0, (n + 1) * d * 4, d * 4, dtype=np.int32))
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, offsets.buffers()[1], pa.py_buffer(x.tobytes())])


def binary_column_to_matrix(col, dim: int) -> np.ndarray:
    """The inverse of :func:`matrix_to_binary_array`: every value must be ``dim`` float32s."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], pa.binary())
    n = len(col)
    if n == 0:
        return np.zeros((0, dim), np.float32)
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset: col.offset + n + 1]
    if not np.all(np.diff(offsets) == dim * 4):
        raise ValueError(f"binary vectors must hold {dim} float32 values each")
    data = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]]
    return data.view(np.float32).reshape(n, dim).copy()


def row_keys(ids: pa.Array) -> np.ndarray:
    """int64 row keys of ids: an integer id is its own key, a string id a stable 63-bit hash.

    Random draws and tie-breaks use these keys, so they follow the item, not its position in a
    file or partition. For an id column 0..n-1 they equal the pure API's row indices.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_integer(ids.type):
        return ids.to_numpy(zero_copy_only=False).astype(np.int64)
    return np.array(
        [int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little") >> 1 for v in ids.to_pylist()],
        dtype=np.int64,
    )
