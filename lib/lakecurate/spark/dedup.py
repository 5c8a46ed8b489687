"""The Spark kernels of de-duplication: the pairwise tasks and the driver-side merge.

The Spark form of :func:`lakecurate.core.dedup.find_duplicates`, step for step, so both remove
the same rows (the rule is in that module's docstring), over blocks of unit rows
(:func:`lakecurate.core.dedup.unit_rows`) whose coarse spherical k-means is already fitted:

1. :func:`pairwise_results`: on the executors every row gets its coarse cluster, its similarity
   to that centroid and, with ``n_neighbors = r``, its r nearest other clusters; it is routed to
   its own cluster's task and, as a *probe*, to each neighbour's
   (:mod:`lakecurate.core.dedup_routing`). One ``applyInArrow`` task per (cluster, task) calls
   :func:`~lakecurate.core.dedup.dedup_cluster`: pairwise cosine in ``block_size`` tiles, so no
   m x m matrix exists. It emits every row removed inside the cluster (with its local
   representative) and the cross pairs its probes found.
2. :func:`resolve_removed`: the driver merges the cross pairs' groups
   (:func:`~lakecurate.core.dedup.merge_cross_cluster`, O(cross pairs) memory), the remap is
   shipped back, similarities to moved representatives are recomputed on the executors.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lakecurate.core.assign import nearest_centroid
from lakecurate.core.dedup import (
    match_old_rows,
    centroid_similarity,
    dedup_cluster,
    exact_cosine,
    merge_cross_cluster,
    neighbor_clusters,
    remap_rows,
)
from lakecurate.core.dedup_routing import ROLE_MEMBER, ROLE_PROBE, route_rows
from lakecurate.spark.arrow import binary_column_to_matrix, list_column_to_matrix, matrix_to_binary_array, matrix_to_list_array
from lakecurate.spark.blocks import EmbeddingBlocks
from lakecurate.spark.tasks import configure_faiss

#: kinds of a task's output row
KIND_REMOVED = 0  # a member removed inside its cluster, with its local representative
KIND_CROSS = 1  # a (probe, local representative) pair between clusters or chunks


def _routed_schema(id_type):
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("cluster", T.IntegerType()),  # the task's cluster
            T.StructField("task", T.IntegerType()),  # chunk pair a * q + b (0 for a normal cluster)
            T.StructField("role", T.ByteType()),
            T.StructField("row", T.LongType()),
            T.StructField("id", id_type),
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
            T.StructField("id", id_type),
            T.StructField("cluster", T.IntegerType()),
            T.StructField("csim", T.DoubleType()),
            T.StructField("kept", T.LongType()),
            T.StructField("kept_id", id_type),
            T.StructField("kept_cluster", T.IntegerType()),
            T.StructField("kept_csim", T.DoubleType()),
            T.StructField("similarity", T.DoubleType()),
        ]
    )


def _removed_schema(id_type):
    """The removed rows: row key and id, coarse cluster, the kept row's key and id, similarity."""
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("row", T.LongType()),
            T.StructField("id", id_type),
            T.StructField("cluster", T.IntegerType()),
            T.StructField("kept", T.LongType()),
            T.StructField("kept_id", id_type),
            T.StructField("similarity", T.DoubleType()),
        ]
    )


def _arrow_types(id_type_arrow):
    return [pa.int8(), pa.int64(), id_type_arrow, pa.int32(), pa.float64(), pa.int64(), id_type_arrow, pa.int32(), pa.float64(), pa.float64()]


def _spark_to_arrow_type(dt):
    from pyspark.sql import types as T

    return {T.IntegerType: pa.int32(), T.LongType: pa.int64(), T.ShortType: pa.int16(), T.StringType: pa.string()}[type(dt)]


def _make_route_fn(r: int, names: list[str]):
    def route(blocks, payload):
        c, q = payload
        for b in blocks:
            if b.n == 0:
                continue
            rows, x = b.keys, b.vectors
            ids = b.ids
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
        configure_faiss(threads)
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


