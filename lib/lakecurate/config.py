"""Job configuration: YAML in ``conf/`` loaded into frozen, typed, validated dataclasses.

A config is plain data: what the user wrote, type-checked and range-checked once, here, at the
edge. Unknown keys, wrong types and impossible values raise
:class:`~lakecurate.errors.ConfigError` naming the dotted key and the value. Nothing is derived
or stored during validation: what a run computes from its config (its id, the per-level k-means
parameters, the encoder spec, the stages to run) lives on a :class:`lakecurate.plan.RunPlan`,
built from the config by :func:`lakecurate.plan.plan_run`, which also checks what spans
sections (the stage list against the stage records).

The command line takes the file plus ``dotted.key=value`` overrides (values parsed as YAML).
Sequences are tuples, so no part of a loaded config can change.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from lakecurate.embed.spec import EncoderSpec
from lakecurate.errors import ConfigError
from lakecurate.validation import (
    STRATEGIES,
    HierarchySettings,
    check_choice,
    check_coreset_params,
    check_eps,
    check_hierarchy,
    check_int,
    check_n_coarse,
    parse_bytes,
    check_settings,
    check_storage_options,
    check_name,
    check_number,
)

INPUT_FORMATS = ("delta", "parquet", "npy", "synthetic")
BACKENDS = ("auto", "native", "embedded")
BLOCK_CACHES = ("auto", "local_files", "spark", "lake")
SOURCE_FORMATS = ("delta", "parquet", "files")
FILE_IDS = ("path", "hash")
#: the columns Spark's binaryFile source gives a file (``content`` is the payload)
FILE_COLUMNS = ("path", "modificationTime", "length")


@dataclass(frozen=True)
class SyntheticConfig:
    """A generated long-tailed pool with known concepts (the embedded demo's input)."""

    n: int = 100_000
    dim: int = 256
    n_concepts: int = 300
    alpha: float = 1.2  # Zipf exponent of the concept sizes: larger = longer tail
    spread: float = 0.35  # within-concept standard deviation relative to the concept-centre scale
    seed: int = 0
    #: > 0: a redundant pool (lakecurate.core.synthetic.redundant_pool): the n rows are copies of
    #: n_items distinct items, item i copied a Zipf(copies_alpha) number of times with noise of
    #: relative norm copy_noise; the pool gets an ``item`` column (ground truth for dedup)
    n_items: int = 0
    copies_alpha: float = 1.0
    copy_noise: float = 0.05

    def validate(self, where: str) -> None:
        check_int(self.n, f"{where}.n", minimum=1)
        check_int(self.dim, f"{where}.dim", minimum=1)
        check_int(self.n_concepts, f"{where}.n_concepts", minimum=1)
        if self.n_concepts > self.n:
            raise ConfigError(f"{where}.n_concepts={self.n_concepts} is more than {where}.n={self.n}")
        check_number(self.alpha, f"{where}.alpha", low=0.0)
        check_number(self.spread, f"{where}.spread", low=0.0, low_open=True)
        check_int(self.seed, f"{where}.seed", minimum=0)
        if self.n_items:
            check_int(self.n_items, f"{where}.n_items", minimum=1)
            if self.n_items > self.n:
                raise ConfigError(f"{where}.n_items={self.n_items} is more than {where}.n={self.n}")
            check_number(self.copies_alpha, f"{where}.copies_alpha", low=0.0)
            check_number(self.copy_noise, f"{where}.copy_noise", low=0.0)


@dataclass(frozen=True)
class InputConfig:
    """Where the embeddings come from (unless the run's embed stage makes them)."""

    format: str = "delta"
    path: Optional[str] = None  # storage path or URI (Delta/Parquet directory, .npy file)
    table: Optional[str] = None  # catalog name (catalog.schema.table) when the session has a catalog
    id_column: str = "id"
    embedding_column: str = "embedding"
    #: extra columns carried into the curated table (e.g. a path or caption)
    passthrough_columns: tuple[str, ...] = ()
    synthetic: Optional[SyntheticConfig] = None  # format synthetic: None = the defaults

    @property
    def pool(self) -> SyntheticConfig:
        """The generated pool's parameters (format synthetic)."""
        return self.synthetic if self.synthetic is not None else SyntheticConfig()

    @property
    def location(self) -> str:
        """What the input is, for messages: its path, its table name, or its format."""
        return self.path or self.table or self.format

    def validate(self, where: str) -> None:
        check_choice(self.format, INPUT_FORMATS, f"{where}.format")
        check_name(self.id_column, f"{where}.id_column")
        check_name(self.embedding_column, f"{where}.embedding_column")
        if self.format == "synthetic":
            self.pool.validate(f"{where}.synthetic")
        if self.format == "npy" and self.path is not None and not str(self.path).endswith(".npy"):
            raise ConfigError(f"{where}.path={self.path!r} must be a .npy file for format='npy'")
        if self.table is not None and self.format not in ("delta", "parquet"):
            raise ConfigError(f"{where}.table={self.table!r} only applies to format delta or parquet")
        if self.table is not None and self.path is not None:
            raise ConfigError(f"{where}.path={self.path!r} and {where}.table={self.table!r} are both set: give one "
                              f"(on the command line, {where}.path=null with {where}.table=...)")

    def require_location(self, where: str) -> None:
        """A run that reads this input needs a path or a table (the generated pool needs neither)."""
        if self.format != "synthetic" and self.path is None and self.table is None:
            raise ConfigError(f"{where}: set {where}.path (or {where}.table) for format={self.format!r}")


@dataclass(frozen=True)
class LakeConfig:
    """Where output tables go, and which Delta writer to use."""

    root: str = "lake"
    database: Optional[str] = None  # with native Delta: register tables as database.name in the catalog
    backend: str = "auto"  # auto: native Delta when the session has it, else embedded delta-rs commits
    #: where the lake stages inputs that must be rewritten before Spark can read them (a .npy file
    #: becomes Parquet); a folder or URI; default ``<root>/_staging``. Never the machine's /tmp.
    staging: Optional[str] = None
    #: credentials and endpoints for an object-store root, as delta-rs names them (AWS_REGION,
    #: AWS_ENDPOINT_URL, AZURE_STORAGE_ACCOUNT_NAME, ...), passed to delta-rs and pyarrow; Spark
    #: reads and writes with its own settings (spark.hadoop.fs.s3a.*). Never written to ``runs``.
    storage_options: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if not self.root:
            raise ConfigError(f"{where}.root must be a non-empty path")
        check_storage_options(self.storage_options, str(self.root), f"{where}.storage_options")
        check_choice(self.backend, BACKENDS, f"{where}.backend")
        if self.staging is not None and not self.staging:
            raise ConfigError(f"{where}.staging must be a non-empty path or null (= {where}.root/_staging)")


@dataclass(frozen=True)
class ClusteringConfig:
    n_clusters: tuple[int, ...] = (1000, 100)
    n_resampling_steps: int = 10
    resample_size: Optional[tuple[int, ...]] = None
    n_iter: int = 50
    init: str = "k-means++"
    init_points_per_centroid: int = 40
    metric: str = "l2"
    seed: int = 0
    #: where a level 2..T (its input: the previous level's centroids) runs. null: where the sizing
    #: model (lakecurate.sizing.size_job) puts it, in-process on the driver while its inputs fit the
    #: driver and it is no slower there than on the executors (whose passes each pay a Spark job's
    #: fixed cost), else on the executors through the same Spark assigner as level 1. A number: a
    #: threshold instead (more inputs than it: the executors). Either way the same tree, bit for bit.
    driver_max_rows: Optional[int] = None
    #: per level (one entry: every level): C > 0 fits the level in two steps, a k-means with C
    #: coarse clusters over its inputs, then inside each coarse cluster a k-means (with the level's
    #: resampling) with a share of the level's k proportional to its size; 0 = one k-means;
    #: ``auto`` = two steps only where one k-means would not fit ``task_memory`` (lakecurate.sizing)
    n_coarse: tuple[Any, ...] = ("auto",)
    #: memory of one Spark task's Python worker ("4g", "512m"): the sizing check (``lakecurate
    #: plan``, and ``run`` before its first job) and ``n_coarse: auto`` read it
    task_memory: str = "4g"

    def hierarchy(self, where: str = "clustering") -> HierarchySettings:
        """The checked per-level settings (computed on each call, never stored)."""
        return check_hierarchy(
            self.n_clusters,
            n_resampling_steps=self.n_resampling_steps,
            resample_size=self.resample_size,
            n_iter=self.n_iter,
            init=self.init,
            metric=self.metric,
            init_points_per_centroid=self.init_points_per_centroid,
            where=f"{where}.",
        )

    def validate(self, where: str) -> None:
        levels = self.hierarchy(where)
        check_int(self.seed, f"{where}.seed", minimum=0)
        if self.driver_max_rows is not None:
            check_int(self.driver_max_rows, f"{where}.driver_max_rows", minimum=1)
        self.coarse_per_level(where)
        parse_bytes(self.task_memory, f"{where}.task_memory")

    def coarse_per_level(self, where: str = "clustering") -> tuple:
        """``n_coarse`` checked, one entry per level (``auto`` or an int)."""
        return check_n_coarse(self.n_coarse, self.hierarchy(where).n_clusters, where=f"{where}.")


DEDUP_MODES = ("full", "incremental")


@dataclass(frozen=True)
class DedupConfig:
    """The dedup stage: rows whose cosine similarity is >= 1 - eps are near-duplicates; one per group is kept."""

    eps: float = 0.05
    n_clusters: Optional[int] = None  # coarse clusters; None = about sqrt(rows)
    #: also compare each row with the rows of its r nearest other coarse clusters (boundary copies)
    n_neighbor_clusters: int = 1
    block_size: int = 4096  # rows per side of a similarity tile (4 * block_size^2 bytes)
    #: a coarse cluster with more rows is compared as chunks of at most this many rows, chunk
    #: against chunk, so one task never holds more than two chunks (plus its probes)
    max_cluster_rows: int = 100_000
    n_iter: int = 20  # Lloyd iterations of the coarse clustering
    seed: int = 0
    #: "full": de-duplicate the whole input; "incremental" (runs that assign): only the rows not yet
    #: in the tree, against its kept rows and each other (the kept rows all stay)
    mode: str = "full"

    def validate(self, where: str) -> None:
        check_eps(self.eps, key=f"{where}.eps")
        check_choice(self.mode, DEDUP_MODES, f"{where}.mode")
        if self.n_clusters is not None:
            check_int(self.n_clusters, f"{where}.n_clusters", minimum=1)
        check_int(self.n_neighbor_clusters, f"{where}.n_neighbor_clusters", minimum=0)
        check_int(self.block_size, f"{where}.block_size", minimum=1)
        check_int(self.max_cluster_rows, f"{where}.max_cluster_rows", minimum=1)
        check_int(self.n_iter, f"{where}.n_iter", minimum=1)
        check_int(self.seed, f"{where}.seed", minimum=0)


SAMPLING_MODES = ("fresh", "top_up")


@dataclass(frozen=True)
class SamplingConfig:
    target_size: int = 10_000
    strategy: str = "random"
    max_repeats: int = 1  # >1 lets a row be drawn that many times when the target exceeds the pool
    seed: int = 0
    #: "fresh": sample the tree anew; "top_up": keep every row of the tree's previous curated set
    #: that its cluster's new quota allows, add rows only where quotas grew (nightly runs)
    mode: str = "fresh"

    def validate(self, where: str) -> None:
        check_int(self.target_size, f"{where}.target_size", minimum=1)
        check_choice(self.strategy, STRATEGIES, f"{where}.strategy")
        check_int(self.max_repeats, f"{where}.max_repeats", minimum=1)
        check_int(self.seed, f"{where}.seed", minimum=0)
        check_choice(self.mode, SAMPLING_MODES, f"{where}.mode")
        if self.mode == "top_up" and self.max_repeats > 1:
            raise ConfigError(f"{where}.mode='top_up' keeps rows of an earlier curated set once each: it needs {where}.max_repeats=1")


@dataclass(frozen=True)
class ReportConfig:
    #: a column of the input with known labels (e.g. concept); when set, the run ends with a
    #: balance report of the curated subset against a uniform random subset of the same size
    label_column: Optional[str] = None
    seed: int = 0
    #: write the run's HTML report (``<lake>/reports/<run_id>/index.html``) at the end of the run
    html: bool = True

    def validate(self, where: str) -> None:
        if self.label_column is not None:
            check_name(self.label_column, f"{where}.label_column")
        check_int(self.seed, f"{where}.seed", minimum=0)


@dataclass(frozen=True)
class SparkConfig:
    master: Optional[str] = "local[*]"  # None: leave it to spark-submit
    app_name: str = "lakecurate"
    conf: dict[str, Any] = field(default_factory=dict)
    #: Arrow batch size for the Python workers (rows per batch handed to faiss)
    arrow_batch_rows: int = 20_000
    #: partitions of the cached embeddings; 0 = 2 x default parallelism
    partitions: int = 0
    #: Spark Connect: ``sc://host:port/;token=...`` or ``local[n]`` (a Connect server started
    #: here); None: ``$SPARK_REMOTE`` if set, else a classic session on ``master``
    remote: Optional[str] = None
    #: where the embeddings live between k-means passes (:mod:`lakecurate.spark.cache`):
    #: ``local_files`` (Spark's cache + block files each executor memory-maps: no JVM -> Python
    #: stream per pass; needs N x d x 4 bytes of executor local disk), ``spark`` (stream them from
    #: Spark's cache), ``lake`` (staged once as Parquet in the lake, re-read every pass: no cache
    #: at all), ``auto`` = ``local_files`` when the session can cache, else ``lake``
    block_cache: str = "auto"

    def validate(self, where: str) -> None:
        check_settings(self.conf, f"{where}.conf")
        if self.remote is not None and (not isinstance(self.remote, str) or not self.remote.strip()):
            raise ConfigError(f"{where}.remote={self.remote!r} must be a Spark Connect URL (sc://host:port) or local[n]")
        check_int(self.arrow_batch_rows, f"{where}.arrow_batch_rows", minimum=1)
        check_choice(self.block_cache, BLOCK_CACHES, f"{where}.block_cache")
        check_int(self.partitions, f"{where}.partitions", minimum=0)


@dataclass(frozen=True)
class EmbedSourceConfig:
    """The raw pool of the embed stage: a Delta/Parquet table (text or image-bytes column) or image files."""

    format: str = "delta"
    #: table: Delta/Parquet directory or URI; files: a directory or URI (recursed) or a glob
    path: Optional[str] = None
    #: catalog table name (catalog.schema.table), for format delta/parquet on a session with a catalog
    table: Optional[str] = None
    #: the id column of a table, and the name of the id column written to the embeddings table
    id_column: str = "id"
    #: text encoders: the column holding the text
    text_column: str = "text"
    #: image encoders on a table: the binary column holding encoded image files (PNG, JPEG, ...)
    image_column: str = "image"
    #: files: only file names matching this pattern (Spark's pathGlobFilter, e.g. "*.jpg")
    glob: Optional[str] = None
    #: files: descend into sub-directories
    recursive: bool = True
    #: files: the id is the file's URI ("path", a string) or a 64-bit xxhash of it ("hash", a bigint)
    file_id: str = "path"
    #: source columns copied to the embeddings and rejects tables (files: path, modificationTime, length)
    passthrough_columns: tuple[str, ...] = ()

    def validate(self, where: str) -> None:
        check_choice(self.format, SOURCE_FORMATS, f"{where}.format")
        if self.path is None and self.table is None:
            raise ConfigError(f"{where}: set {where}.path (or {where}.table) to the data to embed")
        if self.path is not None and self.table is not None:
            raise ConfigError(f"{where}.path={self.path!r} and {where}.table={self.table!r} are both set: give one")
        if self.format == "files":
            if self.table is not None:
                raise ConfigError(f"{where}.table={self.table!r} does not apply to format='files'; give {where}.path")
            check_choice(self.file_id, FILE_IDS, f"{where}.file_id")
            unknown = [c for c in self.passthrough_columns if c not in FILE_COLUMNS]
            if unknown:
                raise ConfigError(f"{where}.passthrough_columns={unknown} are not file columns; use any of {list(FILE_COLUMNS)}")
        for name in ("id_column", "text_column", "image_column"):
            check_name(getattr(self, name), f"{where}.{name}")
        clash = {"embedding", "model", "dim", "reason", "run_id", self.id_column} & set(self.passthrough_columns)
        if clash:
            raise ConfigError(f"{where}.passthrough_columns lists {sorted(clash)}: those names are taken by the embeddings table")


@dataclass(frozen=True)
class EmbedConfig:
    """The ``embed`` stage: source -> encoder on the executors -> ``embeddings`` + ``rejects``.

    The ``embeddings`` table is keyed by (``model``, id): rows of several encoders can share it,
    and a new run embeds only the source ids that have no row for its model yet.
    """

    source: EmbedSourceConfig = field(default_factory=EmbedSourceConfig)
    #: an EncoderSpec as a mapping (kind, model, batch_size, normalize, device, ...); {} = bundled MiniLM
    encoder: dict[str, Any] = field(default_factory=dict)
    table: str = "embeddings"
    rejects_table: str = "rejects"
    #: rows per Arrow batch handed to an encoder (sentence-transformers sorts each batch by length)
    batch_rows: int = 4096
    #: encoding tasks; 0 = max(the source's partitions, Spark's default parallelism)
    partitions: int = 0
    #: torch CPU threads per task; 0 = the task's cores (spark.task.cpus)
    threads_per_task: int = 0
    #: embed ids rejected by an earlier run again (e.g. after fixing files); default: skip them
    retry_rejects: bool = False

    def encoder_spec(self) -> EncoderSpec:
        """The encoder this section describes (validated on construction)."""
        return EncoderSpec.from_dict(self.encoder)

    def payload_column(self, spec: EncoderSpec) -> str:
        """The source column an encoder reads (the binaryFile ``content`` for files)."""
        if self.source.format == "files":
            return "content"
        return self.source.text_column if spec.input_modality == "text" else self.source.image_column

    def validate(self, where: str) -> None:
        self.source.validate(f"{where}.source")
        try:
            spec = self.encoder_spec()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if spec.input_modality == "text" and self.source.format == "files":
            raise ConfigError(
                f"{where}.source.format='files' reads image files but encoder kind {spec.kind!r} embeds text "
                f"(set {where}.encoder.kind='image', or modality='image' for a custom encoder)"
            )
        for name in ("table", "rejects_table"):
            if not getattr(self, name) or "/" in getattr(self, name):
                raise ConfigError(f"{where}.{name}={getattr(self, name)!r} must be a plain table name")
        if self.table == self.rejects_table:
            raise ConfigError(f"{where}.table and {where}.rejects_table are both {self.table!r}")
        check_int(self.batch_rows, f"{where}.batch_rows", minimum=1)
        for name in ("partitions", "threads_per_task"):
            check_int(getattr(self, name), f"{where}.{name}", minimum=0)


@dataclass(frozen=True)
class CoresetConfig:
    """The ``coreset`` stage (SimCore): the input rows most like a target set -> the ``coreset`` table.

    The target is an embeddings table or file (``target``: format delta, parquet or npy, with its
    own id and embedding columns), or a text/image source (``target_source``) embedded with the
    run's ``embed.encoder`` as the stage runs. Give one.
    """

    target: Optional[InputConfig] = None
    target_source: Optional[EmbedSourceConfig] = None
    n_centroids: int = 100
    #: rows to pick at most; None = 50 x the target's rows (capped by the pool)
    budget: Optional[int] = None
    patience: int = 20
    stop_threshold: float = 0.95
    seed: int = 0
    #: candidate rows per centroid fetched by the first pass; 0 = about 2 x budget / n_centroids
    candidates: int = 0

    def validate(self, where: str) -> None:
        if (self.target is None) == (self.target_source is None):
            raise ConfigError(f"{where}: give the target set as one of {where}.target (embeddings) or "
                              f"{where}.target_source (text or images to embed with embed.encoder)"
                              + ("; both are set" if self.target is not None else ""))
        if self.target is not None:
            self.target.validate(f"{where}.target")
            if self.target.format == "synthetic":
                raise ConfigError(f"{where}.target.format='synthetic' is not a target: give a delta, parquet or npy embeddings input")
            self.target.require_location(f"{where}.target")
        if self.target_source is not None:
            self.target_source.validate(f"{where}.target_source")
        check_coreset_params(self.n_centroids, self.budget, self.patience, self.stop_threshold, self.seed, self.candidates,
                             prefix=f"{where}.")


@dataclass(frozen=True)
class AssignConfig:
    """The ``assign`` stage (nightly runs): rows of the input not yet in a tree's ``assignments``
    get their nearest level-1 centroid and its path, appended to that tree's rows."""

    #: the run whose tree the new rows join; None = the latest run in the lake whose cluster stage
    #: succeeded with this config's ``clustering`` section
    tree_run_id: Optional[str] = None
    #: warn (re-cluster recommended) when more than this share of an increment's rows is farther
    #: from its level-1 centroid than that cluster's 99th percentile distance at fit time
    refit_threshold: float = 0.05

    def validate(self, where: str) -> None:
        if self.tree_run_id is not None:
            check_name(self.tree_run_id, f"{where}.tree_run_id")
        check_number(self.refit_threshold, f"{where}.refit_threshold", low=0.0, high=1.0)


SHARD_ROWS = ("curated", "assigned")
SHARD_SOURCES = ("auto", "input", "embed_source")
#: columns of the shards table that a payload column may not be named
SHARD_COLUMNS = ("shard", "level", "cluster", "path", "copy", "tree_run_id", "run_id")


@dataclass(frozen=True)
class ShardsConfig:
    """The ``shards`` stage: rows joined to their payload, one Delta partition per cluster at ``level``.

    What a training job reads (:mod:`lakecurate.torch`): Divide and Contrast's per-cluster experts,
    same-cluster (hard-negative) batches, balanced batches.
    """

    #: the tree level whose clusters are the shards (1 = level-1 clusters); None = the top level
    level: Optional[int] = None
    #: "curated": the run's curated rows; "assigned": every row the tree assigned
    rows: str = "curated"
    #: where the payload is joined from: "input" (the run's input, e.g. the embeddings table),
    #: "embed_source" (the embed stage's raw text/images); "auto": embed_source when the config
    #: has an embed section, else input
    source: str = "auto"
    #: the source columns to carry; None = the source's payload (the embed source's text or image
    #: column, files' path; the input's passthrough columns) and its passthrough columns
    payload_columns: Optional[tuple[str, ...]] = None
    #: a shard with more rows is written as several files
    max_rows_per_file: int = 1_000_000

    def validate(self, where: str) -> None:
        if self.level is not None:
            check_int(self.level, f"{where}.level", minimum=1)
        check_choice(self.rows, SHARD_ROWS, f"{where}.rows")
        check_choice(self.source, SHARD_SOURCES, f"{where}.source")
        for i, name in enumerate(self.payload_columns or ()):
            check_name(name, f"{where}.payload_columns[{i}]")
        clash = sorted(set(self.payload_columns or ()) & set(SHARD_COLUMNS))
        if clash:
            raise ConfigError(f"{where}.payload_columns lists {clash}: those names are taken by the shards table's own columns")
        if self.payload_columns is not None and len(set(self.payload_columns)) != len(self.payload_columns):
            raise ConfigError(f"{where}.payload_columns={list(self.payload_columns)} lists a column twice")
        check_int(self.max_rows_per_file, f"{where}.max_rows_per_file", minimum=1)


@dataclass(frozen=True)
class RunConfig:
    """One ``lakecurate run``: the stages to run and every section they read."""

    run_id: Optional[str] = None  # default: <name>-<hash of the config>, so a rerun resumes (lakecurate.plan)
    name: str = "lakecurate"
    #: the stages to run, in the order of the stage records (lakecurate.stages.STAGES)
    stages: tuple[str, ...] = ("cluster", "sample")
    input: InputConfig = field(default_factory=InputConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    #: the embed stage (raw text/images -> embeddings table); required when stages include "embed"
    embed: Optional[EmbedConfig] = None
    #: the coreset stage (rows like a target set); required when stages include "coreset"
    coreset: Optional[CoresetConfig] = None
    #: the shards stage (rows + payload partitioned by cluster, for training)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    #: the assign stage (new rows into an existing tree)
    assign: AssignConfig = field(default_factory=AssignConfig)

    def validate(self, where: str = "") -> None:
        """Every section on its own; what spans sections is checked by :func:`lakecurate.plan.plan_run`."""
        check_name(self.name, "name")
        if len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"stages={list(self.stages)} lists a stage twice")
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if dataclasses.is_dataclass(sub):
                sub.validate(f.name)


# ------------------------------------------------------------------ generic typed loading


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping; got {value!r}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]  # a scalar where a list is expected: one element (e.g. n_clusters: 100)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list; got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping; got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string; got {value!r}")
        return value
    return value


