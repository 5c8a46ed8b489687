"""Job configuration: YAML in ``conf/`` loaded into typed, validated dataclasses.

Validation happens here, once, at the edge: unknown keys, wrong types and impossible values
raise :class:`~lakecurate.errors.ConfigError` naming the dotted key and the value. The command
line takes the file plus ``dotted.key=value`` overrides (values parsed as YAML scalars/lists).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from lakecurate.core.sampling import STRATEGIES
from lakecurate.embed.config import EmbedConfig
from lakecurate.errors import ConfigError

INPUT_FORMATS = ("delta", "parquet", "npy", "synthetic")
BACKENDS = ("auto", "native", "embedded")
STAGES = ("embed", "dedup", "cluster", "sample")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass
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
        _positive(self.n, f"{where}.n")
        _positive(self.dim, f"{where}.dim")
        _positive(self.n_concepts, f"{where}.n_concepts")
        if self.n_concepts > self.n:
            raise ConfigError(f"{where}.n_concepts={self.n_concepts} is more than {where}.n={self.n}")
        if not self.alpha >= 0:
            raise ConfigError(f"{where}.alpha={self.alpha} must be >= 0")
        if not self.spread > 0:
            raise ConfigError(f"{where}.spread={self.spread} must be > 0")
        if self.n_items:
            _positive(self.n_items, f"{where}.n_items")
            if self.n_items > self.n:
                raise ConfigError(f"{where}.n_items={self.n_items} is more than {where}.n={self.n}")
            if not self.copies_alpha >= 0:
                raise ConfigError(f"{where}.copies_alpha={self.copies_alpha} must be >= 0")
            if not self.copy_noise >= 0:
                raise ConfigError(f"{where}.copy_noise={self.copy_noise} must be >= 0")


@dataclass
class InputConfig:
    """Where the embeddings come from."""

    format: str = "delta"
    path: Optional[str] = None  # storage path or URI (Delta/Parquet directory, .npy file)
    table: Optional[str] = None  # catalog name (catalog.schema.table) when the session has a catalog
    id_column: str = "id"
    embedding_column: str = "embedding"
    #: extra columns carried into the curated table (e.g. a path or caption)
    passthrough_columns: list[str] = field(default_factory=list)
    synthetic: Optional[SyntheticConfig] = None

    def validate(self, where: str) -> None:
        _choice(self.format, INPUT_FORMATS, f"{where}.format")
        if self.format == "synthetic":
            if self.synthetic is None:
                self.synthetic = SyntheticConfig()
            self.synthetic.validate(f"{where}.synthetic")
        elif self.path is None and self.table is None:
            raise ConfigError(f"{where}: set {where}.path (or {where}.table) for format={self.format!r}")
        if self.format == "npy" and self.path is not None and not str(self.path).endswith(".npy"):
            raise ConfigError(f"{where}.path={self.path!r} must be a .npy file for format='npy'")
        if self.table is not None and self.format not in ("delta", "parquet"):
            raise ConfigError(f"{where}.table={self.table!r} only applies to format delta or parquet")


@dataclass
class LakeConfig:
    """Where output tables go, and which Delta writer to use."""

    root: str = "lake"
    database: Optional[str] = None  # with native Delta: register tables as database.name in the catalog
    backend: str = "auto"  # auto: native Delta when the session has it, else embedded delta-rs commits

    def validate(self, where: str) -> None:
        if not self.root:
            raise ConfigError(f"{where}.root must be a non-empty path")
        _choice(self.backend, BACKENDS, f"{where}.backend")


@dataclass
class ClusteringConfig:
    n_clusters: list[int] = field(default_factory=lambda: [1000, 100])
    n_resampling_steps: int = 10
    resample_size: Optional[list[int]] = None
    n_iter: int = 50
    init: str = "k-means++"
    init_points_per_centroid: int = 40
    metric: str = "l2"
    seed: int = 0
    #: a level whose input (the previous level's centroids) has more rows than this runs on the
    #: executors through the same Spark assigner as level 1, instead of in-process on the driver
    driver_max_rows: int = 500_000
    #: > 0: fit level 1 in two steps, for very large n_clusters[0] (lakecurate.stages.split_level):
    #: this many coarse clusters over all rows, then a k-means inside each coarse cluster with a
    #: share of n_clusters[0] proportional to its size; 0 = one k-means (the default)
    level1_coarse_clusters: int = 0

    def validate(self, where: str) -> None:
        from lakecurate.estimator import level_params

        self.level_params = level_params(  # type: ignore[attr-defined]
            self.n_clusters,
            n_resampling_steps=self.n_resampling_steps,
            resample_size=self.resample_size,
            n_iter=self.n_iter,
            init=self.init,
            metric=self.metric,
            init_points_per_centroid=self.init_points_per_centroid,
            where=f"{where}.",
        )
        _positive(self.driver_max_rows, f"{where}.driver_max_rows")
        coarse = self.level1_coarse_clusters
        if isinstance(coarse, bool) or not isinstance(coarse, int) or coarse < 0 or (coarse and coarse >= self.n_clusters[0]):
            raise ConfigError(f"{where}.level1_coarse_clusters={coarse!r} must be 0 (off) or an integer in [1, n_clusters[0]={self.n_clusters[0]})")
        if coarse and self.level_params[0].resample_size > 1:  # type: ignore[attr-defined]
            raise ConfigError(f"{where}.level1_coarse_clusters={coarse} needs resample_size[0] <= 1 (no resampling at a two-step level 1)")


@dataclass
class DedupConfig:
    """The dedup stage: rows whose cosine similarity is >= 1 - eps are near-duplicates; one per group is kept."""

    eps: float = 0.05
    n_clusters: Optional[int] = None  # coarse clusters; None = about sqrt(rows)
    #: also compare each row with the rows of its r nearest other coarse clusters (boundary copies)
    n_neighbor_clusters: int = 0
    block_size: int = 4096  # rows per side of a similarity tile (4 * block_size^2 bytes)
    #: a coarse cluster with more rows is compared as chunks of at most this many rows, chunk
    #: against chunk, so one task never holds more than two chunks (plus its probes)
    max_cluster_rows: int = 100_000
    n_iter: int = 20  # Lloyd iterations of the coarse clustering
    seed: int = 0

    def validate(self, where: str) -> None:
        from lakecurate.core.dedup import check_eps

        self.eps = check_eps(self.eps, key=f"{where}.eps")
        if self.n_clusters is not None:
            _positive(self.n_clusters, f"{where}.n_clusters")
        if isinstance(self.n_neighbor_clusters, bool) or not isinstance(self.n_neighbor_clusters, int) or self.n_neighbor_clusters < 0:
            raise ConfigError(f"{where}.n_neighbor_clusters={self.n_neighbor_clusters!r} must be an integer >= 0")
        _positive(self.block_size, f"{where}.block_size")
        _positive(self.max_cluster_rows, f"{where}.max_cluster_rows")
        _positive(self.n_iter, f"{where}.n_iter")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"{where}.seed={self.seed!r} must be an integer >= 0")


@dataclass
class SamplingConfig:
    target_size: int = 10_000
    strategy: str = "random"
    max_repeats: int = 1  # >1 lets a row be drawn that many times when the target exceeds the pool
    seed: int = 0

    def validate(self, where: str) -> None:
        _positive(self.target_size, f"{where}.target_size")
        _choice(self.strategy, STRATEGIES, f"{where}.strategy")
        _positive(self.max_repeats, f"{where}.max_repeats")


@dataclass
class ReportConfig:
    #: a column of the input with known labels (e.g. concept); when set, the run ends with a
    #: balance report of the curated subset against a uniform random subset of the same size
    label_column: Optional[str] = None
    seed: int = 0

    def validate(self, where: str) -> None:
        pass


@dataclass
class SparkConfig:
    master: Optional[str] = "local[*]"  # None: leave it to spark-submit
    app_name: str = "lakecurate"
    conf: dict[str, Any] = field(default_factory=dict)
    #: Arrow batch size for the Python workers (rows per batch handed to faiss)
    arrow_batch_rows: int = 20_000
    #: partitions of the cached embeddings; 0 = 2 x default parallelism
    partitions: int = 0
    #: how k-means passes read the cached embeddings: ``local_files`` (each executor memory-maps
    #: block files it wrote next to its cached partitions: no JVM -> Python stream per pass;
    #: needs N x d x 4 bytes of executor local disk) or ``spark`` (stream them from Spark's cache)
    block_cache: str = "local_files"

    def validate(self, where: str) -> None:
        _positive(self.arrow_batch_rows, f"{where}.arrow_batch_rows")
        _choice(self.block_cache, ("local_files", "spark"), f"{where}.block_cache")
        if self.partitions < 0:
            raise ConfigError(f"{where}.partitions={self.partitions} must be >= 0")


@dataclass
class RunConfig:
    """One ``lakecurate run``: input -> [dedup] -> cluster -> sample, tables keyed by run_id."""

    run_id: Optional[str] = None  # default: <name>-<hash of the config>, so a rerun resumes
    name: str = "lakecurate"
    stages: list[str] = field(default_factory=lambda: ["cluster", "sample"])
    input: InputConfig = field(default_factory=InputConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    #: the embed stage (raw text/images -> embeddings table); required when stages include "embed"
    embed: Optional[EmbedConfig] = None

    def validate(self, where: str = "") -> None:
        for i, stage in enumerate(self.stages):
            _choice(stage, STAGES, f"stages[{i}]")
        if len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"stages={self.stages} lists a stage twice")
        order = [s for s in STAGES if s in self.stages]
        if order != self.stages:
            raise ConfigError(f"stages={self.stages} must keep the order {list(STAGES)}")
        if "embed" in self.stages and self.embed is None:
            raise ConfigError("stages include 'embed' but the config has no embed section (embed.source, embed.encoder)")
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if f.name == "input" and "embed" in self.stages:
                continue  # the run's input is the embed stage's embeddings table, not input.path
            if dataclasses.is_dataclass(sub):
                sub.validate(f.name)
        if self.run_id is None:
            self.run_id = f"{self.name}-{self.fingerprint()[:10]}"
        if not _RUN_ID.match(self.run_id):
            raise ConfigError(f"run_id={self.run_id!r} must match {_RUN_ID.pattern}")

    def fingerprint(self) -> str:
        """Hash of everything that changes the result (not Spark tuning, not the run_id)."""
        d = to_dict(self)
        for k in ("run_id", "spark", "report"):
            d.pop(k, None)
        if "dedup" not in self.stages:
            d.pop("dedup", None)  # dedup settings only change runs that de-duplicate
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------ generic typed loading


def _positive(value: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be an integer >= 1")


def _choice(value: Any, options, key: str) -> None:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {list(options)}")


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
    if origin is list:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]  # a scalar where a list is expected: one element (e.g. n_clusters: 100)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list; got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
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


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by their dotted name."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping; got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s} (known keys: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return {f.name: (to_dict(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else v) for f in dataclasses.fields(obj)}


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
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load_yaml(path: Union[str, Path]) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    return data


def load_config(cls, path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None, data: Optional[dict] = None):
    """Load, override, type-check and validate a job config."""
    raw = dict(data) if data is not None else (load_yaml(path) if path is not None else {})
    raw = apply_overrides(raw, list(overrides or []))
    cfg = from_dict(cls, raw)
    cfg.validate()
    return cfg
