"""Every check at an edge (a config file, the pure API), in one place.

Validation happens once, where values come in: :mod:`lakecurate.config` when a YAML file is
loaded, :class:`lakecurate.HierarchicalKMeans` and :func:`lakecurate.deduplicate` when they are
called. The cores below them trust their input. Every message names the key (a dotted config key
or a parameter name), the value and the limit, e.g. ``sampling.target_size=0 must be an integer
>= 1``. This module imports nothing but numpy and the error classes, so the config can use it
without loading the curation code.

The option values of the method (metrics, initialisations, strategies) live here too: they are
what the edges check against, and the cores import them from here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from lakecurate.errors import ConfigError, InputDataError

#: distances k-means runs on: squared L2 on the raw vectors, or on unit rows (cosine)
METRICS = ("l2", "cosine")
#: k-means initialisations: k-means++ on a uniform sample, or k rows drawn at random
INITS = ("k-means++", "random")
#: how balanced sampling picks rows inside a level-1 cluster
STRATEGIES = ("random", "closest", "furthest")


#: ``clustering.n_coarse`` entry: two steps only where one k-means would not fit a task (lakecurate.sizing)
AUTO = "auto"

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(value, key: str) -> int:
    """``"4g"``, ``"512m"``, ``"1.5t"`` or an integer number of bytes, as Spark writes sizes."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value).lower()) if isinstance(value, str) else None
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(f"{key}={value!r} must be a size such as 4g, 512m or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2)])



def check_int(value: Any, key: str, *, minimum: Optional[int] = None) -> int:
    """``value`` as an int (not a bool), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        limit = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{key}={value!r} must be an integer{limit}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_number(value: Any, key: str, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, what: str = "") -> float:
    """``value`` as a finite float within the bounds (``low_open``: strictly above ``low``)."""
    bounds = _interval(low, high, low_open)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
        raise ConfigError(f"{key}={value!r} must be a finite number{bounds}{what}")
    v = float(value)
    if (low is not None and (v <= low if low_open else v < low)) or (high is not None and v > high):
        raise ConfigError(f"{key}={v!r} must be{bounds}{what}")
    return v


def _interval(low, high, low_open) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f" <= {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}]"


def check_choice(value: Any, options: Sequence[str], key: str) -> str:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {list(options)}")
    return value


def check_int_list(value: Any, key: str, *, minimum: int = 1) -> list[int]:
    """A non-empty list of integers >= ``minimum`` (a single integer is a list of one)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [int(value)]
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise ConfigError(f"{key} must be a non-empty list of integers; got {value!r}")
    return [check_int(v, f"{key}[{i}]", minimum=minimum) for i, v in enumerate(value)]


def check_name(value: Any, key: str) -> str:
    """A non-empty column or table name."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r} must be a non-empty name")
    return value


def check_settings(value: Any, key: str) -> dict:
    """A flat mapping of named settings (``spark.conf``, storage options): string keys, scalar values."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping of settings; got {type(value).__name__}")
    for name, v in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{key} has a key {name!r} that is not a name")
        if isinstance(v, dict):
            inner = next(iter(v), "...")
            raise ConfigError(f"{key}.{name} is a nested mapping: write the setting's whole name as one key, "
                              f"e.g. {key}.{name}.{inner}=... on the command line or '{name}.{inner}: ...' under {key} in YAML")
        if isinstance(v, (list, tuple)) or v is None:
            raise ConfigError(f"{key}.{name}={v!r} must be a string, number or boolean")
    return value


#: ``lake.storage_options`` keys (delta-rs's names, case-insensitive) -> pyarrow filesystem arguments
PYARROW_STORAGE_OPTIONS = {
    "s3": {"aws_access_key_id": "access_key", "aws_secret_access_key": "secret_key", "aws_session_token": "session_token",
           "aws_region": "region", "aws_endpoint_url": "endpoint_override", "aws_endpoint": "endpoint_override"},
    "abfs": {"azure_storage_account_name": "account_name", "azure_storage_account_key": "account_key",
             "azure_storage_sas_token": "sas_token"},
}
#: URI schemes of object stores -> the family their options belong to
STORAGE_SCHEMES = {"s3": "s3", "s3a": "s3", "abfs": "abfs", "abfss": "abfs", "az": "abfs", "gs": "gs", "gcs": "gs"}
#: options delta-rs understands that pyarrow needs no argument for
DELTA_ONLY_STORAGE_OPTIONS = {"aws_allow_http", "aws_s3_allow_unsafe_rename", "aws_conditional_put", "aws_s3_locking_provider",
                              "google_service_account", "google_service_account_path", "google_application_credentials", "timeout"}


