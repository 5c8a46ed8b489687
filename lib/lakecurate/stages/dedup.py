"""Dedup stage: semantic de-duplication of the input embeddings -> the ``duplicates`` table.

The Spark form of :func:`lakecurate.core.dedup.find_duplicates`, step for step, so both remove the
same rows (see that module's docstring for the rule):

1. The input is cached as blocks (the level-1 machinery, :class:`SparkAssigner`) and every row is
   scaled to unit norm with :func:`unit_rows`; a spherical k-means with ``dedup.n_clusters``
   coarse clusters runs through the same Lloyd loop as the pure API (:func:`coarse_clustering`).
2. On the executors every row gets its coarse cluster, its similarity to that centroid and, with
   ``dedup.n_neighbor_clusters = r``, its r nearest other clusters; it is routed to its own
   cluster's task and, as a *probe*, to each neighbour's.
3. One ``applyInArrow`` task per (cluster, task) calls :func:`dedup_cluster`: pairwise cosine in
   ``block_size`` tiles, so no m x m matrix exists. It emits every row removed inside the cluster
   (with its local representative) and the cross pairs its probes found.
4. The driver merges the cross pairs' groups (:func:`merge_cross_cluster`, O(cross pairs) memory),
   the remap is broadcast back, similarities to moved representatives are recomputed on the
   executors, and the removed rows are committed as one version of ``duplicates``.

Memory: a task holds its cluster's rows plus its probes. A coarse cluster with more than
``dedup.max_cluster_rows`` rows (a million copies of one meme all land in one cluster whatever k)
is split into q chunks by a hash of the row key; task (a, a) resolves chunk a and task (a, b),
a < b, compares chunk a (as probes) with chunk b, so a task holds at most two chunks. The chunks
then act like sub-clusters whose groups meet in the driver merge: the groups and representatives
are the same as one call over the whole cluster, at about twice its compute.

Nothing is deleted: :meth:`StageContext.input_frame` anti-joins the run's ``duplicates`` rows,
so the kept set is what the cluster stage sees.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pyarrow as pa

from lakecurate.core.assign import nearest_centroid
from lakecurate.core.dedup import (
    centroid_similarity,
    coarse_clustering,
    dedup_cluster,
    default_n_clusters,
    exact_cosine,
    merge_cross_cluster,
    neighbor_clusters,
    remap_rows,
    removal_by_band,
    unit_rows,
)
from lakecurate.core.keys import random_keys
from lakecurate.errors import InputDataError
from lakecurate.spark.arrow import list_column_to_matrix, matrix_to_list_array
from lakecurate.spark.assigner import (
    BLOCK_DDL,
    AssignTuning,
    SparkAssigner,
    _block_arrays,
    _ipc_array,
    _iter_blocks,
    _one_thread_per_core,
)
from lakecurate.stages.context import DUPLICATES, StageContext

log = logging.getLogger(__name__)

#: roles of a routed row in its task
ROLE_MEMBER = 0  # a member whose local group this task resolves (its own cluster's diagonal task)
ROLE_PAIR_MEMBER = 1  # a member compared with another chunk of its cluster; resolved elsewhere
ROLE_PROBE = 2  # a row of another cluster (or chunk) compared with the members only
#: kinds of a task's output row
KIND_REMOVED = 0  # a member removed inside its cluster, with its local representative
KIND_CROSS = 1  # a (probe, local representative) pair between clusters or chunks
#: seeds the chunk a row of a huge cluster goes to (any fixed value: chunks only bound memory)
_CHUNK_SALT = 0x5EDDED


def _id_field(name: str, id_type):
    from pyspark.sql import types as T

    return T.StructField(name, id_type)


def _routed_schema(id_type):
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("cluster", T.IntegerType()),  # the task's cluster
            T.StructField("task", T.IntegerType()),  # chunk pair a * q + b (0 for a normal cluster)
            T.StructField("role", T.ByteType()),
            T.StructField("row", T.LongType()),
            _id_field("id", id_type),
            T.StructField("own_cluster", T.IntegerType()),
            T.StructField("csim", T.DoubleType()),
            T.StructField("vector", T.ArrayType(T.FloatType())),
        ]
    )


def _result_schema(id_type):
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("kind", T.ByteType()),
            T.StructField("row", T.LongType()),
            _id_field("id", id_type),
            T.StructField("cluster", T.IntegerType()),
            T.StructField("csim", T.DoubleType()),
            T.StructField("kept", T.LongType()),
            _id_field("kept_id", id_type),
            T.StructField("kept_cluster", T.IntegerType()),
            T.StructField("kept_csim", T.DoubleType()),
            T.StructField("similarity", T.DoubleType()),
        ]
    )


def _unit_blocks_fn():
    def to_unit(batches):
        for batch in batches:
            vectors = []
            for b in _iter_blocks([batch]):
                _, x = _block_arrays(b)
                vectors.append(unit_rows(x).tobytes())
            idx = batch.schema.get_field_index("vectors")
            yield batch.set_column(idx, "vectors", pa.array(vectors, pa.binary()))

    return to_unit


def chunks_per_cluster(sizes: np.ndarray, max_cluster_rows: int) -> np.ndarray:
    """q chunks per coarse cluster: 1 up to ``max_cluster_rows`` rows, else enough to fit them."""
    return np.maximum(1, np.ceil(np.asarray(sizes, np.float64) / max_cluster_rows)).astype(np.int64)


def chunk_of(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The chunk of each row in its cluster (0 when q = 1): a hash of the row key, not its position."""
    h = random_keys(rows, _CHUNK_SALT)
    return (h % np.maximum(q, 1).astype(np.uint64)).astype(np.int64)


