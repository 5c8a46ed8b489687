"""A run as it will execute: its id, its stages and what they compute from the config.

:func:`plan_run` turns a validated :class:`~lakecurate.config.RunConfig` (plain data) into a
:class:`RunPlan`, checking everything that spans sections against the stage records
(:data:`lakecurate.stages.STAGES`): stage names and order, the sections a listed stage needs, an
input for a run whose stages read one. Derived values live here and nowhere else: the run id,
the config fingerprint, the per-level k-means parameters, the encoder spec. Nothing here starts
Spark, so a bad config fails before any work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence, Union

from lakecurate.config import RunConfig, SyntheticConfig, apply_overrides, from_dict, load_yaml, to_dict
from lakecurate.core.hierarchy import LevelParams, level_params
from lakecurate.embed.spec import EncoderSpec
from lakecurate.errors import ConfigError
from lakecurate.stages import STAGES, Stage
from lakecurate.validation import check_choice

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class RunPlan:
    """The resolved run: the config it came from plus everything derived from it."""

    config: RunConfig
    run_id: str
    fingerprint: str
    #: the stage records to run, in order (listed stages plus automatic ones such as the report)
    stages: tuple[Stage, ...]
    #: k-means parameters of every level (``clustering.*``)
    levels: tuple[LevelParams, ...]
    #: the embed stage's encoder (None without an embed section)
    encoder: Optional[EncoderSpec]
    #: the run id came from the fingerprint (so a changed input gives a new run)
    run_id_from_fingerprint: bool = True
    #: fingerprints of what the run reads, by config section ("input", "embed.source");
    #: set by :meth:`with_inputs` once the lake can be asked (lakecurate.inputs)
    inputs: dict = field(default_factory=dict)
    #: per stage: the fingerprint of everything its result depends on (its config sections, the
    #: stages before it and theirs, the inputs). A stage committed with the same fingerprint by
    #: another run is reused (its tables are not computed again), e.g. the tree when only
    #: ``sampling.*`` changed
    stage_fingerprints: dict = field(default_factory=dict)

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def has(self, stage: str) -> bool:
        return stage in self.stage_names

    def with_inputs(self, inputs: dict) -> "RunPlan":
        """This plan for a run that reads ``inputs``: the fingerprint covers them too, and so does
        the run id unless it was given or is a fresh one, so a changed input is a new run."""
        recorded = _without_listings(inputs)
        if not recorded:
            return dataclasses.replace(self, inputs=inputs)
        blob = json.dumps({"config": self.fingerprint_of_config, "inputs": recorded}, sort_keys=True, default=str)
        fingerprint = hashlib.sha256(blob.encode()).hexdigest()
        run_id = f"{self.config.name}-{fingerprint[:10]}" if self.run_id_from_fingerprint else self.run_id
        return dataclasses.replace(self, inputs=inputs, fingerprint=fingerprint, run_id=run_id,
                                   stage_fingerprints=stage_fingerprints(self.config, self.stages, recorded))

    @property
    def fingerprint_of_config(self) -> str:
        return config_fingerprint(self.config)

    def recorded_inputs(self) -> dict:
        """The input fingerprints as the ``runs`` table keeps them (file listings by hash only)."""
        return _without_listings(self.inputs)

    def tables(self) -> list[str]:
        """The tables this run's stages write, in stage order."""
        out: list[str] = []
        for record in self.stages:
            out += [t for t in record.writes(self.config) if t not in out]
        return out


def config_fingerprint(config: RunConfig) -> str:
    """Hash of everything that changes the result: not Spark tuning, not the run id, not the
    report, not where temporary files are staged, not the shards stage; the dedup and coreset settings only for runs of those stages."""
    d = _result_keys(to_dict(config))
    for k in ("run_id", "spark", "report"):
        d.pop(k, None)
    d["lake"].pop("staging", None)
    d["lake"].pop("storage_options", None)  # credentials: where to read, not what
    for section in ("dedup", "coreset", "assign"):  # a stage's section counts only in runs of the stage (old run ids stay)
        if section not in config.stages:
            d.pop(section, None)
    # the shards stage only lays out rows the run already chose: adding it keeps the run (its own
    # fingerprint, with its section, decides whether it reruns)
    d.pop("shards", None)
    d["stages"] = [s for s in d["stages"] if s != "shards"]
    if config.input.format == "synthetic" and d["input"]["synthetic"] is None:
        d["input"]["synthetic"] = to_dict(SyntheticConfig())  # the defaults, spelled out
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def stage_fingerprints(config: RunConfig, records: Sequence[Stage], inputs: Optional[dict] = None) -> dict[str, str]:
    """Each stage's fingerprint: the input (config and recorded fingerprints), then, stage by
    stage up to and including it, the stage's name and the config sections it reads."""
    d = _result_keys(to_dict(config))
    if config.input.format == "synthetic" and d["input"]["synthetic"] is None:
        d["input"]["synthetic"] = to_dict(SyntheticConfig())
    chain: list = [{"input": d["input"], "inputs": inputs or {}}]
    out = {}
    for record in records:
        chain.append({record.name: {section: d.get(section) for section in record.reruns.depends_on}})
        out[record.name] = hashlib.sha256(json.dumps(chain, sort_keys=True, default=str).encode()).hexdigest()
    return out