def check_storage_options(options: Any, root: str, key: str) -> dict:
    """``lake.storage_options``: flat settings, each one lakecurate knows how to pass on for ``root``'s scheme."""
    check_settings(options, key)
    scheme = STORAGE_SCHEMES.get(root.split("://", 1)[0].lower()) if "://" in root else None
    known = set(PYARROW_STORAGE_OPTIONS.get(scheme or "", {})) | (DELTA_ONLY_STORAGE_OPTIONS if scheme else set())
    for name in options:
        if name.lower() not in known:
            where = f"a {scheme}:// lake" if scheme else "a lake on a local or mounted path (none apply)"
            raise ConfigError(f"{key}.{name} is not an option lakecurate passes on for {where}; known: {sorted(known)}")
    return options


# ---------------------------------------------------------------- the hierarchy's parameters


@dataclass(frozen=True)
class HierarchySettings:
    """Checked parameters of a hierarchical k-means, one entry per level where it varies."""

    n_clusters: tuple[int, ...]
    resample_size: tuple[int, ...]
    n_resampling_steps: int
    n_iter: int
    init: str
    metric: str
    init_points_per_centroid: int


def check_hierarchy(
    n_clusters: Any,
    *,
    n_resampling_steps: Any,
    resample_size: Any,
    n_iter: Any,
    init: Any,
    metric: Any,
    init_points_per_centroid: Any,
    where: str = "",
) -> HierarchySettings:
    """The checks of :class:`~lakecurate.HierarchicalKMeans` and the ``clustering`` config section.

    ``where`` prefixes every key (``"clustering."`` in a config). k must not grow with the level;
    ``resample_size`` is one r for every level or one per level (None: no resampling).
    """
    ks = check_int_list(n_clusters, f"{where}n_clusters")
    for t in range(1, len(ks)):
        if ks[t] > ks[t - 1]:
            raise ConfigError(f"{where}n_clusters must not grow with the level: level {t + 1} has {ks[t]} > level {t}'s {ks[t - 1]}")
    if resample_size is None:
        rs = [1] * len(ks)
    else:
        rs = check_int_list(resample_size, f"{where}resample_size", minimum=0)
        if len(rs) == 1 and len(ks) > 1:
            rs = rs * len(ks)
        if len(rs) != len(ks):
            raise ConfigError(f"{where}resample_size has {len(rs)} entries but n_clusters has {len(ks)} levels")
    return HierarchySettings(
        n_clusters=tuple(ks),
        resample_size=tuple(rs),
        n_resampling_steps=check_int(n_resampling_steps, f"{where}n_resampling_steps", minimum=0),
        n_iter=check_int(n_iter, f"{where}n_iter", minimum=1),
        init=check_choice(init, INITS, f"{where}init"),
        metric=check_choice(metric, METRICS, f"{where}metric"),
        init_points_per_centroid=check_int(init_points_per_centroid, f"{where}init_points_per_centroid", minimum=1),
    )


def check_n_coarse(value: Any, n_clusters: Sequence[int], *, where: str = "", allow_auto: bool = True) -> tuple:
    """Coarse clusters per level (one entry: every level): ``auto`` (where allowed), 0 = one
    k-means, or C in [2, k) = two steps; ``where`` prefixes the key (``"clustering."``)."""
    spec = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(spec) == 1:
        spec = spec * len(n_clusters)
    if len(spec) != len(n_clusters):
        raise ConfigError(f"{where}n_coarse has {len(spec)} entries but n_clusters has {len(n_clusters)} levels "
                          f"(or give one for every level)")
    options = "'auto', 0 (one k-means)" if allow_auto else "0 (one k-means)"
    for t, (c, k) in enumerate(zip(spec, n_clusters)):
        if allow_auto and c == AUTO:
            continue
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or (c != 0 and not 2 <= c < k):
            raise ConfigError(f"{where}n_coarse[{t}]={c!r} must be {options} or an integer in [2, n_clusters[{t}]={k})")
    return tuple(c if c == AUTO else int(c) for c in spec)


def check_eps(eps: Any, *, key: str = "eps") -> float:
    """The de-duplication threshold: rows are duplicates when cosine similarity >= 1 - eps.

    eps = 0 would ask for similarity >= 1, which rounding makes a coin toss for anything but
    bit-identical rows; eps = 1 (similarity >= 0) is the loosest meaningful threshold.
    """
    return check_number(eps, key, low=0.0, high=1.0, low_open=True,
                        what=f": rows are duplicates when cosine similarity >= 1 - {key}")