def pairwise_results(blocks: EmbeddingBlocks, centroids: np.ndarray, q: np.ndarray, *, n_neighbors: int, eps: float, block_size: int):
    """Step 1 (lazy): the removed rows and cross pairs of every (cluster, task), one ``applyInArrow`` task each."""
    routed_schema = _routed_schema(blocks.id_type)
    result_schema = _result_schema(blocks.id_type)
    routed = blocks.map(_make_route_fn(n_neighbors, routed_schema.fieldNames()), routed_schema, (np.asarray(centroids, np.float32), q))
    task = _make_cluster_fn(eps, block_size, blocks.d, blocks.faiss_threads, result_schema.fieldNames(), _spark_to_arrow_type(blocks.id_type))
    return routed.groupBy("cluster", "task").applyInArrow(task, result_schema)


def removed_within_clusters(results):
    """The rows step 1 removed inside their own cluster."""
    from pyspark.sql import functions as F

    return results.where(F.col("kind") == KIND_REMOVED)


def _merge_cross_pairs(results):
    """Driver side: cross pairs between local representatives -> (old, new, id and cluster per node).

    A cross pair names a probe row; its own task may have removed it locally, so it is replaced by
    its local representative (a join with the removed rows), and the pairs are made distinct
    before they reach the driver.
    """
    from pyspark.sql import functions as F

    cross = results.where(F.col("kind") == KIND_CROSS)
    local = removed_within_clusters(results).select(
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


def _apply_merge(blocks, results, merge, schema, id_type_arrow, shipped: list):
    """Removed rows after the merge: local removals remapped, plus local representatives now removed.

    Rows whose representative moved get a null similarity here; it is recomputed afterwards.
    """
    old, new, node_ids, node_cluster = merge
    new_pos = np.searchsorted(old, new)  # every new representative is itself a node
    get, free = blocks.ship((old, new, node_ids.take(pa.array(new_pos)).to_pylist()))
    shipped.append(free)
    names = schema.fieldNames()

    def remap(batches):
        o, nw, new_ids = get()
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

    removed_local = removed_within_clusters(results).select(*names).mapInArrow(remap, schema)
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
    extra_df = blocks.spark.createDataFrame(extra, schema=schema) if became.size else None
    out = removed_local if extra_df is None else removed_local.unionByName(extra_df)
    return out, int(became.size)


def _fill_similarities(blocks: EmbeddingBlocks, removed):
    """Exact similarity of every removed row whose representative moved to another cluster or chunk."""
    from pyspark.sql import functions as F

    d = blocks.d

    def explode(batches, _):
        for b in batches:
            yield pa.record_batch({"row": pa.array(b.keys), "vector": pa.array([v.tobytes() for v in b.vectors], pa.binary())})

    vectors = blocks.map(explode, "row LONG, vector BINARY")
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


def resolve_removed(blocks: EmbeddingBlocks, results, shipped: list) -> tuple[object, int, int]:
    """Step 2: (removed rows after merging groups across clusters, cross pairs, representatives merged away).

    The removed rows are a lazy DataFrame of (row, id, cluster, kept, kept_id, similarity);
    ``shipped`` receives the functions that free what was sent to the tasks, once it is written.
    """
    schema = _removed_schema(blocks.id_type)
    merge, n_cross = _merge_cross_pairs(results)
    if merge is None:
        return removed_within_clusters(results).select(*schema.fieldNames()), n_cross, 0
    removed, n_became = _apply_merge(blocks, results, merge, schema, _spark_to_arrow_type(blocks.id_type), shipped)
    return _fill_similarities(blocks, removed), n_cross, n_became


# ---------------------------------------------------------------- increments (dedup.mode: incremental)


def _link_route_fn(r: int, names: list[str], as_probe: bool):
    """New rows go to their own coarse cluster and their r nearest other ones as probes; old rows
    to their own as members."""

    def route(blocks, c):
        for b in blocks:
            if b.n == 0:
                continue
            x = b.vectors
            lab, _ = nearest_centroid(x, c)
            if as_probe and r > 0:
                nbr = neighbor_clusters(x, c, lab, r)
                pos = np.r_[np.arange(b.n), np.repeat(np.arange(b.n), r)]
                cl = np.r_[lab, nbr.ravel()]
            else:
                pos, cl = np.arange(b.n), lab
            yield pa.record_batch(
                [
                    pa.array(cl.astype(np.int32)),
                    pa.array(np.full(pos.size, ROLE_PROBE if as_probe else ROLE_MEMBER, np.int8)),
                    pa.array(b.keys[pos]),
                    b.ids.take(pa.array(pos)),
                    pa.array(lab[pos].astype(np.int32)),
                    matrix_to_binary_array(x[pos]),
                ],
                names=names,
            )

    return route


def _link_schema(id_type):
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("row", T.LongType()),
            T.StructField("id", id_type),
            T.StructField("cluster", T.IntegerType()),  # the new row's own coarse cluster
            T.StructField("old_row", T.LongType()),
            T.StructField("old_id", id_type),
            T.StructField("similarity", T.DoubleType()),
        ]
    )