def route_rows(rows, lab, nbr, q):
    """(positions, task cluster, task, role) for every copy of a row that some task needs.

    Own cluster: chunk a of q goes to task (a, a) as a member, to (a, b > a) as probes and to
    (b < a, a) as pair members. Each neighbour cluster n: probe of its only task, or of every
    diagonal task (a, a) of its chunks.
    """
    out = []
    m = rows.size
    pos = np.arange(m)
    qa = q[lab]
    ca = chunk_of(rows, qa)
    out.append((pos, lab, ca * qa + ca, np.full(m, ROLE_MEMBER)))
    for b in range(int(qa.max()) if m else 0):
        sel = (b < qa) & (b != ca)
        if not sel.any():
            continue
        p, a, qq = pos[sel], ca[sel], qa[sel]
        up = b > a  # this row is side a of task (a, b)
        if up.any():
            out.append((p[up], lab[p[up]], a[up] * qq[up] + b, np.full(int(up.sum()), ROLE_PROBE)))
        down = b < a  # side b of task (b, a)
        if down.any():
            out.append((p[down], lab[p[down]], b * qq[down] + a[down], np.full(int(down.sum()), ROLE_PAIR_MEMBER)))
    for t in range(nbr.shape[1]):
        nc = nbr[:, t]
        qn = q[nc]
        for a in range(int(qn.max()) if m else 0):
            sel = a < qn
            if sel.any():
                out.append((pos[sel], nc[sel], a * qn[sel] + a, np.full(int(sel.sum()), ROLE_PROBE)))
    return out


def _make_route_fn(bc, r: int, threads: int, names: list[str]):
    def route(batches):
        _one_thread_per_core(threads)
        c, q = bc.value
        for b in _iter_blocks(batches):
            rows, x = _block_arrays(b)
            if rows.size == 0:
                continue
            ids = _ipc_array(b["ids_arrow"])
            lab, _ = nearest_centroid(x, c)
            csim = centroid_similarity(x, c, lab)
            nbr = neighbor_clusters(x, c, lab, r) if r > 0 else np.zeros((rows.size, 0), np.int64)
            for pos, cl, task, role in route_rows(rows, lab, nbr, q):
                take = pa.array(pos)
                yield pa.record_batch(
                    [
                        pa.array(cl.astype(np.int32)),
                        pa.array(task.astype(np.int32)),
                        pa.array(role.astype(np.int8)),
                        pa.array(rows[pos]),
                        ids.take(take),
                        pa.array(lab[pos].astype(np.int32)),
                        pa.array(csim[pos]),
                        matrix_to_list_array(x[pos]),
                    ],
                    names=names,
                )

    return route


