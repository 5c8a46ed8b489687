"""Coreset stage: the input rows most like a target set (SimCore) -> the ``coreset`` table.

The Spark form of :func:`lakecurate.target_coreset`, with the same result for the same rows and
seed (the algorithm and why it is exact are in :mod:`lakecurate.core.coreset`):

1. the target set is read (an embeddings table or file, or a text/image source embedded here
   with the run's encoder), checked (model, dimension, NaN rows) and brought to the driver: it is
   small (thousands to tens of thousands of rows); its centroids are k-means'd there;
2. the pool (the run's input as this stage sees it: after dedup when the run de-duplicates) is
   cached as blocks of unit rows;
3. the greedy runs on the driver, asking the executors for each centroid's next candidates when
   it runs out (:mod:`lakecurate.spark.coreset`): a pass over the blocks, never the N x K matrix;
4. the chosen rows are committed as one version of ``coreset`` (id, centroid, similarity,
   round); the stop reason and every round's utility go to ``runs.metrics``.

The stage hands its rows on: ``stages: [coreset, cluster, sample]`` curates the coreset further
with the balanced method.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from lakecurate.core.coreset import default_budget, greedy, target_centroids
from lakecurate.core.kmeans import normalize_rows
from lakecurate.errors import InputDataError, TableError
from lakecurate.faults import fault_point
from lakecurate.inputs import read_embed_source, read_run_input, with_ids
from lakecurate.spark.coreset import chosen_frame, spark_fetch
from lakecurate.stages.context import Command, HandsOn, Reruns, Stage, StageContext
from lakecurate.tables import CORESET, DESCRIPTIONS

log = logging.getLogger(__name__)

MODEL = "model"  # the embeddings table's model column
#: the most target rows brought to the driver (4M x 384 float32 is 6 GB; SimCore's targets are thousands)
MAX_TARGET_ROWS = 2_000_000
#: log the greedy's progress at most this often (seconds)
LOG_EVERY_SECONDS = 10.0


def _models(df, where: str) -> set:
    if MODEL not in df.columns:
        return set()
    return {r[MODEL] for r in df.select(MODEL).distinct().limit(20).collect()}


def pool_models(ctx: StageContext) -> set:
    """The model(s) behind the pool's embeddings: the run's encoder when it embeds, else the input
    table's ``model`` column (empty: not known)."""
    from lakecurate.embed.encoders import model_label

    if ctx.plan.has("embed"):
        return {model_label(ctx.plan.encoder)}
    cfg = ctx.config.input
    if cfg.format in ("npy", "synthetic"):
        return set()
    return _models(read_run_input(ctx.lake, cfg, ctx.plan.inputs.get("input")), f"input {cfg.location}")


def target_frame(ctx: StageContext, metrics: dict):
    """(DataFrame of the target's id + embedding, id column, embedding column, where) for the configured target."""
    from pyspark.sql import functions as F

    ccfg = ctx.config.coreset
    snapshot = ctx.plan.inputs.get("coreset.target")
    pool = pool_models(ctx)
    if ccfg.target is not None:
        tcfg = ccfg.target
        where = f"coreset.target {tcfg.location}"
        df = read_run_input(ctx.lake, tcfg, snapshot, key="coreset.target")
        models = _models(df, where)
        if models and pool:
            if not models & pool:
                raise InputDataError(f"{where} holds embeddings of model(s) {sorted(models)} but the pool's are of model(s) "
                                     f"{sorted(pool)}: embed the target with the pool's model")
            if models - pool:
                log.info("%s: using its rows of model(s) %s (it also holds %s)", where, sorted(models & pool), sorted(models - pool))
                df = df.where(F.col(MODEL).isin(sorted(models & pool)))
        metrics["target_models"] = sorted(models & pool if pool else models)
        return df, tcfg.id_column, tcfg.embedding_column, where
    # a raw source, embedded here with the run's encoder
    from lakecurate.embed.batches import EMBEDDING, REASON
    from lakecurate.embed.encoders import model_label
    from lakecurate.errors import ConfigError
    from lakecurate.spark.encode import encode_rows
    from lakecurate.spark.session import default_parallelism
    from lakecurate.stages.embed import load_on_driver

    src = ccfg.target_source
    where = f"coreset.target_source {src.path or src.table}"
    spec = ctx.plan.encoder
    if spec is None:
        raise ConfigError("coreset.target_source is embedded with embed.encoder: the config needs an embed section")
    name = model_label(spec)
    if pool and name not in pool:
        raise InputDataError(f"{where} would be embedded with {name!r} but the pool's embeddings are of model(s) {sorted(pool)}")
    ecfg = dataclasses.replace(ctx.config.embed, source=src)
    encoder = load_on_driver(spec)
    source = read_embed_source(ctx.lake, ecfg, spec, snapshot)
    encoded = encode_rows(
        source.repartition(default_parallelism(ctx.spark)), spec, encoder.dim, id_column=src.id_column,
        payload_column=ecfg.payload_column(spec), passthrough=[], oversized_column=None, threads_per_task=ecfg.threads_per_task,
    )
    rows = encoded.toArrow()  # a target set is small: embedded once, kept on the driver
    reasons = rows.column(REASON).to_pylist()
    bad = [r for r in reasons if r is not None]
    metrics.update(target_models=[name], target_embedded=len(reasons) - len(bad), target_rejected=len(bad))
    if bad:
        log.warning("%s: %d of %d rows could not be embedded (e.g. %s); the target is the other %d", where, len(bad), len(reasons),
                    bad[0][:200], len(reasons) - len(bad))
    ok = rows.filter(rows.column(REASON).is_null()).select([src.id_column, EMBEDDING])
    return ctx.spark.createDataFrame(ok.to_pandas()) if ok.num_rows else ctx.spark.createDataFrame(
        [], f"{src.id_column} string, {EMBEDDING} array<float>"), src.id_column, EMBEDDING, where


