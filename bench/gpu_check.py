"""The GPU checks of issue 17, as one short script for a GPU machine (never part of the suite).

    python bench/gpu_check.py --out "$OUT/gpu.json"        # needs faiss-gpu-cu12 (and a CUDA torch for --embed)

1. Bit-equality: ``nearest_centroid`` labels and distances with faiss on the GPU against the CPU
   (``LAKECURATE_FAISS_DEVICE=cpu``), 200k x 384 rows, k = 1000 and 20k.
2. Seconds per Lloyd iteration (one exact assignment pass: GPU search, CPU re-score and sums) at
   1M x 384 and 10M x 384, k = 1000 and 100k, beside ``faiss.Kmeans(gpu=True)``'s own iteration.
3. ``--embed``: the bundled MiniLM encoder on the GPU against the CPU on the same texts
   (largest difference, rows per second).

Prints one JSON object (and writes it to ``--out``) with the GPU's name, for bench/RESULTS.md.
Written for a GPU machine lent to the project; not run on this project's CPU-only machines yet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))


def mixture(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, d), dtype=np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 1_000_000):
        m = min(1_000_000, n - s)
        out[s : s + m] = centres[rng.integers(0, 2000, m)] + 0.35 * rng.standard_normal((m, d), dtype=np.float32)
    return out


def on(device: str):
    os.environ["LAKECURATE_FAISS_DEVICE"] = device


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--ks", default="1000,100000")
    ap.add_argument("--embed", action="store_true")
    args = ap.parse_args()
    import faiss

    from lakecurate.core.assign import faiss_device, nearest_centroid
    from lakecurate.core.in_process import NumpyAssigner

    res: dict = {"faiss": faiss.__version__, "gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0}
    if not res["gpus"]:
        print(json.dumps({**res, "error": "faiss sees no GPU (install faiss-gpu-cu12 on a GPU machine)"}))
        return 1
    try:
        import torch

        res["gpu_name"] = torch.cuda.get_device_name(0)
    except Exception as e:  # the name is a nicety
        res["gpu_name"] = f"unknown ({e})"
    x = mixture(200_000, 384, 1)
    res["equal"] = {}
    for k in (1000, 20_000):
        c = x[np.random.default_rng(k).choice(x.shape[0], k, replace=False)]
        on("cpu")
        lc, dc = nearest_centroid(x, c)
        on("auto")
        assert faiss_device() == "gpu"
        lg, dg = nearest_centroid(x, c)
        res["equal"][str(k)] = {"labels": bool(np.array_equal(lc, lg)), "distances": bool(np.array_equal(dc, dg)),
                                "rows_differing": int((lc != lg).sum())}
    res["per_iteration"] = {}
    for n in (int(v) for v in args.sizes.split(",")):
        x = mixture(n, 384)
        for k in (int(v) for v in args.ks.split(",")):
            c = x[np.random.default_rng(k).choice(n, k, replace=False)]
            on("auto")
            a = NumpyAssigner(x, batch_rows=262_144)
            t0 = time.perf_counter()
            a.assign(c)
            ours = time.perf_counter() - t0
            km = faiss.Kmeans(384, k, niter=2, gpu=True, max_points_per_centroid=n + 1, seed=1)
            t0 = time.perf_counter()
            km.train(x, init_centroids=c)
            cum = [s["time"] for s in km.iteration_stats]
            res["per_iteration"][f"{n}x384,k={k}"] = {"lakecurate_exact_pass_s": ours, "faiss_kmeans_gpu_s": cum[-1] - cum[-2]}
            print(json.dumps(res["per_iteration"]), flush=True)
        del x
    if args.embed:
        from sentence_transformers import SentenceTransformer

        from lakecurate.embed.encoders import resolve_text_model

        path, _ = resolve_text_model(None)  # the bundled all-MiniLM-L6-v2, as the embed stage loads it
        texts = [f"item {i}: a photo of object number {i % 997} on a table" for i in range(20_000)]
        out = {}
        for device in ("cpu", "cuda"):
            model = SentenceTransformer(path, device=device)
            t0 = time.perf_counter()
            out[device] = model.encode(texts, batch_size=256, convert_to_numpy=True)
            res[f"embed_{device}_rows_per_s"] = len(texts) / (time.perf_counter() - t0)
        res["embed_max_abs_diff"] = float(np.abs(out["cpu"] - out["cuda"]).max())
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