def _make_cluster_fn(eps: float, block_size: int, dim: int, threads: int, names: list[str], id_type_arrow):
    def dedup_task(key, table):  # no annotations: pyspark infers the UDF form from them
        _one_thread_per_core(threads)
        cluster = int(key[0].as_py())
        role = table.column("role").to_numpy()
        rows = table.column("row").to_numpy()
        order = np.lexsort((rows, role == ROLE_PROBE))  # members first, each part by row
        table = table.take(pa.array(order))
        role, rows = role[order], rows[order]
        ids = table.column("id").combine_chunks()
        csim = table.column("csim").to_numpy()
        own = table.column("own_cluster").to_numpy()
        x = list_column_to_matrix(table.column("vector"), dim)
        mem = np.flatnonzero(role != ROLE_PROBE)
        prb = np.flatnonzero(role == ROLE_PROBE)
        parts = []
        if mem.size:
            res = dedup_cluster(
                x[mem], rows[mem], csim[mem], eps, block_size=block_size,
                probe_x=x[prb] if prb.size else None, probe_rows=rows[prb] if prb.size else None,
            )
            mrows = rows[mem]  # ascending
            if role[mem[0]] == ROLE_MEMBER:
                gone = np.flatnonzero(res.kept_row != mrows)
                if gone.size:
                    kpos = np.searchsorted(mrows, res.kept_row[gone])
                    sims = exact_cosine(x[mem[gone]], x[mem[kpos]])
                    parts.append(
                        {
                            "kind": pa.array(np.full(gone.size, KIND_REMOVED, np.int8)),
                            "row": pa.array(mrows[gone]),
                            "id": ids.take(pa.array(mem[gone])),
                            "cluster": pa.array(np.full(gone.size, cluster, np.int32)),
                            "csim": pa.array(csim[mem[gone]]),
                            "kept": pa.array(mrows[kpos]),
                            "kept_id": ids.take(pa.array(mem[kpos])),
                            "kept_cluster": pa.array(np.full(gone.size, cluster, np.int32)),
                            "kept_csim": pa.array(res.kept_centroid_sim[gone]),
                            "similarity": pa.array(sims),
                        }
                    )
            if res.cross_i.size:
                prows = rows[prb]
                ppos = prb[np.searchsorted(prows, res.cross_i)]
                kpos = mem[np.searchsorted(mrows, res.cross_kept_j)]
                nx = res.cross_i.size
                parts.append(
                    {
                        "kind": pa.array(np.full(nx, KIND_CROSS, np.int8)),
                        "row": pa.array(res.cross_i),
                        "id": ids.take(pa.array(ppos)),
                        "cluster": pa.array(own[ppos].astype(np.int32)),
                        "csim": pa.array(csim[ppos]),
                        "kept": pa.array(res.cross_kept_j),
                        "kept_id": ids.take(pa.array(kpos)),
                        "kept_cluster": pa.array(np.full(nx, cluster, np.int32)),
                        "kept_csim": pa.array(csim[kpos]),
                        "similarity": pa.nulls(nx, pa.float64()),
                    }
                )
        if not parts:
            return pa.table({n: pa.array([], t) for n, t in zip(names, _arrow_types(id_type_arrow))})
        return pa.concat_tables([pa.table({n: p[n] for n in names}) for p in parts])

    return dedup_task


def _arrow_types(id_type_arrow):
    return [pa.int8(), pa.int64(), id_type_arrow, pa.int32(), pa.float64(), pa.int64(), id_type_arrow, pa.int32(), pa.float64(), pa.float64()]