def plan_run(config: RunConfig, *, alone: Optional[str] = None) -> RunPlan:
    """The plan of ``config`` (already validated section by section); ConfigError on what spans sections.

    ``alone``: the stage is run on its own (``lakecurate embed``): ``stages`` becomes that stage,
    and a stage that is a fresh run every time it runs alone gets a new run id unless one is given.
    """
    names = [s.name for s in STAGES]
    listed = list(config.stages)
    if alone is not None:
        check_choice(alone, [s.name for s in STAGES if s.command is not None], "command")
        adds = next(s for s in STAGES if s.name == alone).command.adds
        listed = [n for n in names if n in listed or n == alone] if adds else [alone]
        if adds:
            alone = None  # the config's run with the stage added: its run id, its resumes
    for i, name in enumerate(listed):
        check_choice(name, [s.name for s in STAGES if s.automatic is None], f"stages[{i}]")
    if [n for n in names if n in listed] != listed:
        raise ConfigError(f"stages={listed} must keep the order {[s.name for s in STAGES if s.automatic is None]}")
    if listed != list(config.stages):
        config = dataclasses.replace(config, stages=tuple(listed))
    records = tuple(s for s in STAGES if s.name in listed or (s.automatic is not None and s.automatic(config)))
    for record in records:
        if record.section is not None and getattr(config, record.section) is None:
            raise ConfigError(f"stages include {record.name!r} but the config has no {record.section} section")
        if record.checks.config is not None:
            record.checks.config(config)
    if not any(r.replaces_input for r in records):
        config.input.require_location("input")

    fingerprint = config_fingerprint(config)
    run_id = config.run_id
    fresh = alone is not None and any(r.command is not None and r.command.fresh_run for r in records)
    if run_id is None:
        if fresh:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            run_id = f"{config.name}-{alone}-{stamp}"
        else:
            run_id = f"{config.name}-{fingerprint[:10]}"
    if not _RUN_ID.match(run_id):
        raise ConfigError(f"run_id={run_id!r} must match {_RUN_ID.pattern}")
    return RunPlan(
        config=config,
        run_id=run_id,
        fingerprint=fingerprint,
        stages=records,
        levels=tuple(level_params(config.clustering.hierarchy())),
        encoder=config.embed.encoder_spec() if config.embed is not None else None,
        run_id_from_fingerprint=config.run_id is None and not fresh,
        stage_fingerprints=stage_fingerprints(config, records),
    )


def load_plan(
    path: Optional[Union[str, Path]] = None,
    overrides: Sequence[str] = (),
    *,
    data: Optional[dict] = None,
    alone: Optional[str] = None,
) -> RunPlan:
    """Load a YAML job config (or ``data``), apply ``dotted.key=value`` overrides, validate, plan."""
    raw = dict(data) if data is not None else (load_yaml(path) if path is not None else {})
    raw = apply_overrides(raw, list(overrides))
    config = from_dict(RunConfig, raw)
    config.validate()
    return plan_run(config, alone=alone)



#: keys added to a section after runs were committed, at the value that changes nothing: left out
#: of fingerprints at that value, so existing runs keep their ids and their committed stages
_NEW_DEFAULTS = {("sampling", "mode"): "fresh", ("dedup", "mode"): "full", ("clustering", "n_coarse"): ["auto"],
                 ("clustering", "task_memory"): "4g"}
#: keys hashed at the value every run had before a later lakecurate removed them, or made them
#: null by default, so existing runs keep their ids: put back for the hash when absent or null
#: (level1_coarse_clusters: removed; driver_max_rows: null is the plan's choice of where levels
#: 2..T run, which gives the same tree as the old default threshold)
_OLD_KEYS = {("clustering", "level1_coarse_clusters"): 0, ("clustering", "driver_max_rows"): 500_000}


#: keys that change no table, only what is written beside them: never in a fingerprint
_NO_RESULT = {("report", "html")}


def _result_keys(d: dict) -> dict:
    """``d`` (a config as a dict) less what must not move a fingerprint: new keys at their neutral
    default, and keys that change no table."""
    for (section, key), value in _NEW_DEFAULTS.items():
        if isinstance(d.get(section), dict) and d[section].get(key) == value:
            d[section].pop(key)
    for (section, key), value in _OLD_KEYS.items():
        if isinstance(d.get(section), dict) and d[section].get(key) is None:
            d[section][key] = value
    for section, key in _NO_RESULT:
        if isinstance(d.get(section), dict):
            d[section].pop(key, None)
    return d


#: a folder fingerprint's per-file parts: ``listing_sha256`` covers them, so the run id does not hash them again
LISTING_KEYS = ("listing", "listing_stats")


def _without_listings(inputs: dict) -> dict:
    return {k: {kk: vv for kk, vv in v.items() if kk not in LISTING_KEYS} for k, v in inputs.items() if v}
