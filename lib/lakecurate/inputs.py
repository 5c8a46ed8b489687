"""Where a run's rows come from, and what they must look like.

Two kinds of input, both read through the lake (:mod:`lakecurate.lake` does the I/O; this module
decides what to read and checks its columns):

* the **embeddings input** of a run (``input.*``): a Delta or Parquet table (path or catalog
  name), a ``.npy`` matrix (staged once as Parquet), or the generated demo pool (``format:
  synthetic``), which is written to the ``pool`` table the first time a run asks for it;
* the **raw source** of the embed stage (``embed.source.*``): a table with an id and a text or
  image-bytes column, or a folder of image files.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import numpy as np
import pyarrow as pa

from lakecurate.config import EmbedConfig, InputConfig, SyntheticConfig
from lakecurate.core.synthetic import long_tailed_pool, redundant_pool
from lakecurate.embed.spec import EncoderSpec
from lakecurate.errors import InputDataError, TableError
from lakecurate.lake import Lake, Snapshot, open_npy
from lakecurate.lake.pieces import InputFiles, RowFilter, delta_input
from lakecurate.spark.arrow import matrix_to_list_array
from lakecurate.tables import POOL

log = logging.getLogger(__name__)

#: a column of the embed source holding the byte size of a file too large to read (else null)
OVERSIZED = "_oversized_bytes"


def synthetic_pool_id(cfg: SyntheticConfig) -> str:
    """The ``pool`` table partition holding a generated pool with these parameters."""
    pool_id = f"synthetic-n{cfg.n}-d{cfg.dim}-c{cfg.n_concepts}-a{cfg.alpha:g}-s{cfg.spread:g}-seed{cfg.seed}"
    if cfg.n_items:  # a redundant pool (copies of n_items items)
        pool_id += f"-items{cfg.n_items}-ca{cfg.copies_alpha:g}-cn{cfg.copy_noise:g}"
    return pool_id


def prepare_run_input(lake: Lake, cfg: InputConfig) -> None:
    """Make the input readable before the first stage: generate the demo pool once per parameter set."""
    if cfg.format != "synthetic":
        return
    pool_cfg = cfg.pool
    pool_id = synthetic_pool_id(pool_cfg)
    if lake.exists(POOL) and lake.read(POOL, pool_id).limit(1).count() == 1:
        return
    log.info("generating the synthetic pool %s", pool_id)
    if pool_cfg.n_items:
        pool = redundant_pool(
            pool_cfg.n, pool_cfg.dim, pool_cfg.n_items, copies_alpha=pool_cfg.copies_alpha, copy_noise=pool_cfg.copy_noise,
            n_concepts=pool_cfg.n_concepts, alpha=pool_cfg.alpha, spread=pool_cfg.spread, seed=pool_cfg.seed,
        )
    else:
        pool = long_tailed_pool(pool_cfg.n, pool_cfg.dim, pool_cfg.n_concepts, alpha=pool_cfg.alpha, spread=pool_cfg.spread, seed=pool_cfg.seed)
    table = pa.table(
        {
            "id": pa.array(np.arange(pool_cfg.n, dtype=np.int64)),
            "embedding": matrix_to_list_array(pool.x),
            "concept": pa.array(pool.concept.astype(np.int32)),
            **({"item": pa.array(pool.item.astype(np.int32))} if pool_cfg.n_items else {}),
        }
    )
    lake.write_arrow(table, POOL, pool_id)


def input_tables(cfg: InputConfig) -> dict[str, str]:
    """The lake tables the input lives in (the generated pool's) and the ``run_id`` partition
    holding it (the generator's parameters: where the rows came from), for registration as views."""
    return {POOL: synthetic_pool_id(cfg.pool)} if cfg.format == "synthetic" else {}


def read_run_input(lake: Lake, cfg: InputConfig, snapshot: Optional[dict] = None, *, key: str = "input"):
    """The embeddings input as a DataFrame with at least (id, embedding) as the config names them.

    ``snapshot``: the input's fingerprint (:func:`fingerprint_run_input`); the read is pinned to
    it (a Delta version, a Parquet folder's listing, a .npy file's content hash). ``key``: the
    config key messages name (``coreset.target`` for a coreset's target set).
    """
    if cfg.format == "synthetic":
        return lake.read(POOL, synthetic_pool_id(cfg.pool)).drop("run_id")
    if cfg.format == "npy":
        digest = snapshot["sha256"] if snapshot else file_sha256(cfg.path, key=f"{key}.path")
        return lake.read_npy(cfg.path, id_column=cfg.id_column, embedding_column=cfg.embedding_column, content_sha256=digest,
                             key=f"{key}.path")
    return lake.read_source(cfg.format, path=cfg.path, table=cfg.table, key=key, snapshot=snapshot)


def run_input_files(lake: Lake, cfg: InputConfig, snapshot: Optional[dict] = None, *, key: str = "input",
                    columns: Optional[list] = None) -> tuple[Optional[InputFiles], str]:
    """The embeddings input as files the tasks read themselves (:mod:`lakecurate.lake.pieces`):
    the same rows :func:`read_run_input` reads, pinned the same way; ``(None, why)`` for an input
    read through Spark. ``columns``: default (id, embedding)."""
    columns = list(columns or (cfg.id_column, cfg.embedding_column))
    if cfg.format == "synthetic":
        return lake_table_files(lake, POOL, {c: c for c in columns}, f"{key} {cfg.location}",
                                partition={"run_id": synthetic_pool_id(cfg.pool)})
    if cfg.format == "npy":
        digest = snapshot["sha256"] if snapshot else file_sha256(cfg.path, key=f"{key}.path")
        folder = lake.stage_npy(cfg.path, content_sha256=digest, key=f"{key}.path")
        named = {cfg.id_column: "id", cfg.embedding_column: "embedding"}
        if any(c not in named for c in columns):
            return None, f"a .npy input has only the columns {list(named)}"
        staged, why = lake.input_files("parquet", [named[c] for c in columns], path=folder, key=key)
        if staged is None:
            return None, why
        return dataclasses.replace(staged.renamed({c: named[c] for c in columns}), where=f"{key} {cfg.location}"), ""
    return lake.input_files(cfg.format, columns, path=cfg.path, table=cfg.table, key=key, snapshot=snapshot)


#: a stage hands its rows on as files with the ids it keeps or removes, read on the driver, up to
#: this many (8 bytes each for integer ids); past it, the stages after it read through Spark
HANDED_IDS_MAX = 20_000_000


def lake_table_files(lake: Lake, name: str, columns: dict, where: str, partition: Optional[dict] = None,
                     equal: Optional[dict] = None) -> tuple[Optional[InputFiles], str]:
    """A table of this lake (``partition``'s files) as files the tasks read themselves, its columns
    read under new names (``{name read as: table column}``), only the rows whose data columns
    equal ``equal`` (``{table column: value}``); ``(None, why)`` on native lakes."""
    if lake.native is not None:
        return None, f"on a native-Delta lake, the {name} table is read through the engine"
    snap = Snapshot(lake.path(name), storage_options=lake.options)
    files = delta_input(snap, list(dict.fromkeys(columns.values())), where, partition=partition).renamed(columns)
    for column, value in (equal or {}).items():
        files = files.filtered(RowFilter(snap.physical[column], pa.array([value], snap.schema.field(column).type), keep=True))
    return files, ""


def with_ids(lake: Lake, upstream, table: str, run_id: str, id_column: str, *, keep: bool, what: str
             ) -> tuple[Optional[InputFiles], str]:
    """The files of ``upstream()`` with only the rows whose id is (``keep``) or is not in ``table``'s
    rows of ``run_id``: what the dedup stage (duplicates away) and the coreset (its rows) hand on."""
    files, why = upstream()
    if files is None:
        return None, why
    ids = lake.column_values(table, run_id, id_column, limit=HANDED_IDS_MAX)
    if ids is None:
        return None, f"{what}: more than {HANDED_IDS_MAX:,}"
    return files.filtered(RowFilter(files.physical_of(id_column), ids, keep=keep)), ""


# ---------------------------------------------------------------- what can be known before any job

#: a Parquet input with more files than this is not footer-counted before the run (rows unknown)
COUNT_FOOTERS_MAX_FILES = 2000


@dataclass(frozen=True)
class InputFacts:
    """What the run's input is, learnt from metadata only (no Spark job): its columns and, where
    the metadata says, its row count. The stages' preflight checks read these."""

    where: str
    columns: dict  # name -> Spark type (simple string)
    rows: Optional[int] = None  # None: not known without reading the data
    dim: Optional[int] = None  # the embeddings' width where the metadata says (generated pool, .npy)

    def require_columns(self, names: dict, key_of: dict) -> None:
        """InputDataError unless every ``name: kind`` is a column of that kind (``array`` / ``id``)."""
        for name, kind in names.items():
            got = self.columns.get(name)
            if got is None:
                raise InputDataError(f"{key_of[name]}={name!r} is not a column of the input {self.where}; it has {sorted(self.columns)}")
            if kind == "array" and not got.startswith("array<"):
                raise InputDataError(f"{key_of[name]}={name!r} in {self.where} is {got}; embeddings must be array<float> or array<double>")
            if kind == "id" and got not in ("int", "bigint", "smallint", "string"):
                raise InputDataError(f"{key_of[name]}={name!r} in {self.where} is {got}; ids must be integers or strings")


def input_facts(lake: Lake, cfg: InputConfig, snapshot: Optional[dict] = None) -> InputFacts:
    """The run input's :class:`InputFacts`: from the config (generated pool), the ``.npy`` header,
    the Delta log (row counts in its add actions) or the Parquet footers; the columns from the
    schema Spark resolves (no job)."""
    if cfg.format == "synthetic":
        pool = cfg.pool
        columns = {"id": "bigint", "embedding": "array<float>", "concept": "int", **({"item": "int"} if pool.n_items else {})}
        return InputFacts("(the generated pool)", columns, pool.n, pool.dim)
    where = repr(cfg.path or cfg.table)
    if cfg.format == "npy":
        shape = open_npy(cfg.path, "input.path").shape  # the staging's own checks, before any job
        return InputFacts(where, {cfg.id_column: "bigint", cfg.embedding_column: "array<float>"}, int(shape[0]), int(shape[1]))
    df = lake.read_source(cfg.format, path=cfg.path, table=cfg.table, key="input", snapshot=snapshot)
    columns = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    return InputFacts(where, columns, lake.row_count(cfg.format, cfg.path, snapshot, max_files=COUNT_FOOTERS_MAX_FILES) if cfg.path else None)


def embedded_input_facts(lake: Lake, cfg, snapshot: Optional[dict] = None) -> InputFacts:
    """The :class:`InputFacts` of what a run that embeds hands to its later stages (the embeddings
    of ``embed.source``), from metadata alone, before anything is embedded: the id and embedding
    columns as ``input.*`` names them, the source's pass-through columns, and as rows an upper bound:
    the source's rows plus the rows the embeddings table already holds (None when either is unknown)."""
    src = cfg.embed.source
    where = f"(the embeddings of embed.source {src.path or src.table!r})"
    if src.format == "files":
        types = {"path": "string", "modificationTime": "timestamp", "length": "bigint"}
        listing = (snapshot or {}).get("listing")
        rows = len(listing) if listing is not None else None
        id_type = "string" if src.file_id == "path" else "bigint"
    else:
        df = lake.read_source(src.format, path=src.path, table=src.table, key="embed.source", snapshot=snapshot)
        types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
        rows = lake.row_count(src.format, src.path, snapshot, max_files=COUNT_FOOTERS_MAX_FILES) if src.path else None
        id_type = types.get(src.id_column, "bigint")
    columns = {cfg.input.id_column: id_type, cfg.input.embedding_column: "array<float>",
               **{c: types[c] for c in src.passthrough_columns if c in types}}
    table = cfg.embed.table
    if rows is not None and lake.exists(table):
        held = lake.row_count("delta", lake.path(table))
        rows = None if held is None else rows + held
    return InputFacts(where, columns, rows)


def plan_shape(cfg) -> tuple[Optional[int], Optional[int], str]:
    """(rows, dim, where) of what a run of ``cfg`` clusters, from metadata alone and with no Spark
    session (``lakecurate plan``): the generated pool's settings, the ``.npy`` header, the Delta
    log's row counts or the Parquet footers, and the embedding column's width from the schema or
    the first row read. A run that embeds: the source's rows plus the embeddings table's, no dim
    (the model's width is known once it is loaded). None where the metadata does not say."""
    lake = Lake(None, cfg.lake)
    if "embed" in cfg.stages and cfg.embed is not None:
        src = cfg.embed.source
        rows = lake.row_count(src.format, src.path, max_files=COUNT_FOOTERS_MAX_FILES) if src.path and src.format != "files" else None
        if rows is not None and lake.exists(cfg.embed.table):
            held = lake.row_count("delta", lake.path(cfg.embed.table))
            rows = None if held is None else rows + held
        return rows, None, f"(the embeddings of embed.source {src.path or src.table!r})"
    icfg = cfg.input
    if icfg.format in ("synthetic", "npy"):
        facts = input_facts(lake, icfg)
        return facts.rows, facts.dim, facts.where
    where = repr(icfg.path or icfg.table)
    if icfg.path is None:
        return None, None, where
    rows = lake.row_count(icfg.format, icfg.path, max_files=COUNT_FOOTERS_MAX_FILES)
    return rows, lake.embedding_width(icfg.format, icfg.path, icfg.embedding_column), where


# ---------------------------------------------------------------- fingerprints of what a run reads

_HASHED: dict[tuple, str] = {}  # (path, device, inode, size, mtime_ns) -> sha256, within one process


def file_sha256(path: str, *, key: str = "input.path") -> str:
    """The content hash of a local file, in one streaming pass (memoised per process by file identity)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TableError(f"{key}={path!r} does not exist" if exc.errno == errno.ENOENT else f"{key}={path!r}: {exc.strerror}") from exc
    ident = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if ident not in _HASHED:
        t0 = time.perf_counter()
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(8 << 20), b""):
                h.update(chunk)
        _HASHED[ident] = h.hexdigest()
        log.info("hashed %s (%.1f MB) in %.1fs", path, st.st_size / 1e6, time.perf_counter() - t0)
    return _HASHED[ident]


def fingerprint_source(lake: Lake, format: str, *, path: Optional[str], table: Optional[str], key: str,
                       glob: Optional[str] = None, recursive: bool = True) -> dict:
    """What a table, folder or file input is right now, precisely enough that any change shows:
    a Delta table's id and version; a Parquet folder's or a file folder's listing (names, sizes,
    modification times); a .npy file's content hash; a catalog table's Delta version or files."""
    if format == "npy":
        return {"kind": "npy", "path": os.path.abspath(path), "bytes": os.path.getsize(path) if os.path.exists(path) else None,
                "sha256": file_sha256(path, key=f"{key}.path")}
    if table:
        return _fingerprint_catalog_table(lake, table, key)
    if format == "delta":
        lake.read_source(format, path=path, key=key)  # existence and readability, with the usual errors
        return {"kind": "delta", "path": path, **lake.delta_snapshot(path)}
    try:
        listing = lake.list_files(path, glob=glob, recursive=recursive)
    except FileNotFoundError as exc:
        raise TableError(f"{key}.path={path!r} does not exist") from exc
    except OSError as exc:  # credentials, permissions, network
        raise TableError(f"{key}.path={path!r} cannot be listed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from exc
    if not listing:
        raise InputDataError(f"{key}.path={path!r} holds no {'files' if format == 'files' else 'Parquet files'}")
    digest = _listing_digest(listing)
    out = {"kind": format, "path": path, "files": len(listing), "bytes": sum(b for _, b, _ in listing),
           "listing_sha256": digest, "listing": [rel for rel, _, _ in listing],
           # each listed file's (bytes, mtime in ns): what a nightly run compares to find the files new since a run
           "listing_stats": [[size, mtime_ns] for _, size, mtime_ns in listing]}
    if format == "files":  # Spark's binaryFile source skips empty files: the embed stage rejects them itself
        out["empty_files"] = [[rel, mtime_ns] for rel, size, mtime_ns in listing if size == 0]
    return out


#: where a lake keeps folder inputs' file listings, by their hash (``runs`` records the hash only)
LISTINGS = "_listings"


def _listing_digest(entries) -> str:
    """The ``listing_sha256`` of a folder's (name, bytes, mtime) entries."""
    return hashlib.sha256(json.dumps([list(e) for e in entries]).encode()).hexdigest()


def keep_listing(lake: Lake, fingerprint: Optional[dict]) -> None:
    """Keep a folder input's file listing (names, sizes, times) under ``<lake>/_listings/<its hash>.json``,
    for a later run to tell which files are new (:func:`kept_listing`); other inputs keep nothing."""
    if not fingerprint or fingerprint.get("listing_stats") is None:
        return
    rel = f"{LISTINGS}/{fingerprint['listing_sha256']}.json"
    if lake.get_file(rel) is None:
        lake.put_file(rel, json.dumps({"listing": fingerprint["listing"], "listing_stats": fingerprint["listing_stats"]}).encode())


def kept_listing(lake: Lake, fingerprint: dict) -> Optional[set]:
    """``{(name, bytes, mtime)}`` of the folder listing the ``fingerprint`` (as ``runs`` records it)
    names, from :func:`keep_listing`; None when none was kept or it does not match the hash."""
    data = lake.get_file(f"{LISTINGS}/{fingerprint.get('listing_sha256')}.json")
    if data is None:
        return None
    kept = json.loads(data)
    if _listing_digest((rel, *st) for rel, st in zip(kept["listing"], kept["listing_stats"])) != fingerprint.get("listing_sha256"):
        log.warning("%s/%s.json does not match its hash: ignored", LISTINGS, fingerprint.get("listing_sha256"))
        return None
    return {(rel, size, mtime) for rel, (size, mtime) in zip(kept["listing"], kept["listing_stats"])}


def _fingerprint_catalog_table(lake: Lake, table: str, key: str) -> dict:
    spark = lake.spark
    try:
        detail = spark.sql(f"DESCRIBE DETAIL {table}").first()
    except Exception:  # not a Delta table (or no DESCRIBE DETAIL): its files are its identity
        detail = None
    if detail is not None and str(detail["format"]).lower() == "delta":
        version = spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first()["version"]
        return {"kind": "catalog-delta", "table": table, "table_id": detail["id"], "version": int(version)}
    files = sorted(lake.read_source("parquet", table=table, key=key).inputFiles())
    return {"kind": "catalog", "table": table, "files": len(files), "listing_sha256": hashlib.sha256(json.dumps(files).encode()).hexdigest()}


def fingerprint_run_input(lake: Lake, cfg: InputConfig, *, key: str = "input") -> Optional[dict]:
    """The run input's fingerprint; None for the generated pool (its config is its identity)."""
    if cfg.format == "synthetic":
        return None
    return fingerprint_source(lake, cfg.format, path=cfg.path, table=cfg.table, key=key)


def fingerprint_coreset_target(lake: Lake, ccfg) -> Optional[dict]:
    """The coreset's target set: its embeddings input, or the source it embeds."""
    if ccfg.target is not None:
        return fingerprint_run_input(lake, ccfg.target, key="coreset.target")
    src = ccfg.target_source
    return fingerprint_source(lake, src.format, path=src.path, table=src.table, key="coreset.target_source",
                              glob=src.glob, recursive=src.recursive)


def fingerprint_embed_source(lake: Lake, ecfg: EmbedConfig) -> dict:
    src = ecfg.source
    return fingerprint_source(lake, src.format, path=src.path, table=src.table, key="embed.source",
                              glob=src.glob, recursive=src.recursive)


def summary(fingerprint: dict) -> str:
    """One line for the log."""
    kind = fingerprint["kind"]
    where = fingerprint.get("path") or fingerprint.get("table")
    if "version" in fingerprint:
        return f"{kind} {where} version {fingerprint['version']} (table id {fingerprint['table_id']})"
    if "sha256" in fingerprint:
        return f"{kind} {where}, {fingerprint['bytes']} bytes, sha256 {fingerprint['sha256'][:16]}"
    return f"{kind} {where}, {fingerprint['files']} files, listing sha256 {fingerprint['listing_sha256'][:16]}"


def read_embed_source(lake: Lake, ecfg: EmbedConfig, spec: EncoderSpec, snapshot: Optional[dict] = None):
    """The embed stage's source as (id, payload, passthrough...); files too large to read keep a
    null payload and their size in :data:`OVERSIZED`, so they become rejects and the counts add up."""
    from pyspark.sql import functions as F

    src = ecfg.source
    if src.format == "files":
        files = lake.read_files(src.path, glob=src.glob, recursive=src.recursive, key="embed.source.path")
        empty = (snapshot or {}).get("empty_files") or []
        if empty:  # binaryFile never lists a 0-byte file; as an empty payload it becomes a counted reject
            rows = [(lake.file_uri(src.path, rel), datetime.fromtimestamp(ns / 1e9, timezone.utc), 0, b"") for rel, ns in empty]
            files = files.unionByName(lake.spark.createDataFrame(rows, files.schema))
        ident = (F.col("path") if src.file_id == "path" else F.xxhash64(F.col("path"))).alias(src.id_column)
        # binaryFile pushes filters on length into the scan and reads content only when selected,
        # so an oversized file is never read
        limit = F.lit(spec.max_bytes)
        small = files.where(F.col("length") <= limit).select(
            ident, "content", F.lit(None).cast("long").alias(OVERSIZED), *src.passthrough_columns
        )
        big = files.where(F.col("length") > limit).select(
            ident, F.lit(None).cast("binary").alias("content"), F.col("length").alias(OVERSIZED), *src.passthrough_columns
        )
        return small.unionByName(big)
    df = lake.read_source(src.format, path=src.path, table=src.table, key="embed.source", snapshot=snapshot)
    payload = ecfg.payload_column(spec)
    missing = [c for c in [src.id_column, payload, *src.passthrough_columns] if c not in df.columns]
    if missing:
        raise InputDataError(f"embed.source {src.path or src.table!r} has no column(s) {missing}; it has {df.columns}")
    want = "string" if spec.input_modality == "text" else "binary"
    got = df.schema[payload].dataType.simpleString()
    if got != want:
        raise InputDataError(f"embed.source column {payload!r} is {got}; a {spec.input_modality} encoder needs {want}")
    return df.select(src.id_column, payload, *src.passthrough_columns)