def old_links(new_blocks: EmbeddingBlocks, old_blocks: EmbeddingBlocks, centroids: np.ndarray, *, n_neighbors: int,
              eps: float, block_size: int):
    """(row, id, cluster, old_row, old_id, similarity) of every new row that duplicates an old kept
    row: its most similar one (:func:`~lakecurate.core.dedup.match_old_rows` in one task per coarse
    cluster, then :func:`~lakecurate.core.dedup.best_links` across the clusters it probed). Lazy."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    c = np.asarray(centroids, np.float32)
    routed = T.StructType([
        T.StructField("cluster", T.IntegerType()), T.StructField("role", T.ByteType()), T.StructField("row", T.LongType()),
        T.StructField("id", new_blocks.id_type), T.StructField("own_cluster", T.IntegerType()),
        T.StructField("vector", T.BinaryType()),
    ])
    names = routed.fieldNames()
    probes = new_blocks.map(_link_route_fn(n_neighbors, names, True), routed, c)
    members = old_blocks.map(_link_route_fn(0, names, False), routed, c)
    schema = _link_schema(new_blocks.id_type)
    out_names = schema.fieldNames()
    id_arrow = _spark_to_arrow_type(new_blocks.id_type)
    dim, threads = new_blocks.d, new_blocks.faiss_threads

    def link_task(key, table):  # no annotations: pyspark infers the UDF form from them
        configure_faiss(threads)
        role = table.column("role").to_numpy()
        mem, prb = np.flatnonzero(role == ROLE_MEMBER), np.flatnonzero(role == ROLE_PROBE)
        empty = pa.table({n: pa.array([], t) for n, t in zip(out_names, [pa.int64(), id_arrow, pa.int32(), pa.int64(), id_arrow, pa.float64()])})
        if mem.size == 0 or prb.size == 0:
            return empty
        rows = table.column("row").to_numpy()
        prb = prb[np.argsort(rows[prb], kind="stable")]
        x = binary_column_to_matrix(table.column("vector"), dim)
        li, lo, ls = match_old_rows(x[prb], rows[prb], x[mem], rows[mem], eps, block_size=block_size)
        if li.size == 0:
            return empty
        ids = table.column("id").combine_chunks()
        own = table.column("own_cluster").to_numpy()
        ppos = prb[np.searchsorted(rows[prb], li)]
        msort = mem[np.argsort(rows[mem], kind="stable")]
        opos = msort[np.searchsorted(rows[msort], lo)]
        return pa.table({"row": pa.array(li), "id": ids.take(pa.array(ppos)), "cluster": pa.array(own[ppos].astype(np.int32)),
                         "old_row": pa.array(lo), "old_id": ids.take(pa.array(opos)), "similarity": pa.array(ls)})

    found = probes.unionByName(members).groupBy("cluster").applyInArrow(link_task, schema)
    # best_links across the clusters a row probed: the most similar, ties to the smaller old row
    best = found.groupBy("row").agg(F.min(F.struct(F.negative("similarity").alias("neg"), "old_row", "old_id", "id", "cluster")).alias("b"))
    return best.select("row", "b.id", "b.cluster", "b.old_row", "b.old_id", F.negative("b.neg").alias("similarity"))


def _vectors_of(blocks: EmbeddingBlocks, wanted: np.ndarray):
    """(row, vector bytes) of the rows of ``blocks`` whose keys are in ``wanted`` (lazy; the keys
    travel to the tasks, the other rows' vectors never leave them)."""
    wanted = np.unique(np.asarray(wanted, np.int64))

    def pick(batches, keys):
        for b in batches:
            hit = np.flatnonzero(np.isin(b.keys, keys, assume_unique=False))
            if hit.size:
                yield pa.record_batch({"row": pa.array(b.keys[hit]), "vector": matrix_to_binary_array(b.vectors[hit])})

    return blocks.map(pick, "row LONG, vector BINARY", wanted)


def _pair_cosines(pairs, a_vectors, b_vectors, dim: int):
    """(row, similarity): exact cosine of each pair (row in a, kept in b) of ``pairs``."""
    from pyspark.sql import functions as F

    joined = pairs.select("row", "kept").join(a_vectors, on="row").join(
        b_vectors.select(F.col("row").alias("kept"), F.col("vector").alias("kept_vector")), on="kept")

    def cosine(batches):
        for batch in batches:
            xa = binary_column_to_matrix(batch.column("vector"), dim)
            xb = binary_column_to_matrix(batch.column("kept_vector"), dim)
            yield pa.record_batch({"row": batch.column("row"), "sim2": pa.array(exact_cosine(xa, xb))})

    return joined.select("row", "vector", "kept_vector").mapInArrow(cosine, "row LONG, sim2 DOUBLE")


def increment_removed(new_blocks: EmbeddingBlocks, old_blocks: EmbeddingBlocks, centroids: np.ndarray, removed_new, links, hold):
    """The increment's removed rows, (id, kept_id, similarity, cluster) (lazy), and how many an old row stands for.

    ``hold(df, what)`` keeps a frame that is read more than once (the caller releases it).

    :func:`~lakecurate.core.dedup.resolve_increment` on Spark: a group of new duplicates (its
    members share ``kept`` in ``removed_new``) with any link is removed whole, pointing at the old
    row of its most similar link; the other removals among the new rows stand as they are.
    """
    from pyspark.sql import functions as F

    rep = links.join(removed_new.select("row", "kept"), on="row", how="left").withColumn("rep", F.coalesce("kept", "row"))
    best = rep.groupBy("rep").agg(F.min(F.struct(F.negative("similarity").alias("neg"), "old_row", "old_id")).alias("b")).select(
        "rep", "b.old_row", "b.old_id")
    c = np.asarray(centroids, np.float32)

    def label(batches, cent):
        for b in batches:
            if b.n:
                yield pa.record_batch({"row": pa.array(b.keys), "id": b.ids, "cluster": pa.array(nearest_centroid(b.vectors, cent)[0].astype(np.int32))})

    from pyspark.sql import types as T

    labels = new_blocks.map(label, T.StructType([T.StructField("row", T.LongType()), T.StructField("id", new_blocks.id_type),
                                                  T.StructField("cluster", T.IntegerType())]), c)
    by_old = (labels.join(removed_new.select("row", "kept"), on="row", how="left")
              .withColumn("rep", F.coalesce("kept", "row")).drop("kept")
              .join(best, on="rep").select("row", "id", "cluster", F.col("old_row").alias("kept"), F.col("old_id").alias("kept_id")))
    by_old = hold(by_old, "new rows an old row stands for")
    pairs = by_old.select("row", "kept").toArrow()  # one row per new row an old row stands for
    new_rows, old_rows = pairs.column("row").to_numpy(), pairs.column("kept").to_numpy()
    sims = _pair_cosines(by_old, _vectors_of(new_blocks, new_rows), _vectors_of(old_blocks, old_rows), new_blocks.d)
    by_old = by_old.join(sims, on="row").withColumnRenamed("sim2", "similarity")
    among_new = removed_new.join(by_old.select("row"), on="row", how="left_anti")
    cols = ["id", "kept_id", "similarity", "cluster"]
    return among_new.select(*cols).unionByName(by_old.select(*cols)), int(len(pairs))