#: keys a later lakecurate replaced, and what to write instead
RENAMED = {
    "clustering.level1_coarse_clusters": "write clustering.n_coarse: [C, 0, ...] (two steps at any level, C coarse clusters)",
}


def from_dict(cls, data: Optional[dict], where: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by their dotted name."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping; got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    prefix = f"{where}." if where else ""
    for key in unknown:
        if f"{prefix}{key}" in RENAMED:
            raise ConfigError(f"config key {prefix}{key} is gone: {RENAMED[prefix + key]}")
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s} (known keys: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj) -> dict:
    """A config as plain JSON-able data (sequences as lists), e.g. for the ``runs`` table."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def redacted(config: "RunConfig") -> dict:
    """:func:`to_dict` for the record (``runs.config``, logs): storage option values hidden."""
    d = to_dict(config)
    d["lake"]["storage_options"] = {k: "***" for k in d["lake"].get("storage_options") or {}}
    return d


#: mappings whose keys are names of their own (Spark settings, storage options), kept whole
FREE_FORM = {("spark", "conf"), ("lake", "storage_options")}


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides; the value is parsed as YAML (numbers, lists, null)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
        node = data
        parts = key.strip().split(".")
        for n in range(1, len(parts)):  # spark.conf.spark.executor.memory: the setting's name keeps its dots
            if tuple(parts[:n]) in FREE_FORM:
                parts = parts[:n] + [".".join(parts[n:])]
                break
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = value
    return data


#: the job configs that ship inside the package (``conf/`` in the repository)
BUNDLED_CONFIGS = Path(__file__).resolve().parent / "conf"


def bundled_config(name: str) -> Optional[Path]:
    """A config shipped with lakecurate by bare name (``demo`` or ``demo.yaml``), else None."""
    if "/" in name or os.sep in name:
        return None
    for candidate in (BUNDLED_CONFIGS / name, BUNDLED_CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def load_yaml(path: Union[str, Path]) -> dict:
    """A job config from a local file, a URI (``s3://``, ``gs://``, ``abfss://``: read with
    pyarrow's filesystems, e.g. on an EMR or Dataproc driver), or a bundled config's name."""
    text_of = str(path)
    if "://" in text_of and not text_of.startswith("file://"):
        import pyarrow.fs as pafs

        try:
            fs, inner = pafs.FileSystem.from_uri(text_of)
            with fs.open_input_stream(inner) as f:
                text = f.read().decode()
        except Exception as exc:
            raise ConfigError(f"config file {text_of!r} cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    else:
        p = Path(text_of[len("file://"):] if text_of.startswith("file://") else text_of)
        if not p.is_file():
            bundled = bundled_config(str(path))
            if bundled is None:
                known = sorted(f.stem for f in BUNDLED_CONFIGS.glob("*.yaml"))
                raise ConfigError(f"config file {str(p)!r} does not exist (bundled configs, by name: {', '.join(known)})")
            p = bundled
        text = p.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {text_of!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {text_of!r} must hold a mapping at the top level")
    return data


def load_config(cls=None, path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None, data: Optional[dict] = None):
    """Load, override, type-check and validate a job config (``cls`` defaults to :class:`RunConfig`)."""
    cls = cls or RunConfig
    raw = dict(data) if data is not None else (load_yaml(path) if path is not None else {})
    raw = apply_overrides(raw, list(overrides or []))
    cfg = from_dict(cls, raw)
    cfg.validate()
    return cfg
