"""What a stage is (its record) and what it receives when it runs (its context).

A stage is declared once, by one :class:`Stage` record at the bottom of its module, listed in
:data:`lakecurate.stages.STAGES`. Config checking (:func:`lakecurate.plan.plan_run`), the
pipeline, the command line and table registration all read the records, so adding a stage
means: its module (ending in its record), its config section, one line in ``STAGES``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

if TYPE_CHECKING:
    from lakecurate.config import RunConfig
    from lakecurate.inputs import InputFacts
    from lakecurate.lake import Lake
    from lakecurate.runlog import RunLog

log = logging.getLogger(__name__)

#: ``frame(ctx, upstream)``: the input the stages after this one read, given ``upstream()``, the
#: input as this stage itself saw it (called only if needed)
HandsOnFrame = Callable[["StageContext", Callable[[], Any]], Any]


#: ``files(ctx, upstream)``: :attr:`HandsOn.files`
HandsOnFiles = Callable[["StageContext", Callable[[], tuple]], tuple]


def _no_lines(metrics: dict) -> list[str]:
    return []


@dataclass(frozen=True)
class HandsOn:
    """What a stage hands to the stages after it as their input."""

    frame: HandsOnFrame
    #: the frame replaces the run's input altogether (``input.*`` is then not read): embed
    replaces_input: bool = False
    #: the same rows as files the tasks read themselves (:mod:`lakecurate.lake.pieces`):
    #: ``files(ctx, upstream) -> (InputFiles, "")`` or ``(None, why)``, ``upstream()`` the input as
    #: files as this stage saw it; None: the stages after it read ``frame`` through Spark
    files: Optional[HandsOnFiles] = None


@dataclass(frozen=True)
class Command:
    """The stage has a command of its own: ``lakecurate <name> CONFIG``."""

    #: the command runs the config's stages with this one added (committed ones are skipped), not
    #: this one alone: for a stage that lays out what the others wrote
    adds: bool = False
    #: run alone without a ``run_id``, every call is a new run (an incremental stage: a rerun on a
    #: grown source must not be skipped as already done)
    fresh_run: bool = False


@dataclass(frozen=True)
class Checks:
    """What is checked before any Spark job: a run that cannot succeed fails in seconds, writing
    no ``runs`` row."""

    #: ``config(config)``: what spans config sections, checked when the run is planned
    config: Optional[Callable[["RunConfig"], None]] = None
    #: ``input(config, facts)``: what the config and the input's metadata alone can tell
    #: (:class:`~lakecurate.inputs.InputFacts`: columns, row count if known), for every stage of
    #: the plan before the first one starts
    input: Optional[Callable[["RunConfig", "InputFacts"], None]] = None


@dataclass(frozen=True)
class Reruns:
    """What the stage's earlier commits mean for this run."""

    #: the config sections its result depends on (with the stages before it: its fingerprint)
    depends_on: tuple[str, ...] = ()
    #: skipped on a rerun when its success for this run and config is already in ``runs``
    resumable: bool = True
    #: when another run committed this stage with the same fingerprint, that run's tables are used
    #: instead of computing them again (a stage whose tables are a pure function of it);
    #: ``reusable(config)`` where that depends on the config
    reusable: Union[bool, Callable[["RunConfig"], bool]] = False
    #: the stage whose tables this one adds rows to, in the run its metrics name as ``tree_run_id``:
    #: the stages after it read that stage's tables there (``ctx.output_run``), e.g. assign -> cluster
    extends: Optional[str] = None


@dataclass(frozen=True)
class Stage:
    """One stage of a run: what it does and writes, then the optional parts that make it differ
    from a plain stage (what it hands on, its command, its checks, its rerun rules)."""

    name: str
    #: ``run(ctx, metrics)``: reads tables, writes tables, fills ``metrics`` (kept in ``runs``)
    run: Callable[["StageContext", dict], None]
    #: one line, for ``lakecurate --help`` and the docs
    help: str
    #: the tables it writes, for a given config (most are fixed names; embed's are configurable)
    writes: Callable[["RunConfig"], tuple[str, ...]]
    #: the lines the command line prints about it, from its metrics
    summary: Callable[[dict], list[str]] = _no_lines
    #: the config section it needs (a section that is None by default, e.g. ``embed``)
    section: Optional[str] = None
    #: runs without being listed in ``stages`` when this says so (e.g. the report)
    automatic: Optional[Callable[["RunConfig"], bool]] = None
    #: what it hands to the stages after it (None: the input passes through)
    hands_on: Optional[HandsOn] = None
    #: its own command (None: it runs only as part of ``lakecurate run``)
    command: Optional[Command] = None
    checks: Checks = Checks()
    reruns: Reruns = Reruns()

    @property
    def replaces_input(self) -> bool:
        return self.hands_on is not None and self.hands_on.replaces_input

    def reused_for(self, config: "RunConfig") -> bool:
        """Whether another run's commit of this stage can stand for this config's (:attr:`Reruns.reusable`)."""
        r = self.reruns.reusable
        return r(config) if callable(r) else r


