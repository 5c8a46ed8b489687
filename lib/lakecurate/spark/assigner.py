"""The Spark side of the assigner seam: the Lloyd loop's data questions answered on executors.

:class:`SparkAssigner` answers the four questions of :class:`lakecurate.core.assign.Assigner`
(``sample``, ``assign``, ``closest_per_cluster``, ``labels``) with one pass over the cached
:class:`~lakecurate.spark.blocks.EmbeddingBlocks` each, calling the same per-batch faiss kernels
as the in-process assigner. An ``assign`` pass ships the k x d centroids, every task returns one
row of per-cluster partial counts and float64 sums, and the driver adds them in partition order:
its memory is O(k x d) whatever N is, and no O(N) data ever comes back to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from lakecurate.core.assign import (
    Assignment,
    GroupFit,
    RoutedCentroids,
    as_centroids,
    assign_batch,
    faiss_device,
    nearest_centroid,
    smallest_keys,
    top_r_per_cluster,
)
from lakecurate.core.keys import random_keys
from lakecurate.core.pruning import BoundsTracker, PruneStep, assign_batch_pruned, prepare_pass
from lakecurate.spark import two_step
from lakecurate.spark.block_files import keys_digest, load_bounds, save_bounds
from lakecurate.spark.blocks import EmbeddingBlocks


@dataclass
class AssignTuning:
    """How the executors compute and combine one assignment pass (results are the same bits).

    The defaults are the fast choices; the others exist so ``bench/clustering.py`` can measure
    each optimisation one at a time.
    """

    #: partial sums per batch: ``sparse`` one-hot matmul or ``add_at`` (np.add.at)
    sums: str = "sparse"
    #: partial results per partition: ``dense`` (k x d float64 per partition), ``sparse`` (only the
    #: partition's non-empty clusters, combined on the driver), ``shuffle`` (non-empty clusters as
    #: rows, summed per cluster on the executors, so the driver receives k rows whatever the
    #: number of partitions), ``auto`` = ``shuffle`` when the dense partials of all partitions
    #: would reach ``shuffle_min_bytes`` (the driver would otherwise receive that much), else ``sparse``
    partials: str = "auto"
    shuffle_min_bytes: int = 1 << 30  # e.g. k >= ~22k at d = 384 on 16 partitions
    #: group bounds kept beside the block files between passes (:mod:`lakecurate.core.pruning`)
    prune: bool = True

    def partials_for(self, k: int, d: int, partitions: int) -> str:
        if self.partials != "auto":
            return self.partials
        return "shuffle" if 8 * k * d * partitions >= self.shuffle_min_bytes else "sparse"


@dataclass(frozen=True)
class Pruning:
    """A pass's group bounds (:mod:`lakecurate.core.pruning`), kept per block beside its block files."""

    step: PruneStep
    cache_id: str


def partition_assignment(blocks, centroids: np.ndarray, sums_method: str, pruning: Optional[Pruning] = None) -> Assignment:
    """Assignment statistics of one partition's blocks (every partial-aggregation form starts here).

    With ``pruning`` (and a CPU), each block starts from the bounds its executor kept from the
    previous pass, when they are there and were made for that pass's centroids, and keeps new ones.
    """
    k, d = centroids.shape
    acc = Assignment.zeros(k, d)
    pp = prepare_pass(centroids, pruning.step) if pruning is not None and faiss_device() == "cpu" else None
    for b in blocks:
        if not b.n:
            continue
        if pp is not None:
            keys_id = keys_digest(b.keys)
            prior = load_bounds(pruning.cache_id, b.part, b.seq, keys_id, pruning.step.prev_fingerprint)
            part_acc, bounds, _ = assign_batch_pruned(b.vectors, pp, prior)
            save_bounds(pruning.cache_id, b.part, b.seq, keys_id, bounds)
            acc = acc + part_acc
        else:
            acc = acc + assign_batch(b.vectors, centroids, sums_method)
    return acc