# ---------------------------------------------------------------- data


#: float32's smallest normal value: a squared norm below it underflows (distances become 0, a
#: direction cannot be taken in float32)
F32_TINY = float(np.finfo(np.float32).tiny)
#: the largest squared norm a row may have: the squared distance between two rows is at most four
#: times the larger squared norm, and must stay below float32's largest value
F32_SQUARED_NORM_MAX = float(np.finfo(np.float32).max) / 4
#: rows per chunk when squared norms are taken in float64 (bounded memory on any input)
_NORM_CHUNK_ROWS = 65536


def squared_norms(x: np.ndarray) -> np.ndarray:
    """Each row's squared L2 norm, summed in float64 (no float32 overflow or underflow on the way)."""
    out = np.empty(x.shape[0], np.float64)
    for s in range(0, x.shape[0], _NORM_CHUNK_ROWS):
        c = np.asarray(x[s : s + _NORM_CHUNK_ROWS], np.float64)
        out[s : s + c.shape[0]] = np.einsum("ij,ij->i", c, c)
    return out


def unusable_rows(x: np.ndarray, metric: str) -> dict[str, np.ndarray]:
    """The finite rows ``metric`` cannot take, as ``{reason: boolean mask}`` (reasons with no row left out).

    * ``cosine``: a zero row has no direction; a row whose squared norm is below float32's smallest normal value cannot be normalised in
      float32; one above :data:`F32_SQUARED_NORM_MAX` overflows on the way. Each would otherwise
      land in a cluster of its own kind, silently.
    * ``l2``: a row whose squared norm (hence its distances) overflows float32, or underflows it
      (non-zero but below its smallest normal value: every distance between such rows rounds to
      0). A zero row is a valid point under l2.
    """
    sq = squared_norms(x)
    out = {}
    if metric == "cosine":
        out["zero vector (no direction to compare under cosine)"] = sq == 0
    out[f"squared norm below float32's smallest normal value {F32_TINY:.3g} (underflows)"] = (sq > 0) & (sq < F32_TINY)
    out[f"squared norm above {F32_SQUARED_NORM_MAX:.3g} (squared distances overflow float32)"] = sq > F32_SQUARED_NORM_MAX
    return {reason: mask for reason, mask in out.items() if mask.any()}


def check_metric_rows(x: np.ndarray, metric: str, *, name: str = "X") -> None:
    """InputDataError naming the rows of ``x`` (finite, float32) that ``metric`` cannot take: how
    many for each reason and the first row numbers (:func:`unusable_rows`)."""
    bad = unusable_rows(x, metric)
    if not bad:
        return
    parts = [f"{int(mask.sum())} with {reason}, first at rows {np.flatnonzero(mask)[:3].tolist()}" for reason, mask in bad.items()]
    total = int(np.logical_or.reduce(list(bad.values())).sum())
    raise InputDataError(f"{name} has {total} row(s) that metric={metric!r} cannot take: " + "; ".join(parts)
                         + "; remove or rescale them")


def check_embeddings(x, *, name: str = "X", metric: Optional[str] = None) -> np.ndarray:
    """A finite, non-empty 2-D float32 array, or an InputDataError saying which row is bad; with
    ``metric``, also the rows that metric cannot take (:func:`unusable_rows`)."""
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
    if metric is not None:
        check_metric_rows(arr, metric, name=name)
    return arr


def check_levels(n_clusters: Sequence[int], n_inputs: int, *, key: str = "n_clusters") -> None:
    """Each level needs at least as many inputs as clusters: n at level 1, k_{t-1} above."""
    available = n_inputs
    for t, k in enumerate(n_clusters):
        if k > available:
            what = "rows in the input" if t == 0 else f"clusters at level {t}"
            raise InputDataError(f"{key}[{t}]={k} (level {t + 1}) is more than the {available} {what}")
        available = k


def check_coreset_params(n_centroids: Any, budget: Any, patience: Any, stop_threshold: Any, seed: Any, candidates: Any,
                         *, prefix: str = "") -> None:
    """The coreset's parameters (the pure API's keyword names, or ``coreset.<name>`` in a config)."""
    check_int(n_centroids, f"{prefix}n_centroids", minimum=1)
    if budget is not None:
        check_int(budget, f"{prefix}budget", minimum=1)
    check_int(patience, f"{prefix}patience", minimum=1)
    check_number(stop_threshold, f"{prefix}stop_threshold", low=0.0, high=1.0)
    check_int(seed, f"{prefix}seed", minimum=0)
    check_int(candidates, f"{prefix}candidates", minimum=0)
