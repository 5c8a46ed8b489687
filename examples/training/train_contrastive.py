"""Train a small contrastive model on a run's shards: same-cluster (hard-negative) batches against
mixed ones, then one expert per top-level cluster (Divide and Contrast, Tian et al. 2021).

On the demo (two commands first)::

    make demo
    .venv/bin/lakecurate shards demo shards.payload_columns=[embedding,concept]
    .venv/bin/python examples/training/train_contrastive.py --lake lake/demo

The model is an MLP projection of the pool's embeddings trained with InfoNCE (SimCLR's loss):
the two views of a row are the embedding with independent noise and feature dropout; the other
rows of its batch are its negatives. It prints, per batch mode, how hard the negatives are (the
mean cosine of a row to the other rows of its batch, in the input space and in the trained
model's space) and the loss, then each expert's loss on its own shard against the base model's.
No Spark: the table is read with lakecurate.torch.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lakecurate.torch import ClusterBatches, to_tensors

log = logging.getLogger("train_contrastive")


def views(x: torch.Tensor, gen: torch.Generator, noise: float = 0.3, drop: float = 0.2) -> torch.Tensor:
    keep = (torch.rand(x.shape, generator=gen) > drop).float() / (1 - drop)
    return x * keep + noise * x.std() * torch.randn(x.shape, generator=gen)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = z1 @ z2.T / temperature
    target = torch.arange(z1.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def negative_cosine(z: torch.Tensor) -> float:
    """Mean cosine of a row to the other rows of its batch (its negatives): higher is harder."""
    z = F.normalize(z, dim=1)
    s = z @ z.T
    n = z.shape[0]
    return float((s.sum() - s.diagonal().sum()) / (n * (n - 1))) if n > 1 else float("nan")


def model_for(dim: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))


def batches(table: str, mode: str, batch_size: int, *, run_id=None, one_shard=None, seed=0, workers=0):
    ds = ClusterBatches(table, mode=mode, batch_size=batch_size, columns=["embedding"], transform=to_tensors,
                        run_id=run_id, one_shard=one_shard, seed=seed, drop_last=True)
    return ds, DataLoader(ds, batch_size=None, num_workers=workers)


def train(table: str, mode: str, *, epochs: int = 3, batch_size: int = 256, run_id=None, one_shard=None, seed: int = 0,
          model: torch.nn.Module = None, workers: int = 0, lr: float = 1e-3) -> dict:
    """Train (or go on training ``model``) on ``mode`` batches; returns the model and the figures."""
    ds, loader = batches(table, mode, batch_size, run_id=run_id, one_shard=one_shard, seed=seed, workers=workers)
    gen = torch.Generator().manual_seed(seed)
    losses, raw_neg, model_neg = [], [], []
    opt = None
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader:
            x = batch["embedding"]
            if model is None:
                model = model_for(x.shape[1], seed)
            if opt is None:
                opt = torch.optim.Adam(model.parameters(), lr=lr)
            z1, z2 = model(views(x, gen)), model(views(x, gen))
            loss = info_nce(z1, z2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if epoch == epochs - 1:
                raw_neg.append(negative_cosine(x))
                with torch.no_grad():
                    model_neg.append(negative_cosine(model(x)))
    if model is None:
        raise SystemExit(f"{table}: no full batch of {batch_size} rows to train on (mode {mode}, shard {one_shard})")
    last = max(1, len(losses) // max(epochs, 1))
    return {"model": model, "mode": mode, "batches": len(losses), "loss": float(np.mean(losses[-last:])),
            "raw_negative_cosine": float(np.mean(raw_neg)), "model_negative_cosine": float(np.mean(model_neg))}


@torch.no_grad()
def evaluate(model: torch.nn.Module, table: str, *, batch_size: int, run_id=None, one_shard=None, seed: int = 99) -> float:
    """Mean InfoNCE loss of ``model`` on one pass of mixed batches (of one shard, if given)."""
    ds, loader = batches(table, "mixed", batch_size, run_id=run_id, one_shard=one_shard, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    out = [float(info_nce(model(views(b["embedding"], gen)), model(views(b["embedding"], gen)))) for b in loader]
    return float(np.mean(out)) if out else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lake", default="lake/demo", help="the lake root (its shards table is read)")
    p.add_argument("--run-id", default=None, help="the run (default: the only one in the table)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--experts", type=int, default=3, help="train experts for this many of the largest shards (0: none)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    table = os.path.join(args.lake, "shards")
    results = {}
    for mode in ("mixed", "same_cluster"):
        results[mode] = train(table, mode, epochs=args.epochs, batch_size=args.batch_size, run_id=args.run_id, workers=args.workers)
    out = [f"\n{'batches':<14}{'loss':>8}{'neg. cosine (input)':>22}{'neg. cosine (model)':>22}"]
    for mode, r in results.items():
        out.append(f"{mode:<14}{r['loss']:>8.3f}{r['raw_negative_cosine']:>22.3f}{r['model_negative_cosine']:>22.3f}")
    base = results["same_cluster"]["model"]
    if args.experts:
        shards = ClusterBatches(table, run_id=args.run_id).table
        sizes = {}
        for unit in shards.units:
            sizes[unit.shard] = sizes.get(unit.shard, 0) + unit.rows
        out.append(f"\nexperts (one per shard, from the base model; loss on their own shard, mixed batches of {args.batch_size // 2}):")
        out.append(f"{'shard':<8}{'rows':>8}{'base':>8}{'expert':>8}")
        for shard in sorted(sizes, key=lambda s: (-sizes[s], s))[: args.experts]:  # the largest; equal sizes by shard
            log.info("training the expert of shard %s (%d rows)", shard, sizes[shard])
            expert = train(table, "mixed", epochs=args.epochs, batch_size=args.batch_size // 2, run_id=args.run_id,
                           one_shard=shard, model=copy.deepcopy(base))["model"]
            kw = dict(batch_size=args.batch_size // 2, run_id=args.run_id, one_shard=shard)
            out.append(f"{shard:<8}{sizes[shard]:>8}{evaluate(base, table, **kw):>8.3f}{evaluate(expert, table, **kw):>8.3f}")
    # the results after every log line (the log goes to stderr, and would otherwise land between them)
    sys.stderr.flush()
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