def _spark_to_arrow_type(dt):
    from pyspark.sql import types as T

    return {T.IntegerType: pa.int32(), T.LongType: pa.int64(), T.ShortType: pa.int16(), T.StringType: pa.string()}[type(dt)]


def _merge_cross_pairs(results):
    """Driver side: cross pairs between local representatives -> (old, new, id and cluster per node).

    A cross pair names a probe row; its own task may have removed it locally, so it is replaced by
    its local representative (a join with the removed rows), and the pairs are made distinct
    before they reach the driver.
    """
    from pyspark.sql import functions as F

    cross = results.where(F.col("kind") == KIND_CROSS)
    local = results.where(F.col("kind") == KIND_REMOVED).select(
        "row", F.col("kept").alias("a_kept"), F.col("kept_id").alias("a_kept_id"), F.col("kept_csim").alias("a_csim")
    )
    pairs = (
        cross.join(local, on="row", how="left")
        .select(
            F.coalesce("a_kept", "row").alias("rep_a"),
            F.coalesce("a_kept_id", "id").alias("id_a"),
            F.coalesce("a_csim", "csim").alias("csim_a"),
            F.col("cluster").alias("cluster_a"),
            F.col("kept").alias("rep_b"),
            F.col("kept_id").alias("id_b"),
            F.col("kept_csim").alias("csim_b"),
            F.col("kept_cluster").alias("cluster_b"),
        )
        .distinct()
        .toArrow()
    )
    n_pairs = pairs.num_rows
    if n_pairs == 0:
        return None, 0
    rep_a = pairs.column("rep_a").to_numpy()
    rep_b = pairs.column("rep_b").to_numpy()
    old, new = merge_cross_cluster(rep_a, rep_b, pairs.column("csim_a").to_numpy(), pairs.column("csim_b").to_numpy())
    # id and coarse cluster of every node, from either end of a pair
    node_rows = np.concatenate([rep_a, rep_b])
    node_ids = pa.concat_arrays([pairs.column("id_a").combine_chunks(), pairs.column("id_b").combine_chunks()])
    node_cluster = np.concatenate([pairs.column("cluster_a").to_numpy(), pairs.column("cluster_b").to_numpy()])
    _, first = np.unique(node_rows, return_index=True)  # aligned with old (sorted unique nodes)
    return (old, new, node_ids.take(pa.array(first)), node_cluster[first]), n_pairs


def _apply_merge(spark, results, merge, schema, id_type_arrow):
    """Removed rows after the merge: local removals remapped, plus local representatives now removed.

    Rows whose representative moved get a null similarity here; it is recomputed afterwards.
    """
    from pyspark.sql import functions as F

    old, new, node_ids, node_cluster = merge
    new_pos = np.searchsorted(old, new)  # every new representative is itself a node
    bc = spark.sparkContext.broadcast((old, new, node_ids.take(pa.array(new_pos)).to_pylist()))
    names = schema.fieldNames()

    def remap(batches):
        o, nw, new_ids = bc.value
        for batch in batches:
            kept = batch.column("kept").to_numpy()
            kept2 = remap_rows(kept, o, nw)
            moved = kept2 != kept
            if moved.any():
                pos = np.clip(np.searchsorted(o, kept), 0, o.size - 1)
                kept_id = batch.column("kept_id").to_pylist()
                for i in np.flatnonzero(moved):
                    kept_id[i] = new_ids[pos[i]]
                sim = batch.column("similarity").to_numpy(zero_copy_only=False).astype(np.float64)
                sim_arr = pa.array(sim, mask=moved)
                batch = batch.set_column(names.index("kept"), "kept", pa.array(kept2))
                batch = batch.set_column(names.index("kept_id"), "kept_id", pa.array(kept_id, id_type_arrow))
                batch = batch.set_column(names.index("similarity"), "similarity", sim_arr)
            yield batch

    removed_local = results.where(F.col("kind") == KIND_REMOVED).select(*names).mapInArrow(remap, schema)
    became = np.flatnonzero(new != old)  # local representatives merged into another group
    extra = pa.table(
        {
            "row": pa.array(old[became]),
            "id": node_ids.take(pa.array(became)),
            "cluster": pa.array(node_cluster[became].astype(np.int32)),
            "kept": pa.array(new[became]),
            "kept_id": node_ids.take(pa.array(new_pos[became])),
            "similarity": pa.nulls(became.size, pa.float64()),
        }
    )
    extra_df = spark.createDataFrame(extra, schema=schema) if became.size else None
    out = removed_local if extra_df is None else removed_local.unionByName(extra_df)
    return out, int(became.size)