class SparkAssigner:
    """The assigner seam over cached embedding blocks (see the module docstring)."""

    in_memory = False

    def __init__(self, blocks: EmbeddingBlocks, tuning: Optional[AssignTuning] = None):
        self.blocks = blocks
        self.tuning = tuning or AssignTuning()
        self._tracker = BoundsTracker()

    def _pruning(self, centroids) -> Optional[Pruning]:
        """This pass's bounds, where they can be kept (block files) and pay (k, not a two-step level)."""
        if not self.tuning.prune or isinstance(centroids, RoutedCentroids) or not self.blocks.read_block_files:
            return None
        step = self._tracker.step(centroids)
        return None if step is None else Pruning(step, self.blocks.cache_id)

    @property
    def n(self) -> int:
        return self.blocks.n

    @property
    def d(self) -> int:
        return self.blocks.d

    def sample(self, size: int, salt: int) -> np.ndarray:
        # pass 1: the size smallest keys per partition -> the global cut-off key
        def smallest(blocks, payload):
            size_, salt_ = payload
            best_k = np.zeros(0, np.uint64)
            best_r = np.zeros(0, np.int64)
            for b in blocks:
                k = np.concatenate([best_k, random_keys(b.keys, salt_)])
                r = np.concatenate([best_r, b.keys])
                pos = smallest_keys(k, r, size_)
                best_k, best_r = k[pos], r[pos]
            yield pa.record_batch({"keys": pa.array([best_k.tobytes()]), "rows": pa.array([best_r.tobytes()])})

        ks, rs = [], []
        for row in self.blocks.collect(smallest, "keys BINARY, rows BINARY", (size, salt)):
            ks.append(np.frombuffer(row["keys"], np.uint64))
            rs.append(np.frombuffer(row["rows"], np.int64))
        k, r = np.concatenate(ks), np.concatenate(rs)
        chosen_rows = r[smallest_keys(k, r, size)]

        # pass 2: fetch exactly those rows' vectors
        def fetch(blocks, wanted):
            for b in blocks:
                hit = np.flatnonzero(np.isin(b.keys, wanted))
                if hit.size:
                    yield pa.record_batch({"rows": pa.array([b.keys[hit].tobytes()]), "vectors": pa.array([b.vectors[hit].tobytes()])})

        got_r, got_x = [], []
        for row in self.blocks.collect(fetch, "rows BINARY, vectors BINARY", chosen_rows):
            got_r.append(np.frombuffer(row["rows"], np.int64))
            got_x.append(np.frombuffer(row["vectors"], np.float32).reshape(-1, self.d))
        rows_all, x_all = np.concatenate(got_r), np.concatenate(got_x)
        pos = {int(v): i for i, v in enumerate(rows_all)}
        return x_all[[pos[int(v)] for v in chosen_rows]]

    def assign(self, centroids: np.ndarray) -> Assignment:
        k, d = centroids.shape
        mode = self.tuning.partials_for(k, d, self.blocks.num_partitions)
        sums_method = self.tuning.sums
        pruning = self._pruning(centroids)
        if mode == "shuffle":
            return self._assign_shuffle(as_centroids(centroids), pruning)

        def partial(blocks, payload):
            c, pr = payload
            acc = partition_assignment(blocks, c, sums_method, pr)
            if mode == "dense":
                cid = np.arange(k, dtype=np.int32)
            else:  # only the clusters this partition touched: at most its row count, not k
                cid = np.flatnonzero(acc.counts).astype(np.int32)
            yield pa.record_batch(
                {
                    "cid": pa.array([cid.tobytes()]),
                    "counts": pa.array([acc.counts[cid].tobytes()]),
                    "sums": pa.array([np.ascontiguousarray(acc.sums[cid]).tobytes()]),
                    "inertia": pa.array([acc.cluster_inertia[cid].tobytes()]),
                }
            )

        counts = np.zeros(k, np.int64)
        sums = np.zeros((k, d))
        per_cluster = np.zeros(k)
        # partitions arrive in partition order, so the float64 additions happen in a fixed order
        rows = self.blocks.collect(partial, "cid BINARY, counts BINARY, sums BINARY, inertia BINARY", (as_centroids(centroids), pruning))
        for row in rows:
            cid = np.frombuffer(row["cid"], np.int32)
            counts[cid] += np.frombuffer(row["counts"], np.int64)
            sums[cid] += np.frombuffer(row["sums"], np.float64).reshape(-1, d)
            per_cluster[cid] += np.frombuffer(row["inertia"], np.float64)
        return Assignment(counts, sums, float(per_cluster.sum()), per_cluster)

    def _assign_shuffle(self, centroids: np.ndarray, pruning: Optional[Pruning] = None) -> Assignment:
        """Per-cluster rows summed on the executors (large k): the driver receives k rows, once.

        Each partition emits one row per non-empty cluster; a shuffle by cluster id brings a
        cluster's rows together, where they are added in partition order (the order the driver
        would use), so the result is the same bits as the other forms.
        """
        k, d = centroids.shape
        sums_method = self.tuning.sums

        def partial(blocks, payload):
            from lakecurate.spark.tasks import task_partition

            c, pr = payload
            part = task_partition()
            acc = partition_assignment(blocks, c, sums_method, pr)
            cid = np.flatnonzero(acc.counts)
            for s in range(0, cid.size, 4096):
                sel = cid[s : s + 4096]
                yield pa.record_batch(
                    {
                        "cid": pa.array(sel.astype(np.int32)),
                        "part": pa.array(np.full(sel.size, part, np.int32)),
                        "count": pa.array(acc.counts[sel]),
                        "inertia": pa.array(acc.cluster_inertia[sel]),
                        "sum": pa.array([r.tobytes() for r in acc.sums[sel]], pa.binary()),
                    }
                )

        def combine(batches):
            tables = [pa.Table.from_batches([b]) for b in batches if b.num_rows]
            if not tables:
                return
            t = pa.concat_tables(tables)
            cid = t.column("cid").to_numpy()
            part = t.column("part").to_numpy()
            order = np.lexsort((part, cid))
            cid = cid[order]
            cnt = t.column("count").to_numpy()[order]
            ine = t.column("inertia").to_numpy()[order]
            vec = np.frombuffer(b"".join(t.column("sum").to_pylist()), np.float64).reshape(-1, d)[order]
            starts = np.flatnonzero(np.r_[True, cid[1:] != cid[:-1]])
            ends = np.r_[starts[1:], cid.size]
            out_s = np.zeros((starts.size, d))
            out_c = np.zeros(starts.size, np.int64)
            out_i = np.zeros(starts.size)
            for j in range(int(np.diff(np.r_[starts, cid.size]).max())):  # j-th partition of every cluster
                live = starts + j < ends
                rows = starts[live] + j
                out_s[live] += vec[rows]
                out_c[live] += cnt[rows]
                out_i[live] += ine[rows]
            yield pa.record_batch(
                {
                    "cid": pa.array(cid[starts].astype(np.int32)),
                    "count": pa.array(out_c),
                    "inertia": pa.array(out_i),
                    "sums": pa.array([r.tobytes() for r in out_s], pa.binary()),
                }
            )

        schema = "cid INT, part INT, count LONG, inertia DOUBLE, sum BINARY"
        with self.blocks.mapped(partial, schema, (centroids, pruning)) as rows:
            combined = rows.repartition(max(1, self.blocks.num_partitions), "cid").mapInArrow(combine, "cid INT, count LONG, inertia DOUBLE, sums BINARY")
            table = combined.toArrow()
        counts = np.zeros(k, np.int64)
        sums = np.zeros((k, d))
        per_cluster = np.zeros(k)
        if table.num_rows:
            cid = table.column("cid").to_numpy()
            counts[cid] = table.column("count").to_numpy()
            per_cluster[cid] = table.column("inertia").to_numpy()
            sums[cid] = np.frombuffer(b"".join(table.column("sums").to_pylist()), np.float64).reshape(-1, d)
        return Assignment(counts, sums, float(per_cluster.sum()), per_cluster)

    def closest_per_cluster(self, centroids: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        def candidates(blocks, c):
            lab = np.zeros(0, np.int64)
            dist = np.zeros(0, np.float32)
            rows = np.zeros(0, np.int64)
            xs = np.zeros((0, c.shape[1]), np.float32)
            for b in blocks:
                lb, db = nearest_centroid(b.vectors, c)
                lab, dist, rows = np.r_[lab, lb], np.r_[dist, db], np.r_[rows, b.keys]
                xs = np.concatenate([xs, b.vectors])
                keep = top_r_per_cluster(lab, dist, rows, r)
                lab, dist, rows, xs = lab[keep], dist[keep], rows[keep], xs[keep]
            yield pa.record_batch(
                {
                    "labels": pa.array([lab.tobytes()]),
                    "dist": pa.array([dist.tobytes()]),
                    "rows": pa.array([rows.tobytes()]),
                    "vectors": pa.array([xs.tobytes()]),
                }
            )

        parts = self.blocks.collect(candidates, "labels BINARY, dist BINARY, rows BINARY, vectors BINARY", as_centroids(centroids))
        lab = np.concatenate([np.frombuffer(p["labels"], np.int64) for p in parts])
        dist = np.concatenate([np.frombuffer(p["dist"], np.float32) for p in parts])
        rows = np.concatenate([np.frombuffer(p["rows"], np.int64) for p in parts])
        xs = np.concatenate([np.frombuffer(p["vectors"], np.float32).reshape(-1, self.d) for p in parts])
        keep = top_r_per_cluster(lab, dist, rows, r)
        order = keep[np.argsort(rows[keep], kind="stable")]
        return rows[order], xs[order]

    def fit_groups(self, coarse: np.ndarray, fit_one) -> list[GroupFit]:
        return two_step.fit_groups(self.blocks, coarse, fit_one)

    def labels(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row labels collected to the driver, ordered by row key (levels > 1 only: O(k) rows).

        A two-step level's routed centroids are never shipped whole: rows meet their group's
        fine centroids in a cogroup (:func:`lakecurate.spark.two_step.routed_labels`).
        """
        if isinstance(centroids, RoutedCentroids):
            return two_step.routed_labels(self.blocks, centroids)

        def label(blocks, c):
            for b in blocks:
                lab, dist = nearest_centroid(b.vectors, c)
                yield pa.record_batch({"rows": pa.array([b.keys.tobytes()]), "labels": pa.array([lab.tobytes()]), "dist": pa.array([dist.tobytes()])})

        parts = self.blocks.collect(label, "rows BINARY, labels BINARY, dist BINARY", as_centroids(centroids))
        rows = np.concatenate([np.frombuffer(p["rows"], np.int64) for p in parts])
        lab = np.concatenate([np.frombuffer(p["labels"], np.int64) for p in parts])
        dist = np.concatenate([np.frombuffer(p["dist"], np.float32) for p in parts])
        order = np.argsort(rows, kind="stable")
        return lab[order], dist[order]
