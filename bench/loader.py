"""Training-loader benchmark (issue 14): lakecurate.torch against a plain pyarrow scan of the same table.

    .venv/bin/python bench/loader.py                          # 250k and 1M rows x 384 (about 5 min, 2 cores)
    .venv/bin/python bench/loader.py --sizes 20000 --quick    # a smoke run (seconds)

Prints Markdown and writes bench/results/loader.json. The table has the shards stage's layout,
written with delta-rs: partitioned by (run_id, shard), one file per shard, row groups of about
4 MiB (as the stage writes them); 50 shards of Zipf sizes (exponent 1.1), rows of (id,
embedding float32 x d) with random values (embeddings do not compress). Every measurement runs in
its own process, which runs two epochs (every row of the table each), each timed from the first
batch asked to the last received; batches of 256 rows as ``pyarrow.RecordBatch`` (no tensor
conversion unless said). The second epoch is the steady state a training run sees; the first
also pays for the process's first touch of its memory (see bench/RESULTS.md):

* ``scan``: ``pyarrow.dataset`` over the same files, ``to_batches(batch_size=256)`` (its
  default: threads on every core); ``scan_1_thread``: the same with ``use_threads=False``;
* ``mixed`` / ``same_cluster`` / ``balanced``: :class:`lakecurate.torch.ClusterBatches` in one
  process (one slot: one core);
* ``mixed_tensors``: ``mixed`` with ``transform=to_tensors`` (the embedding as an (n, d) tensor);
* ``mixed_2_workers``: ``mixed_tensors`` through ``DataLoader(num_workers=2)`` (both cores; the
  tensors cross to the main process in shared memory, as PyTorch sends them);
* ``map_style``: the usual naive map-style dataset: the table read into memory, ``__getitem__``
  returns one row as a tensor, ``DataLoader(batch_size=256, shuffle=True)`` collates them.

Memory: the process's peak RSS (VmHWM) above its RSS after imports, so flat in the table's size
means the loader's own buffers, not the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
N_SHARDS = 50
BATCH = 256
RUN_ID = "bench-loader"

sys.path.insert(0, HERE)
from data import peak_mb, rss_mb  # noqa: E402


def make_table(root: str, n: int, d: int, seed: int = 0) -> str:
    """The shards-layout Delta table (reused when present)."""
    import pyarrow as pa
    from deltalake import WriterProperties, write_deltalake

    from lakecurate.core.synthetic import zipf_sizes

    path = os.path.join(root, f"shards-n{n}-d{d}")
    if os.path.exists(os.path.join(path, "_delta_log")):
        return path
    rng = np.random.default_rng(seed)
    sizes = zipf_sizes(n, N_SHARDS, 1.1)
    rows_per_group = max(1, (4 << 20) // (4 * d + 8))
    start = 0
    for shard, size in enumerate(sizes):
        x = rng.standard_normal((int(size), d), dtype=np.float32)
        table = pa.table({
            "id": np.arange(start, start + size, dtype=np.int64), "shard": np.full(size, shard, np.int32),
            "level": np.full(size, 2, np.int32),
            "embedding": pa.ListArray.from_arrays(np.arange(0, (size + 1) * d, d, dtype=np.int32), pa.array(x.ravel())),
            "run_id": [RUN_ID] * int(size),
        })
        write_deltalake(path, table, partition_by=["run_id", "shard"], mode="append",
                        writer_properties=WriterProperties(max_row_group_size=rows_per_group))
        start += int(size)
    return path


# ------------------------------------------------------------------ workers (one process each)


def _files(path: str) -> list[str]:
    from lakecurate.lake import delta_files

    return [f.uri for f in delta_files(path)[1]]


def w_scan(p: dict, threads: bool = True) -> dict:
    import pyarrow.dataset as pads

    files = _files(p["table"])
    base = rss_mb()

    def epoch():
        rows = 0
        for b in pads.dataset(files, format="parquet").to_batches(columns=["embedding"], batch_size=BATCH, use_threads=threads):
            rows += b.num_rows
        return rows

    return epochs(epoch, base)


def epochs(epoch, base: float, n: int = 2) -> dict:
    """``n`` epochs of ``epoch()`` (which returns its rows), timed one by one."""
    seconds, rows = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        rows = epoch()
        seconds.append(time.perf_counter() - t0)
    return {"rows": rows, "epoch_seconds": seconds, "seconds": seconds[-1], "memory_mb": peak_mb() - base}


def w_loader(p: dict, mode: str, workers: int = 0, tensors: bool = False) -> dict:
    from torch.utils.data import DataLoader

    from lakecurate.torch import ClusterBatches, to_tensors

    ds = ClusterBatches(p["table"], mode=mode, batch_size=BATCH, columns=["embedding"], transform=to_tensors if tensors else None)
    base = rss_mb()
    count = {"e": 0}

    def epoch():
        ds.set_epoch(count["e"])
        count["e"] += 1
        rows = 0
        for b in (DataLoader(ds, batch_size=None, num_workers=workers) if workers else ds):
            rows += b.num_rows if not tensors else b["embedding"].shape[0]
        return rows

    return epochs(epoch, base)


def w_map_style(p: dict) -> dict:
    import pyarrow.dataset as pads
    import torch
    from torch.utils.data import DataLoader, Dataset

    files = _files(p["table"])
    base = rss_mb()
    t0 = time.perf_counter()
    col = pads.dataset(files, format="parquet").to_table(columns=["embedding"]).column("embedding").combine_chunks()
    x = col.flatten().to_numpy().reshape(len(col), -1)
    load = time.perf_counter() - t0

    class Rows(Dataset):
        def __len__(self):
            return x.shape[0]

        def __getitem__(self, i):
            return torch.from_numpy(x[i])

    def epoch():
        rows = 0
        for b in DataLoader(Rows(), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0)):
            rows += b.shape[0]
        return rows

    out = epochs(epoch, base)
    out["epoch_seconds"][0] += load  # the first epoch reads the table into memory
    return out


WORKERS = {
    "scan": w_scan,
    "scan_1_thread": lambda p: w_scan(p, threads=False),
    "mixed": lambda p: w_loader(p, "mixed"),
    "same_cluster": lambda p: w_loader(p, "same_cluster"),
    "balanced": lambda p: w_loader(p, "balanced"),
    "mixed_tensors": lambda p: w_loader(p, "mixed", tensors=True),
    "mixed_2_workers": lambda p: w_loader(p, "mixed", workers=2, tensors=True),
    "map_style": w_map_style,
}


def run_worker(name: str, params: dict) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--params", json.dumps(params), "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {name} failed")
    with open(out) as f:
        res = json.load(f)
    os.remove(out)
    res["rows_per_second"] = res["rows"] / res["seconds"]
    res["first_epoch_rows_per_second"] = res["rows"] / res["epoch_seconds"][0]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="250000,1000000")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--quick", action="store_true", help="skip the slow map-style baseline and the 2-worker loader")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "lakecurate-bench-loader"))
    ap.add_argument("--worker")
    ap.add_argument("--params")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lib"))
    if args.worker:
        res = WORKERS[args.worker](json.loads(args.params))
        with open(args.out, "w") as f:
            json.dump(res, f)
        return 0
    os.makedirs(args.data, exist_ok=True)
    names = [n for n in WORKERS if not (args.quick and n in ("map_style", "mixed_2_workers"))]
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        table = make_table(args.data, n, args.dim)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(table) for f in fs)
        row = {"rows": n, "dim": args.dim, "table_mb": size / 2**20, "by": {}}
        for name in names:
            res = run_worker(name, {"table": table})
            if res["rows"] != n:
                raise SystemExit(f"{name} yielded {res['rows']} rows of {n}")
            row["by"][name] = res
            print(f"  n={n} {name}: {res['rows_per_second']:,.0f} rows/s (first epoch {res['first_epoch_rows_per_second']:,.0f}), "
                  f"peak +{res['memory_mb']:.0f} MB", file=sys.stderr)
        results.append(row)
    cols = names
    for key, what in (("rows_per_second", "the second epoch"), ("first_epoch_rows_per_second", "the first epoch (fresh process)")):
        print(f"\n### Loader: rows/s of {what}, batches of {BATCH} (d = {args.dim}, {N_SHARDS} shards)\n")
        print("| rows | table MB | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for row in results:
            print(f"| {row['rows']:,} | {row['table_mb']:.0f} | " + " | ".join(f"{row['by'][c][key]:,.0f}" for c in cols) + " |")
    print("\nRatios to the pyarrow scan in the same run, second epoch (1 = as fast):\n")
    print("| rows | mixed / scan_1_thread | same_cluster / scan_1_thread | balanced / scan_1_thread | "
          + ("mixed_2_workers / scan | " if "mixed_2_workers" in cols else "") + ("map_style / scan |" if "map_style" in cols else ""))
    print("|---|---|---|---|" + ("---|" if "mixed_2_workers" in cols else "") + ("---|" if "map_style" in cols else ""))
    for row in results:
        r = {c: row["by"][c]["rows_per_second"] for c in cols}
        cells = [r["mixed"] / r["scan_1_thread"], r["same_cluster"] / r["scan_1_thread"], r["balanced"] / r["scan_1_thread"]]
        if "mixed_2_workers" in cols:
            cells.append(r["mixed_2_workers"] / r["scan"])
        if "map_style" in cols:
            cells.append(r["map_style"] / r["scan"])
        print(f"| {row['rows']:,} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    print("\nPeak memory above the process's baseline (MB):\n")
    print("| rows | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for row in results:
        print(f"| {row['rows']:,} | " + " | ".join(f"{row['by'][c]['memory_mb']:.0f}" for c in cols) + " |")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "loader.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
