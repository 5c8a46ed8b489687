"""Digests of a run's output tables, read with delta-rs (no Spark): what "the same result" means.

Each figure is a sha256 of the table's content in a canonical order (rows sorted by id, clusters by
level and id), so two runs agree on a digest only when every id, label, size and centroid bit
agrees. ``tests/e2e/pinned_demo.json`` holds the digests the demo configuration produced before the
refactor of issue 10; the e2e test compares a fresh run against them (:func:`assert_pinned`).

The bits are those of the CPU kind they were pinned on (``_machine`` in the file): numpy's and
faiss's SIMD kernels (AVX-512 against AVX2) round sums differently, so on another kind of CPU the
same code gives other digests; the failure message says which case it is.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from deltalake import DeltaTable


PINNED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e", "pinned_demo.json")


def cpu_kind() -> str:
    """The CPU kind as the pinned digests name it: the architecture and its widest vector unit."""
    import platform

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    unit = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    return f"{platform.machine()} {unit}"


def assert_pinned(got: dict, name: str) -> None:
    """``got`` equals the digests pinned as ``name``, or an AssertionError that says whether this
    machine is the CPU kind they were pinned on (a real change) or another (re-pin here first)."""
    import json

    with open(PINNED) as f:
        pinned = json.load(f)
    if got == pinned[name]:
        return
    here, there = cpu_kind(), pinned["_machine"]
    why = ("this machine is that kind of CPU, so the results changed" if here == there else
           f"this machine is {here}: digests are bit-exact only on the CPU kind they were pinned on; pin them here from "
           "the code before your change (drop the entry, scripts/pin_demo.py --pin) and compare again")
    raise AssertionError(f"{name}: the tables' digests {got} differ from those pinned on {there} {pinned[name]}; {why}")


def _sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _rows(lake_root: str, name: str, run_id: str):
    path = os.path.join(lake_root, name)
    if not DeltaTable.is_deltatable(path):
        return None
    df = DeltaTable(path).to_pandas()
    return df[df["run_id"] == run_id]


def run_digests(lake_root: str, run_id: str, id_column: str = "id") -> dict:
    """Digests of ``clusters``, ``assignments``, ``curated`` and ``duplicates`` for one run."""
    out: dict = {}
    clusters = _rows(lake_root, "clusters", run_id)
    if clusters is not None and len(clusters):
        for level in sorted(clusters["level"].unique()):
            lv = clusters[clusters["level"] == level].sort_values("cluster_id")
            parent = lv["parent_id"].fillna(-1).to_numpy(np.int64)
            out[f"level_{int(level)}"] = {
                "n_clusters": int(len(lv)),
                "sizes": _sha(lv["size"].to_numpy(np.int64)),
                "centroids": _sha(np.stack(lv["centroid"].to_numpy()).astype(np.float32)),
                "parents": _sha(parent),
                "largest": int(lv["size"].max()),
                "smallest": int(lv["size"].min()),
            }
    assignments = _rows(lake_root, "assignments", run_id)
    if assignments is not None and len(assignments):
        a = assignments.sort_values(id_column)
        out["assignments"] = {
            "rows": int(len(a)),
            "paths": _sha(np.stack(a["path"].to_numpy()).astype(np.int64)),  # (n, T): as when each level had a column
            "distance": _sha(a["distance"].to_numpy(np.float32)),
        }
    curated = _rows(lake_root, "curated", run_id)
    if curated is not None and len(curated):
        c = curated.sort_values([id_column, "copy"])
        out["curated"] = {
            "rows": int(len(c)),
            "ids": _sha(c[id_column].to_numpy(np.int64)),
            "ranks": _sha(c["rank"].to_numpy(np.int64)),
        }
    duplicates = _rows(lake_root, "duplicates", run_id)
    if duplicates is not None and len(duplicates):
        d = duplicates.sort_values(id_column)
        out["duplicates"] = {
            "rows": int(len(d)),
            "pairs": _sha(d[[id_column, "kept_id"]].to_numpy(np.int64)),
            "similarity": _sha(d["similarity"].to_numpy(np.float64)),
        }
    return out
