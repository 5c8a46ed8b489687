"""Command line: ``lakecurate run CONFIG.yaml [dotted.key=value ...]``.

The CLI only parses arguments, sets up logging, loads and validates the config and hands off to
the pipeline; it is the one place that prints (a summary for the person at the terminal).
"""

from __future__ import annotations

import argparse
import json
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lakecurate", description="Curate large, diverse, balanced training sets on Spark + Delta.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the configured stages (dedup, cluster, sample) of one curation run")
    run.add_argument("config", help="YAML job config (see conf/)")
    run.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. sampling.target_size=5000")
    run.add_argument("-v", "--verbose", action="store_true")
    dedup = sub.add_parser("dedup", help="run only the dedup stage of a config: input embeddings -> the duplicates table")
    dedup.add_argument("config", help="YAML job config (see conf/dedup.yaml)")
    dedup.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. dedup.eps=0.02")
    dedup.add_argument("-v", "--verbose", action="store_true")
    embed = sub.add_parser("embed", help="run only the embed stage of a config: new source rows -> the embeddings table")
    embed.add_argument("config", help="YAML job config with an embed section (see conf/embed-*.yaml)")
    embed.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. embed.batch_rows=4096")
    embed.add_argument("-v", "--verbose", action="store_true")
    return p


def _print_summary(result) -> None:
    print()
    print(f"run {result.run_id} finished in {result.seconds:.1f}s ({result.backend} Delta, lake {result.lake_root})")
    if result.skipped:
        print(f"  skipped (already committed): {', '.join(result.skipped)}")
    for stage, metrics in result.stages.items():
        if stage == "cluster":
            for lv in metrics.get("levels", []):
                print(
                    f"  level {lv['level']}: {lv['n_clusters']} clusters over {lv['n_inputs']} inputs, "
                    f"objective {lv['objective']:.4g}, re-seeded {lv['n_reseeded']}, empty {lv['n_empty']}, "
                    f"sizes {lv['smallest_cluster']}..{lv['largest_cluster']}, {lv['seconds']:.1f}s"
                )
        elif stage == "sample":
            print(f"  curated {metrics.get('selected')} of {metrics.get('pool')} rows ({metrics.get('strategy')}), "
                  f"from {metrics.get('level1_clusters_used')} level-1 clusters")
        elif stage == "embed":
            print(f"  embedded {metrics.get('embedded')} new rows with {metrics.get('model')} ({metrics.get('dim')}-d) "
                  f"at {metrics.get('rows_per_second')} rows/s; rejected {metrics.get('rejected')}; already embedded "
                  f"{metrics.get('already_embedded')}, previously rejected {metrics.get('previously_rejected')}; "
                  f"{metrics.get('inputs')} input rows" + (" (nothing new to embed)" if metrics.get("nothing_new") else ""))
        elif stage == "dedup":
            print(f"  de-duplication removed {metrics.get('removed')} of {metrics.get('n_rows')} rows "
                  f"(eps {metrics.get('eps')}, {metrics.get('n_clusters')} coarse clusters, largest "
                  f"{metrics.get('largest_cluster')}, {metrics.get('n_neighbor_clusters')} neighbour clusters)")
            for band in metrics.get("removed_by_cluster_size", []):
                print(f"    clusters of {band['band']:>12} rows: {band['n_clusters']:>6} clusters, "
                      f"removed {band['n_removed']} of {band['n_rows']}")
    if result.report:
        rep = result.report
        print()
        print(f"  balance over '{rep['label_column']}' ({rep['pool']['concepts_covered']} concepts in the pool):")
        header = f"    {'subset':<13}{'rows':>9}{'covered':>9}{'entropy':>9}{'eff. concepts':>15}{'largest share':>15}{'KL to uniform':>15}"
        print(header)
        for name in ("pool", "random", "deduplicated", "curated"):
            if name not in rep:  # "deduplicated": runs with a dedup stage only
                continue
            r = rep[name]
            print(f"    {name:<13}{r['n']:>9}{r['concepts_covered']:>9}{r['entropy_bits']:>9.3f}"
                  f"{r['effective_concepts']:>15.1f}{r['largest_share']:>15.3f}{r['kl_to_uniform_bits']:>15.3f}")
    print()
    print("  tables (Delta):")
    for name, path in result.tables.items():
        print(f"    {name:<12} {path}")
    print(f"  e.g. spark.sql(\"SELECT level, count(*), sum(size) FROM clusters WHERE run_id = '{result.run_id}' GROUP BY level\")")
    print(f"       or without Spark: deltalake.DeltaTable('{result.tables.get('curated', '<lake>/curated')}').to_pandas()")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    try:
        if args.command == "run":
            from lakecurate.config import RunConfig, load_config
            from lakecurate.pipeline import run

            cfg = load_config(RunConfig, args.config, args.overrides)
            if os.environ.get("PYSPARK_GATEWAY_PORT"):
                cfg.spark.master = None  # launched by spark-submit: the cluster decides
            result = run(cfg)
            _print_summary(result)
        elif args.command == "dedup":
            from lakecurate.config import RunConfig, load_config
            from lakecurate.pipeline import run

            cfg = load_config(RunConfig, args.config, [*args.overrides, "stages=[dedup]"])
            if os.environ.get("PYSPARK_GATEWAY_PORT"):
                cfg.spark.master = None  # launched by spark-submit: the cluster decides
            result = run(cfg)
            _print_summary(result)
        elif args.command == "embed":
            from lakecurate.pipeline import run
            from lakecurate.stages.embed import load_embed_config

            cfg = load_embed_config(args.config, args.overrides)
            if os.environ.get("PYSPARK_GATEWAY_PORT"):
                cfg.spark.master = None  # launched by spark-submit: the cluster decides
            result = run(cfg)
            _print_summary(result)
        return 0
    except LakecurateError as exc:
        log.debug("failed", exc_info=True)
        print(f"lakecurate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
