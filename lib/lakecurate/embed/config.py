"""The ``embed`` section of a run config: what to read, which encoder, where the vectors go.

Plain dataclasses loaded by :func:`lakecurate.config.from_dict` like every other section; the
encoder itself is an :class:`~lakecurate.embed.spec.EncoderSpec` built and validated here, so a
typo in ``embed.encoder`` fails when the config is loaded, before Spark starts.

The ``embeddings`` table is keyed by (``model``, id): rows of several encoders can share it, and a
new run embeds only the source ids that have no row for its model yet. :func:`model_label` is that
key, derived from the spec without loading the model (the cluster stage uses it to pick its input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lakecurate.embed.spec import EncoderSpec
from lakecurate.errors import ConfigError

SOURCE_FORMATS = ("delta", "parquet", "files")
FILE_IDS = ("path", "hash")
#: the columns Spark's binaryFile source gives a file (``content`` is the payload)
FILE_COLUMNS = ("path", "modificationTime", "length")


@dataclass
class EmbedSourceConfig:
    """The raw pool: a Delta/Parquet table (text or image-bytes column) or image files."""

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
    passthrough_columns: list[str] = field(default_factory=list)

    def validate(self, where: str) -> None:
        if self.format not in SOURCE_FORMATS:
            raise ConfigError(f"{where}.format={self.format!r} is not one of {list(SOURCE_FORMATS)}")
        if self.path is None and self.table is None:
            raise ConfigError(f"{where}: set {where}.path (or {where}.table) to the data to embed")
        if self.format == "files":
            if self.table is not None:
                raise ConfigError(f"{where}.table={self.table!r} does not apply to format='files'; give {where}.path")
            if self.file_id not in FILE_IDS:
                raise ConfigError(f"{where}.file_id={self.file_id!r} is not one of {list(FILE_IDS)}")
            unknown = [c for c in self.passthrough_columns if c not in FILE_COLUMNS]
            if unknown:
                raise ConfigError(f"{where}.passthrough_columns={unknown} are not file columns; use any of {list(FILE_COLUMNS)}")
        for name in ("id_column", "text_column", "image_column"):
            if not getattr(self, name):
                raise ConfigError(f"{where}.{name} must be a non-empty column name")
        clash = {"embedding", "model", "dim", "reason", "run_id", self.id_column} & set(self.passthrough_columns)
        if clash:
            raise ConfigError(f"{where}.passthrough_columns lists {sorted(clash)}: those names are taken by the embeddings table")


@dataclass
class EmbedConfig:
    """The ``embed`` stage: source -> encoder on the executors -> ``embeddings`` + ``rejects``."""

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

    def validate(self, where: str) -> None:
        self.source.validate(f"{where}.source")
        try:
            spec = EncoderSpec.from_dict(self.encoder)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if spec.input_modality == "text" and self.source.format == "files":
            raise ConfigError(
                f"{where}.source.format='files' reads image files but encoder kind {spec.kind!r} embeds text "
                f"(set {where}.encoder.kind='image', or modality='image' for a custom encoder)"
            )
        self.encoder_spec = spec  # type: ignore[attr-defined]  # derived; not part of the fingerprint
        for name in ("table", "rejects_table"):
            if not getattr(self, name) or "/" in getattr(self, name):
                raise ConfigError(f"{where}.{name}={getattr(self, name)!r} must be a plain table name")
        if self.table == self.rejects_table:
            raise ConfigError(f"{where}.table and {where}.rejects_table are both {self.table!r}")
        if isinstance(self.batch_rows, bool) or self.batch_rows < 1:
            raise ConfigError(f"{where}.batch_rows={self.batch_rows!r} must be an integer >= 1")
        for name in ("partitions", "threads_per_task"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}={getattr(self, name)!r} must be >= 0 (0 = automatic)")

    @property
    def payload_column(self) -> str:
        """The source column an encoder reads (the binaryFile ``content`` for files)."""
        if self.source.format == "files":
            return "content"
        return self.source.text_column if self.encoder_spec.input_modality == "text" else self.source.image_column  # type: ignore[attr-defined]


def model_label(spec: EncoderSpec) -> str:
    """The ``model`` value an encoder writes to the embeddings table, without loading it.

    Mirrors the names :func:`lakecurate.embed.load_encoder` gives (the stage checks they agree).
    Two different files with the same base name would share a label: set ``encoder.name``.
    """
    if spec.name:
        return spec.name
    if spec.kind == "text":
        from lakecurate.embed.encoders import resolve_text_model

        return resolve_text_model(spec.model)[1]
    if spec.kind == "image":
        if spec.model is not None:
            return Path(spec.model).name
        return f"{spec.architecture}@{Path(str(spec.weights)).name}"
    return str(spec.import_path)
