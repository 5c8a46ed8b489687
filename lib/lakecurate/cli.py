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

from lakecurate import __version__
from lakecurate.errors import ConfigError, LakecurateError

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
    commands += [(s.name, f"run only the {s.name} stage of a config: {s.help}") for s in STAGES if s.command is not None]
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks (anywhere on the line)")
    p.add_argument("--version", action="version", version=f"lakecurate {__version__}")
    for name, help_text in commands:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("config", help="YAML job config: a path, a URI (s3://...), or a bundled config's name (demo, curate, ...)")
        cmd.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. sampling.target_size=5000")
    vac = sub.add_parser("vacuum", help="list (or, with --apply, delete) files in the lake that no committed table version references")
    vac.add_argument("config", nargs="?", help="a job config whose lake.root to clean (or give --lake)")
    vac.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    vac.add_argument("--lake", help="the lake root (folder or URI)")
    vac.add_argument("--apply", action="store_true", help="delete them (default: only list them)")
    vac.add_argument("--older-than-hours", type=float, default=1.0,
                     help="leave younger files alone: a write still in flight has unreferenced files too (default 1)")
    listing = sub.add_parser("runs", help="list the lake's runs from its runs table (no Spark): stages, status, started, seconds, rows")
    listing.add_argument("--lake", default=DEFAULT_LAKE, help=f"the lake root (folder or URI; default {DEFAULT_LAKE}, the demo's)")
    show = sub.add_parser("show", help="print one run's summary from the runs table (no Spark)")
    show.add_argument("run_id")
    show.add_argument("--lake", default=DEFAULT_LAKE, help=f"the lake root (folder or URI; default {DEFAULT_LAKE}, the demo's)")
    report = sub.add_parser("report", help="write one run's HTML report (figures, balance, duplicates, example rows) into the lake (no Spark)")
    report.add_argument("run_id")
    report.add_argument("--lake", default=DEFAULT_LAKE, help=f"the lake root (folder or URI; default {DEFAULT_LAKE}, the demo's)")
    size = sub.add_parser("plan", help="size a config's clustering before paying for a cluster: memory per task and on the "
                                       "driver, FLOPs, passes and time per level; refuses what cannot run (no Spark)")
    size.add_argument("config", help="YAML job config (a path, a URI or a bundled config's name)")
    size.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    size.add_argument("--rows", type=int, help="rows to cluster (default: the input's, where its metadata says)")
    size.add_argument("--dim", type=int, help="embedding width (default: the input's, where its metadata says)")
    size.add_argument("--executors", type=int, default=1, help="executors (default 1)")
    size.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores per executor (default: this machine's)")
    size.add_argument("--gpus", type=int, default=0, help="GPUs per executor (default 0)")
    size.add_argument("--task-memory", help="memory per task, e.g. 8g (default: clustering.task_memory)")
    size.add_argument("--driver-memory", help="driver memory, e.g. 64g (default: this machine's)")
    size.add_argument("--driver-cores", type=int, help="driver cores, for the levels fitted in-process (default: --cores)")
    size.add_argument("--recalibrate", action="store_true",
                      help="measure this machine's kernel rates again (default: the ones measured here before, cached per machine kind)")
    where = sub.add_parser("where", help="print where the installed package keeps its spark-submit job files or bundled configs")
    where.add_argument("what", choices=["jobs", "conf", "curate", "dedup", "embed", "coreset", "shards", "assign"],
                       help="jobs or conf: the folder; a job's name: its spark-submit file")
    return p


#: where ``lakecurate runs`` and ``show`` look without --lake: the bundled demo's lake.root
DEFAULT_LAKE = "lake/demo"


def _history(args) -> None:
    from lakecurate.config import LakeConfig
    from lakecurate.history import read_runs, runs_lines, show_lines
    from lakecurate.lake import Lake

    lake = Lake(None, LakeConfig(root=args.lake))
    runs = read_runs(lake)
    lines = runs_lines(runs) if args.command == "runs" else show_lines(runs, args.run_id)
    print(f"lake {lake.root}: {len(runs)} run(s)" if args.command == "runs" else f"lake {lake.root}")
    print("\n".join(lines))


def _report(args) -> None:
    from lakecurate.config import LakeConfig
    from lakecurate.lake import Lake
    from lakecurate.report import write_report

    path = write_report(Lake(None, LakeConfig(root=args.lake)), args.run_id)
    print(f"report of run {args.run_id}: {path}")


def _plan(args) -> int:
    from lakecurate.plan import load_plan
    from lakecurate.sizing import Hardware, cached_calibration, machine_memory, size_config
    from lakecurate.validation import check_int, parse_bytes

    cfg = load_plan(args.config, args.overrides).config
    rows, dim = args.rows, args.dim
    if rows is None or dim is None:
        from lakecurate.inputs import plan_shape

        facts_rows, facts_dim, where = plan_shape(cfg)
        rows = facts_rows if rows is None else rows
        dim = facts_dim if dim is None else dim
        missing = [flag for flag, v in (("--rows", rows), ("--dim", dim)) if v is None]
        if missing:
            raise ConfigError(f"lakecurate plan: {where} does not say its {' and '.join(m[2:] for m in missing)} from metadata "
                              f"(a path that does not exist, no row counts in the Delta log, more Parquet files than are footer-counted, an empty input, "
                              f"a catalog table or a run that embeds); give {' and '.join(missing)}")
        print(f"input {where}: {rows:,} rows x {dim} dims (from its metadata)")
    rows, dim = check_int(rows, "--rows", minimum=1), check_int(dim, "--dim", minimum=1)
    rates, how = cached_calibration(dim, cfg.clustering.n_clusters[0], refresh=args.recalibrate)
    print(how)
    hw = Hardware(
        executors=check_int(args.executors, "--executors", minimum=1), cores=check_int(args.cores, "--cores", minimum=1),
        gpus=check_int(args.gpus, "--gpus", minimum=0),
        task_memory=parse_bytes(args.task_memory or cfg.clustering.task_memory, "--task-memory" if args.task_memory else "clustering.task_memory"),
        driver_memory=parse_bytes(args.driver_memory, "--driver-memory") if args.driver_memory else machine_memory(),
        driver_cores=check_int(args.driver_cores if args.driver_cores is not None else args.cores, "--driver-cores", minimum=1),
        **rates,
    )
    if args.task_memory:
        args.overrides = [*args.overrides, f"clustering.task_memory={args.task_memory}"]
        cfg = load_plan(args.config, args.overrides).config
    size = size_config(cfg, rows, dim, hw)
    print(f"plan of {args.config}: clustering {list(cfg.clustering.n_clusters)}, {cfg.clustering.n_iter} iterations, "
          f"{cfg.clustering.n_resampling_steps} resampling steps, r = {list(cfg.clustering.hierarchy().resample_size)}")
    print("\n".join(size.lines()))
    return 1 if size.problems else 0


def _where(what: str) -> str:
    from pathlib import Path

    from lakecurate.config import BUNDLED_CONFIGS

    jobs = Path(__file__).resolve().parent / "jobs"
    return str({"jobs": jobs, "conf": BUNDLED_CONFIGS}.get(what, jobs / f"{what}.py"))


def _vacuum(args) -> None:
    from lakecurate.config import LakeConfig
    from lakecurate.lake import Lake

    if args.lake:
        lake_cfg = LakeConfig(root=args.lake)
    elif args.config:
        from lakecurate.plan import load_plan

        lake_cfg = load_plan(args.config, args.overrides).config.lake
    else:
        raise ConfigError("lakecurate vacuum needs a job config or --lake ROOT")
    lake = Lake(None, lake_cfg)
    found = lake.vacuum(apply=args.apply, older_than_seconds=args.older_than_hours * 3600)
    verb = "deleted" if args.apply else "would delete (dry run; --apply deletes)"
    print(f"lake {lake.root}: {len(found)} place(s) with leftovers older than {args.older_than_hours:g} h")
    for item in found:
        print(f"  {verb}: {item['files']} file(s), {item['bytes']} bytes in {item['place']} ({item['path']})")


GLOBAL_FLAGS = {"-v": "verbose", "--verbose": "verbose"}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Global flags may stand anywhere on the line (``lakecurate run job.yaml k=v -v``), and so may a
    command's options and its ``key=value`` overrides (``lakecurate plan job.yaml --rows 1e6 k=v``)."""
    argv = list(argv)
    flags = {GLOBAL_FLAGS[a] for a in argv if a in GLOBAL_FLAGS}
    parser = build_parser()
    args, extra = parser.parse_known_args([a for a in argv if a not in GLOBAL_FLAGS])
    late = [a for a in extra if "=" in a and not a.startswith("-")] if hasattr(args, "overrides") else []
    stray = [a for a in extra if a not in late]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if late:
        args.overrides = [*(args.overrides or []), *late]
    for name in flags:
        setattr(args, name, True)
    return args


def _print_summary(result, plan) -> None:
    print()
    print(f"run {result.run_id} finished in {result.seconds:.1f}s ({result.backend} Delta, lake {result.lake_root})")
    if result.skipped:
        print(f"  skipped (already committed): {', '.join(result.skipped)}")
    for stage, source in result.reused.items():
        print(f"  {stage}: reused the tables run {source} committed with the same input and settings")
    for stage in plan.stages:
        if stage.name in result.stages:
            for line in stage.summary(result.stages[stage.name]):
                print(line)
    print()
    print("  tables (Delta):")
    for name, path in result.tables.items():
        print(f"    {name:<12} {path}")
    for name, (path, part) in result.inputs.items():
        print(f"  input: {name} {path} (rows with run_id = '{part}': where they came from)")
    if "clusters" in result.tables:
        tree = result.reused.get("cluster", result.run_id)
        print(f"  e.g. spark.sql(\"SELECT level, count(*), sum(size) FROM clusters WHERE run_id = '{tree}' GROUP BY level\")")
    else:
        print(f"  e.g. spark.sql(\"SELECT stage, status, seconds FROM runs WHERE run_id = '{result.run_id}'\")")
    last = next(iter(t for t in reversed(plan.tables()) if t in result.tables), "runs")
    print(f"       or without Spark: deltalake.DeltaTable('{result.tables[last]}').to_pandas()")
    if result.html_report:
        print(f"  report: {result.html_report}")
    elif result.html_report_error:
        print(f"  report: NOT written ({result.html_report_error}); the tables are committed. "
              f"Write it with: lakecurate report {result.run_id} --lake {result.lake_root}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging(args.verbose)
    if args.verbose:
        os.environ.setdefault("LAKECURATE_SPARK_LOG", "full")  # Spark's own task-failure traces too
    try:
        from lakecurate.pipeline import run
        from lakecurate.plan import load_plan

        if args.command == "vacuum":
            _vacuum(args)
            return 0
        if args.command in ("runs", "show"):
            _history(args)
            return 0
        if args.command == "report":
            _report(args)
            return 0
        if args.command == "plan":
            return _plan(args)
        if args.command == "where":
            print(_where(args.what))
            return 0
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