def _fill_similarities(assigner: SparkAssigner, removed):
    """Exact similarity of every removed row whose representative moved to another cluster or chunk."""
    from pyspark.sql import functions as F

    d = assigner.d

    def explode(batches):
        for b in _iter_blocks(batches):
            rows, x = _block_arrays(b)
            yield pa.record_batch({"row": pa.array(rows), "vector": pa.array([v.tobytes() for v in x], pa.binary())})

    vectors = assigner.blocks.mapInArrow(explode, "row LONG, vector BINARY")
    need = removed.where(F.col("similarity").isNull()).select("row", "kept")
    joined = need.join(vectors, on="row").join(
        vectors.select(F.col("row").alias("kept"), F.col("vector").alias("kept_vector")), on="kept"
    )

    def cosine(batches):
        for batch in batches:
            xa = np.frombuffer(b"".join(batch.column("vector").to_pylist()), np.float32).reshape(-1, d)
            xb = np.frombuffer(b"".join(batch.column("kept_vector").to_pylist()), np.float32).reshape(-1, d)
            yield pa.record_batch({"row": batch.column("row"), "sim2": pa.array(exact_cosine(xa, xb))})

    sims = joined.select("row", "vector", "kept_vector").mapInArrow(cosine, "row LONG, sim2 DOUBLE")
    return removed.join(sims, on="row", how="left").withColumn(
        "similarity", F.coalesce("similarity", "sim2")
    ).drop("sim2")


