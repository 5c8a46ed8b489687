"""Two-step level 1 on Spark (``clustering.level1_coarse_clusters``): the Spark half of
:mod:`lakecurate.core.two_step`, for very large k_1.

Step 1: a coarse k-means with ``coarse_k`` clusters over all rows, on the executors through the
usual Spark assigner. Step 2: every row is labelled with its coarse cluster, rows are grouped by
that label and ``applyInPandas`` runs a k-means inside each coarse cluster with a share of k_1
proportional to its size (:func:`lakecurate.core.two_step.allocate_subclusters`). Only the k_1
fine centroids come back to the driver. A final assignment pass over all rows then gives level
1's counts and inertia, exactly as after a one-step level 1, so the rest of the hierarchy, the
checkpoints and the ``assignments`` table are unchanged. Resampling is not applied at level 1
in this mode (the paper's r = 1 at level 1); config validation enforces it.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from lakecurate.core.assign import nearest_centroid
from lakecurate.core.hierarchy import Level, LevelParams, warn_if_degraded
from lakecurate.core.kmeans import fit_kmeans_assigner
from lakecurate.core.two_step import allocate_subclusters, fit_fine
from lakecurate.spark.assigner import SparkAssigner
from lakecurate.spark.tasks import configure_faiss

log = logging.getLogger(__name__)


def fit_level1_two_step(assigner: SparkAssigner, params: LevelParams, coarse_k: int, seed: int) -> Level:
    """Level 1 by coarse k-means + per-coarse-cluster k-means (``applyInPandas``)."""
    import pandas as pd

    t0 = time.perf_counter()
    d = assigner.d
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
    coarse = fit_kmeans_assigner(
        assigner, coarse_k, rng, n_iter=params.n_iter, init=params.init, spherical=params.spherical,
        init_points_per_centroid=params.init_points_per_centroid,
    )
    share = allocate_subclusters(coarse.counts, params.n_clusters)
    log.info("level 1 two-step: %d coarse clusters done in %.1fs; fine k per coarse cluster %d..%d",
             coarse_k, time.perf_counter() - t0, int(share[share > 0].min()), int(share.max()))
    blocks = assigner.blocks
    threads = blocks.faiss_threads

    def label_rows(batches, c):
        for b in batches:
            lab, _ = nearest_centroid(b.vectors, c)
            yield pa.record_batch({
                "coarse": pa.array(lab.astype(np.int32)),
                "row_key": pa.array(b.keys),
                "vec": pa.array([r.tobytes() for r in b.vectors], pa.binary()),
            })

    def fine(pdf: "pd.DataFrame") -> "pd.DataFrame":
        configure_faiss(threads)
        cid = int(pdf["coarse"].iloc[0])
        pdf = pdf.sort_values("row_key", kind="stable")  # the fit sees rows in key order: any partitioning
        x = np.frombuffer(b"".join(pdf["vec"].tolist()), np.float32).reshape(-1, d)
        cent = fit_fine(x, int(share[cid]), params, seed, cid)
        return pd.DataFrame({"coarse": cid, "j": np.arange(cent.shape[0], dtype=np.int32), "centroid": [r.tobytes() for r in cent]})

    with blocks.mapped(label_rows, "coarse INT, row_key LONG, vec BINARY", coarse.centroids) as rows:
        got = rows.groupBy("coarse").applyInPandas(fine, "coarse INT, j INT, centroid BINARY").toPandas()
    got = got.sort_values(["coarse", "j"], kind="stable")
    centroids = np.frombuffer(b"".join(got["centroid"].tolist()), np.float32).reshape(-1, d).copy()
    final = assigner.assign(centroids)
    level = Level(
        level=1,
        centroids=centroids,
        counts=final.counts,
        sizes=final.counts.copy(),
        objective=float(final.inertia),
        cluster_inertia=final.cluster_inertia,
        n_reseeded=coarse.n_reseeded,
        n_empty=int((final.counts == 0).sum()),
        seconds=time.perf_counter() - t0,
        steps=[{
            "step": 0, "n_points": assigner.n, "two_step": True, "coarse_clusters": coarse_k,
            "init_seconds": round(coarse.init_seconds, 4), "objective": float(final.inertia),
            "coarse_objective": coarse.objective, "n_reseeded": coarse.n_reseeded,
            "iterations": [vars(it) for it in coarse.iterations],
        }],
    )
    warn_if_degraded(level)
    log.info("level 1 two-step done in %.1fs: %d clusters, objective=%.6g, empty=%d",
             level.seconds, level.n_clusters, level.objective, level.n_empty)
    return level
