"""Checks at the public edge of the pure API. Messages name the value, the limit and where."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lakecurate.errors import ConfigError, InputDataError


def check_embeddings(x, *, name: str = "X") -> np.ndarray:
    """A finite, non-empty 2-D float32 array, or an InputDataError saying which row is bad."""
    try:
        arr = np.asarray(x)
    except ValueError as exc:  # ragged rows
        raise InputDataError(f"{name}: rows have different lengths ({exc})") from exc
    if arr.dtype == object:
        raise InputDataError(f"{name}: rows have different lengths (got an object array of shape {arr.shape})")
    if arr.ndim != 2:
        raise InputDataError(f"{name} must be 2-D (n_samples, dim); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputDataError(f"{name} is empty: 0 rows")
    if arr.shape[1] == 0:
        raise InputDataError(f"{name} has dimension 0")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputDataError(f"{name} must be numeric; got dtype {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputDataError(
            f"{name} has {bad.size} row(s) with NaN or infinite values (float32), first at row {int(bad[0])}: "
            f"{arr[bad[0]][~np.isfinite(arr[bad[0]])][:3].tolist()}"
        )
    return arr


def check_int_list(value, key: str, *, minimum: int = 1) -> list[int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [int(value)]
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise ConfigError(f"{key} must be a non-empty list of integers; got {value!r}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{key}[{i}] must be an integer; got {v!r}")
        if v < minimum:
            raise ConfigError(f"{key}[{i}]={v} must be >= {minimum}")
        out.append(int(v))
    return out


def check_levels(n_clusters: Sequence[int], n_inputs: int, *, key: str = "n_clusters") -> None:
    """Each level needs at least as many inputs as clusters: n at level 1, k_{t-1} above."""
    available = n_inputs
    for t, k in enumerate(n_clusters):
        if k > available:
            what = "rows in the input" if t == 0 else f"clusters at level {t}"
            raise InputDataError(f"{key}[{t}]={k} (level {t + 1}) is more than the {available} {what}")
        available = k
