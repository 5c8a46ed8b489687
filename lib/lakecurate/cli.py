"""Command line: ``lakecurate run CONFIG.yaml [dotted.key=value ...]``, and ``lakecurate <stage>``
for every stage that can run alone (see :data:`lakecurate.stages.STAGES`).

The CLI only parses arguments, sets up logging, loads and plans the config and hands off to the
pipeline; it is the one place that prints (a summary for the person at the terminal, built from
each stage record's summary).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from lakecurate.errors import LakecurateError

log = logging.getLogger("lakecurate")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    from lakecurate.stages import STAGES

    p = argparse.ArgumentParser(prog="lakecurate", description="Curate large, diverse, balanced training sets on Spark + Delta.")
    sub = p.add_subparsers(dest="command", required=True)
    commands = [("run", "run the configured stages of one curation run, in order, resuming committed ones")]
    commands += [(s.name, f"run only the {s.name} stage of a config: {s.help}") for s in STAGES if s.command]
    for name, help_text in commands:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("config", help="YAML job config (see conf/)")
        cmd.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. sampling.target_size=5000")
        cmd.add_argument("-v", "--verbose", action="store_true")
    return p


def _print_summary(result, plan) -> None:
    print()
    print(f"run {result.run_id} finished in {result.seconds:.1f}s ({result.backend} Delta, lake {result.lake_root})")
    if result.skipped:
        print(f"  skipped (already committed): {', '.join(result.skipped)}")
    for stage in plan.stages:
        if stage.name in result.stages:
            for line in stage.summary(result.stages[stage.name]):
                print(line)
    print()
    print("  tables (Delta):")
    for name, path in result.tables.items():
        print(f"    {name:<12} {path}")
    if "clusters" in result.tables:
        print(f"  e.g. spark.sql(\"SELECT level, count(*), sum(size) FROM clusters WHERE run_id = '{result.run_id}' GROUP BY level\")")
    else:
        print(f"  e.g. spark.sql(\"SELECT stage, status, seconds FROM runs WHERE run_id = '{result.run_id}'\")")
    last = next(iter(t for t in reversed(plan.tables()) if t in result.tables), "runs")
    print(f"       or without Spark: deltalake.DeltaTable('{result.tables[last]}').to_pandas()")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    try:
        from lakecurate.pipeline import run
        from lakecurate.plan import load_plan

        overrides = list(args.overrides)
        if os.environ.get("PYSPARK_GATEWAY_PORT"):
            overrides.append("spark.master=null")  # launched by spark-submit: the cluster decides
        plan = load_plan(args.config, overrides, alone=None if args.command == "run" else args.command)
        result = run(plan)
        _print_summary(result, plan)
        return 0
    except LakecurateError as exc:
        log.debug("failed", exc_info=True)
        print(f"lakecurate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
