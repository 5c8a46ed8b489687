"""``lakecurate run``: the stages of one run, in order, resumable by run_id.

The plan (:mod:`lakecurate.plan`) says which stage records run; each reads and writes tables
through the lake; a stage whose success for this run and config is already in the ``runs`` table
is skipped, so a killed or failed job resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional, Union

from lakecurate.config import RunConfig, redacted
from lakecurate.inputs import (InputFacts, embedded_input_facts, fingerprint_coreset_target, fingerprint_embed_source, fingerprint_run_input,
                               input_facts, input_tables, prepare_run_input)
from lakecurate.inputs import summary as input_summary
from lakecurate.errors import InputDataError
from lakecurate.lake import Lake, disk_error
from lakecurate.plan import RunPlan, plan_run
from lakecurate.runlog import RunLog
from lakecurate.spark.errors import as_lakecurate_error
from lakecurate.spark.session import get_spark
from lakecurate.stages import StageContext
from lakecurate.tables import RUNS

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    lake_root: str
    backend: str
    stages: dict[str, dict] = field(default_factory=dict)  # stage -> metrics
    skipped: list[str] = field(default_factory=list)
    reused: dict[str, str] = field(default_factory=dict)  # stage -> the run whose committed tables this run uses
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # stages run by this call
    tables: dict[str, str] = field(default_factory=dict)  # name -> path, of the tables the run's stages write, and runs
    inputs: dict[str, tuple] = field(default_factory=dict)  # lake tables read as input: name -> (path, run_id partition)
    html_report: Optional[str] = None  # where the run's HTML report was written
    html_report_error: Optional[str] = None  # why it was not (the run's tables are committed all the same)

    @property
    def report(self):
        """The balance report's figures (runs with ``report.label_column``), else None."""
        return self.stages.get("report")


def run(plan: Union[RunPlan, RunConfig], spark=None) -> RunResult:
    """Run every stage of ``plan`` (a validated config is planned first) and return what was done."""
    if isinstance(plan, RunConfig):
        plan = plan_run(plan)
    config = plan.config
    t0 = time.perf_counter()
    spark = spark or get_spark(config.spark.master, config.spark.app_name, _spark_conf(config), remote=config.spark.remote)
    lake = Lake(spark, config.lake)
    for name in plan.tables():
        lake.refuse_outdated(name)  # before any work: a table this run could not write to
    reads_input = not any(s.replaces_input for s in plan.stages)
    with one_line_errors("reading the run's inputs"):
        plan = plan.with_inputs(read_fingerprints(lake, plan, reads_input))
    for section, fp in plan.recorded_inputs().items():
        log.info("%s: %s", section, input_summary(fp))
    if plan.inputs and plan.run_id_from_fingerprint:
        log.info("run id %s: the config and the input fingerprints (a changed input is a new run)", plan.run_id)
    if reads_input:
        with one_line_errors("checking the run's input"):
            preflight(plan, input_facts(lake, config.input, plan.inputs.get("input")))
        with one_line_errors("preparing the input"):
            prepare_run_input(lake, config.input)
    elif plan.has("embed"):  # the stages after embed, checked against what it will hand them, before it embeds
        with one_line_errors("checking the run's input"):
            preflight(plan, embedded_input_facts(lake, config, plan.inputs.get("embed.source")), after="embed")
    runlog = RunLog(lake, plan.run_id, redacted(config), plan.stage_fingerprints, inputs=plan.recorded_inputs())
    ctx = StageContext(spark, lake, plan, runlog)
    result = RunResult(run_id=plan.run_id, lake_root=lake.root, backend=lake.backend)
    log.info("run %s: stages %s, lake %s", plan.run_id, plan.stage_names, lake.root)
    for stage in plan.stages:
        done = runlog.completed(stage.name) if stage.reruns.resumable else None
        if done is not None:
            log.info("stage %s already succeeded for run %s: skipped", stage.name, plan.run_id)
            result.skipped.append(stage.name)
            result.stages[stage.name] = done
            if "reused_from" in done:
                ctx.output_runs[stage.name] = result.reused[stage.name] = done["reused_from"]
            if stage.reruns.extends is not None and done.get("tree_run_id"):
                ctx.output_runs[stage.reruns.extends] = done["tree_run_id"]
            continue
        elsewhere = runlog.committed_elsewhere(stage.name) if stage.reused_for(config) else None
        if elsewhere is not None:
            source, metrics = elsewhere
            log.info("stage %s: run %s committed it with the same input and settings: its tables are reused, not computed again",
                     stage.name, source)
            metrics = {**{k: v for k, v in metrics.items() if k not in ("inputs", "warnings")}, "reused_from": source}
            runlog.record(stage.name, "succeeded", time.time(), metrics)
            ctx.output_runs[stage.name] = result.reused[stage.name] = source
            result.stages[stage.name] = metrics
            continue
        started = time.perf_counter()
        with runlog.track(stage.name) as metrics, one_line_errors(f"stage {stage.name}"):
            stage.run(ctx, metrics)
        result.stages[stage.name] = metrics
        result.stage_seconds[stage.name] = time.perf_counter() - started
        if stage.reruns.extends is not None and metrics.get("tree_run_id"):
            ctx.output_runs[stage.reruns.extends] = metrics["tree_run_id"]
    for name in [*plan.tables(), RUNS]:
        if lake.exists(name):
            lake.register(name)
            result.tables[name] = lake.path(name)
    for name, part in (input_tables(config.input) if reads_input else {}).items():
        lake.register(name)
        result.inputs[name] = (lake.path(name), part)
    if config.report.html:
        write_html_report(lake, result)
    result.seconds = time.perf_counter() - t0
    return result