def run_dedup(ctx: StageContext, metrics: dict) -> None:
    """The dedup stage (see module docstring); writes ``duplicates`` for ``ctx.run_id``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    cfg = ctx.config
    dcfg = cfg.dedup
    spark = ctx.spark
    id_col = cfg.input.id_column
    t0 = time.perf_counter()
    raw, report = SparkAssigner.from_dataframe(
        spark,
        ctx.input_frame(deduplicated=False),
        id_column=id_col,
        embedding_column=cfg.input.embedding_column,
        partitions=cfg.spark.partitions,
        normalize=False,
        where=f"dedup input {cfg.input.path or cfg.input.table or cfg.input.format}",
        tuning=AssignTuning(cache="spark"),  # only re-blocked below as unit rows: no block files
    )
    unit_blocks = raw.blocks.mapInArrow(_unit_blocks_fn(), BLOCK_DDL).persist(StorageLevel.MEMORY_AND_DISK)
    unit_blocks.count()
    raw.release()
    assigner = SparkAssigner(spark, unit_blocks, raw.n, raw.d, raw.id_type)
    results = None
    try:
        n = report.n_rows
        k = dcfg.n_clusters if dcfg.n_clusters is not None else default_n_clusters(n)
        if k > n:
            raise InputDataError(f"dedup.n_clusters={k} is more than the {n} rows in the input")
        r = min(dcfg.n_neighbor_clusters, k - 1)
        metrics.update(n_rows=n, dim=report.dim, eps=dcfg.eps, n_clusters=k, n_neighbor_clusters=r)
        metrics["cache_seconds"] = round(time.perf_counter() - t0, 3)

        t1 = time.perf_counter()
        fit, _ = coarse_clustering(assigner, k, n_iter=dcfg.n_iter, seed=dcfg.seed)
        sizes = fit.counts.astype(np.int64)
        q = chunks_per_cluster(sizes, dcfg.max_cluster_rows)
        metrics["coarse_seconds"] = round(time.perf_counter() - t1, 3)
        metrics["largest_cluster"] = int(sizes.max())
        metrics["chunked_clusters"] = int((q > 1).sum())
        metrics["tasks"] = int((sizes > 0).sum() + (q * (q + 1) // 2 - 1)[q > 1].sum())
        if (q > 1).any():
            log.info(
                "dedup: %d coarse cluster(s) above dedup.max_cluster_rows=%d (largest %d rows) are compared in chunks",
                int((q > 1).sum()), dcfg.max_cluster_rows, int(sizes.max()),
            )

        t2 = time.perf_counter()
        id_type = assigner.id_type
        id_arrow = _spark_to_arrow_type(id_type)
        routed_schema = _routed_schema(id_type)
        result_schema = _result_schema(id_type)
        threads = assigner.tuning.faiss_threads
        bc = spark.sparkContext.broadcast((np.asarray(fit.centroids, np.float32), q))
        routed = assigner.blocks.mapInArrow(_make_route_fn(bc, r, threads, routed_schema.fieldNames()), routed_schema)
        results = (
            routed.groupBy("cluster", "task")
            .applyInArrow(
                _make_cluster_fn(dcfg.eps, dcfg.block_size, report.dim, threads, result_schema.fieldNames(), id_arrow),
                result_schema,
            )
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        n_local = results.where(F.col("kind") == KIND_REMOVED).count()
        metrics["pairwise_seconds"] = round(time.perf_counter() - t2, 3)

        t3 = time.perf_counter()
        out_schema = T.StructType(
            [
                T.StructField("row", T.LongType()),
                T.StructField("id", id_type),
                T.StructField("cluster", T.IntegerType()),
                T.StructField("kept", T.LongType()),
                T.StructField("kept_id", id_type),
                T.StructField("similarity", T.DoubleType()),
            ]
        )
        merge, n_cross = _merge_cross_pairs(results)
        metrics["cross_pairs"] = n_cross
        if merge is None:
            removed = results.where(F.col("kind") == KIND_REMOVED).select(*out_schema.fieldNames())
            metrics["merged_representatives"] = 0
        else:
            removed, n_became = _apply_merge(spark, results, merge, out_schema, id_arrow)
            metrics["merged_representatives"] = n_became
            removed = _fill_similarities(assigner, removed)
        table = removed.select(
            F.col("id").alias(id_col), F.col("kept_id"), F.col("similarity"), F.col("cluster")
        )
        ctx.lake.write_run(table, DUPLICATES, ctx.run_id, description="rows removed as near-duplicates and the row kept for each")
        bc.unpersist()
        metrics["merge_write_seconds"] = round(time.perf_counter() - t3, 3)

        per_cluster = ctx.lake.read(DUPLICATES, ctx.run_id).groupBy("cluster").count().collect()
        removed_per = np.zeros(k)
        for row in per_cluster:
            removed_per[int(row["cluster"])] = row["count"]
        n_removed = int(removed_per.sum())
        metrics["removed_in_cluster"] = int(n_local)
        metrics["removed"] = n_removed
        metrics["kept"] = n - n_removed
        metrics["removed_by_cluster_size"] = removal_by_band(sizes, removed_per)
        metrics["seconds"] = round(time.perf_counter() - t0, 3)
        metrics["seconds_per_million_rows"] = round(metrics["seconds"] / max(n, 1) * 1e6, 3)
        log.info(
            "dedup: %d rows, %d coarse clusters (largest %d), eps=%g, neighbours=%d: kept %d, removed %d in %.1fs",
            n, k, int(sizes.max()), dcfg.eps, r, n - n_removed, n_removed, metrics["seconds"],
        )
    finally:
        if results is not None:
            results.unpersist()
        assigner.release()