def read_target(ctx: StageContext, metrics: dict):
    """The target set on the driver: (ids, row keys, float32 rows), validated, sorted by row key."""
    from lakecurate.spark.blocks import small_input

    df, id_col, emb_col, where = target_frame(ctx, metrics)
    return (*small_input(df, id_column=id_col, embedding_column=emb_col, where=where, max_rows=MAX_TARGET_ROWS, metric="cosine"),
            where)


def run_coreset(ctx: StageContext, metrics: dict) -> None:
    from pyspark.sql import functions as F

    cfg = ctx.config
    ccfg = cfg.coreset
    t0 = time.perf_counter()
    _, _, target, where = read_target(ctx, metrics)
    metrics.update(target=where, n_target=int(target.shape[0]), target_seconds=round(time.perf_counter() - t0, 3))
    t1 = time.perf_counter()
    blocks = ctx.input_blocks("coreset", transform=normalize_rows, metric="cosine")
    metrics["cache_seconds"] = round(time.perf_counter() - t1, 3)
    try:
        if blocks.d != target.shape[1]:
            raise InputDataError(f"{where} has dimension {target.shape[1]} but the pool (input {cfg.input.location}) has dimension "
                                 f"{blocks.d}: embed both with the same model")
        n = blocks.n
        budget = default_budget(target.shape[0], n) if ccfg.budget is None else min(ccfg.budget, n)
        centroids = target_centroids(target, ccfg.n_centroids, seed=ccfg.seed)
        metrics.update(n_pool=n, dim=blocks.d, n_centroids=int(centroids.shape[0]), budget=budget,
                       patience=ccfg.patience, stop_threshold=ccfg.stop_threshold)
        log.info("coreset: %d target rows -> %d centroids; picking up to %d of %d pool rows", target.shape[0], centroids.shape[0], budget, n)
        fault_point("coreset:greedy")
        last = [time.perf_counter()]

        def on_round(rnd, utility, taken):
            if time.perf_counter() - last[0] >= LOG_EVERY_SECONDS:
                last[0] = time.perf_counter()
                log.info("coreset: round %d, utility %.4f, %d of at most %d rows taken", rnd, utility, taken, budget)

        result = greedy(spark_fetch(blocks, centroids), centroids.shape[0], budget=budget, pool_rows=n, patience=ccfg.patience,
                        stop_threshold=ccfg.stop_threshold, seed=ccfg.seed, candidates=ccfg.candidates, on_round=on_round)
        metrics.update(result.metrics())
        metrics["greedy_seconds"] = round(result.seconds, 3)
        t2 = time.perf_counter()
        id_col = cfg.input.id_column
        table = chosen_frame(blocks, result).select(F.col("id").alias(id_col), "centroid", "similarity", "round")
        info = ctx.lake.write_run(table, CORESET, ctx.run_id, description=DESCRIPTIONS[CORESET])
        written = ctx.lake.read(CORESET, ctx.run_id).count()
        if written != result.keys.shape[0]:
            raise TableError(f"table {CORESET!r} holds {written} rows for run {ctx.run_id!r}, expected {result.keys.shape[0]}")
        metrics.update(table_version=info.version, write_seconds=round(time.perf_counter() - t2, 3),
                       seconds=round(time.perf_counter() - t0, 3))
        log.info("coreset: %d of %d rows like %s in %d rounds (stopped: %s) in %.1fs", written, n, where, result.rounds,
                 result.stop_reason, metrics["seconds"])
    finally:
        blocks.release()


def coreset_rows(ctx: StageContext, upstream):
    """What the stages after the coreset read: the input's rows the coreset chose."""
    id_col = ctx.config.input.id_column
    chosen = ctx.lake.read(CORESET, ctx.output_run("coreset")).select(id_col)
    return upstream().join(chosen, on=id_col, how="left_semi")


def coreset_files(ctx: StageContext, upstream):
    """:func:`coreset_rows` as files: the input's files, read for the coreset's rows only."""
    return with_ids(ctx.lake, upstream, CORESET, ctx.output_run("coreset"), ctx.config.input.id_column, keep=True,
                    what="the ids the coreset stage hands on")


def summarize(m: dict) -> list[str]:
    return [f"  coreset: {m.get('selected')} of {m.get('n_pool')} rows like {m.get('target')} ({m.get('n_target')} rows, "
            f"{m.get('n_centroids')} centroids) in {m.get('rounds')} rounds; stopped by {m.get('stop_reason')} "
            f"(budget {m.get('budget')}, {m.get('fetch_passes')} candidate passes)"]


STAGE = Stage(
    name="coreset",
    run=run_coreset,
    help="the input rows most like a target set (SimCore) -> the coreset table",
    writes=lambda cfg: (CORESET,),
    summary=summarize,
    section="coreset",
    hands_on=HandsOn(coreset_rows, files=coreset_files),
    command=Command(),
    reruns=Reruns(depends_on=("coreset", "embed"), reusable=True),
)