def write_html_report(lake: Lake, result: RunResult) -> None:
    """The run's HTML report, after its stages committed. It only reads tables: a failure here leaves
    every table as it is, is logged as an error with the command that writes the report again, and
    is kept on the result (the CLI prints it); the run is not failed for it."""
    from lakecurate.report import write_report

    try:
        result.html_report = write_report(lake, result.run_id)
    except Exception as exc:  # noqa: BLE001 - any failure of a read-only step after the commits
        result.html_report_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("the HTML report of run %s was not written (%s); the run's tables are committed. Write it with: "
                  "lakecurate report %s --lake %s", result.run_id, result.html_report_error, result.run_id, lake.root, exc_info=True)


@contextmanager
def one_line_errors(doing: str):
    """Spark failures and disk errors as one-line lakecurate errors (the original stays chained)."""
    try:
        yield
    except OSError as exc:
        raise disk_error(exc, doing) from exc
    except Exception as exc:
        converted = as_lakecurate_error(exc, doing)
        if converted is None:
            raise
        raise converted from exc


def preflight(plan: RunPlan, facts: InputFacts, *, after: Optional[str] = None) -> None:
    """Every check that needs no Spark job: the input's id and embedding columns, then each
    stage's own (:attr:`lakecurate.stages.context.Checks.input`); with ``after``, only the stages after
    that one (which makes their input: ``facts`` describe what it will hand on)."""
    cfg = plan.config.input
    if facts.rows == 0:
        raise InputDataError(f"the input {facts.where} is empty: 0 rows")
    facts.require_columns({cfg.id_column: "id", cfg.embedding_column: "array"},
                          {cfg.id_column: "input.id_column", cfg.embedding_column: "input.embedding_column"})
    names = [s.name for s in plan.stages]
    for stage in plan.stages[names.index(after) + 1 if after in names else 0:]:
        if stage.checks.input is not None:
            stage.checks.input(plan.config, facts)
    log.info("input %s: %s rows, columns %s: the run's checks passed", facts.where,
             facts.rows if facts.rows is not None else "an unknown number of", sorted(facts.columns))


def read_fingerprints(lake: Lake, plan: RunPlan, reads_input: bool) -> dict:
    """Fingerprints of what the run reads: the embeddings input, the embed stage's source, the coreset's target."""
    out = {}
    if reads_input:
        out["input"] = fingerprint_run_input(lake, plan.config.input)
    if plan.has("embed"):
        out["embed.source"] = fingerprint_embed_source(lake, plan.config.embed)
    if plan.has("coreset"):
        out["coreset.target"] = fingerprint_coreset_target(lake, plan.config.coreset)
    return {k: v for k, v in out.items() if v}


def _spark_conf(config: RunConfig) -> dict:
    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(config.spark.arrow_batch_rows)}
    conf.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in config.spark.conf.items()})
    return conf