class PlanView(Protocol):
    """What a stage reads of the run's plan (:class:`lakecurate.plan.RunPlan` is one). Declared
    here so that this module does not import ``plan``, which imports the stages."""

    config: "RunConfig"
    run_id: str
    fingerprint: str
    stages: tuple
    levels: tuple
    encoder: Any
    inputs: dict

    def has(self, stage: str) -> bool: ...


@dataclass
class StageContext:
    """The session, the lake, the run's plan and its run log: all a stage receives."""

    spark: Any
    lake: "Lake"
    plan: PlanView
    runlog: "RunLog"
    #: stage -> the run whose rows of the stage's tables this run uses (another run's for a reused stage)
    output_runs: dict = field(default_factory=dict)

    def output_run(self, stage: str) -> str:
        """The run id under which ``stage``'s tables hold this run's rows."""
        return self.output_runs.get(stage, self.run_id)

    @property
    def config(self) -> "RunConfig":
        return self.plan.config

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    def input_frame(self, stage: str, snapshot: Optional[dict] = None):
        """The run's input as ``stage`` sees it: the configured input, then what each stage of
        the run before ``stage`` hands on (the embed stage's embeddings replace it; the dedup
        stage removes its duplicates). For a stage not in the run, every stage's hand-on applies.
        ``snapshot``: the input's pinned fingerprint narrowed to some of its files (a nightly
        increment, :func:`lakecurate.stages.assign.increment_read`)."""
        from lakecurate.inputs import read_run_input

        frame = functools.partial(read_run_input, self.lake, self.config.input, snapshot or self.plan.inputs.get("input"))
        for record in self._handing_on(stage):
            frame = functools.partial(record.hands_on.frame, self, frame)
        return frame()

    def _handing_on(self, stage: str) -> list:
        """The stages of the run before ``stage`` that hand on rows (all of them for a stage not in the run)."""
        out = []
        for record in self.plan.stages:
            if record.name == stage:
                break
            if record.hands_on is not None:
                out.append(record)
        return out

    def input_blocks(self, stage: str, *, transform=None, metric=None):
        """The input as ``stage`` sees it, validated and cached as embedding blocks
        (:class:`~lakecurate.spark.blocks.EmbeddingBlocks`): release them when done.

        ``transform`` maps every block's vectors once, as they are cached (e.g. unit rows);
        ``metric`` refuses the rows it cannot take (zero rows under cosine, squared norms outside
        float32), by name, before any work.
        """
        from lakecurate.spark.blocks import EmbeddingBlocks

        cfg = self.config
        where = f"{stage} input {cfg.input.location}"
        files, why = self.input_files(stage)
        if files is not None:
            return EmbeddingBlocks.from_files(
                self.spark, dataclasses.replace(files, where=where), id_column=cfg.input.id_column,
                embedding_column=cfg.input.embedding_column, partitions=cfg.spark.partitions, transform=transform,
                cache=cfg.spark.block_cache, lake=self.lake, metric=metric, block_rows=cfg.spark.arrow_batch_rows,
            )
        log.info("%s: read through Spark: %s", where, why)
        return EmbeddingBlocks.from_dataframe(
            self.spark, self.input_frame(stage), id_column=cfg.input.id_column, embedding_column=cfg.input.embedding_column,
            partitions=cfg.spark.partitions, transform=transform, where=where,
            cache=cfg.spark.block_cache, lake=self.lake, metric=metric,
        )

    def input_files(self, stage: str):
        """``(files, "")`` when the input as ``stage`` sees it is the configured input's files, which
        the tasks read themselves (:func:`lakecurate.inputs.run_input_files`); ``(None, why)``
        when it must be read through Spark (a stage before it hands its rows on as a query, a
        catalog table, a native lake's Delta table)."""
        from lakecurate.inputs import run_input_files

        files = functools.partial(run_input_files, self.lake, self.config.input, self.plan.inputs.get("input"))
        for record in self._handing_on(stage):
            if record.hands_on.files is None:
                return None, f"the {record.name} stage before it hands its rows on as a query"
            files = functools.partial(record.hands_on.files, self, files)
        return files()
