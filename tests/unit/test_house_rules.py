"""The rules that keep the house in order, checked on the source itself."""

import ast
import os

from lakecurate.stages import STAGES
from lakecurate.tables import DESCRIPTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python_files(*folders):
    for folder in folders:
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(dirpath, name)


def test_no_underscored_name_is_imported_from_another_module():
    offences = []
    for path in _python_files("lib", "bench", "tests", "jobs", "scripts"):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lakecurate"):
                offences += [f"{os.path.relpath(path, ROOT)}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offences, offences


def test_core_and_the_readers_import_no_spark():
    """The math, the HTML report and the training-time readers run where there is no Spark."""
    for path in _python_files(*(os.path.join("lib", "lakecurate", p) for p in ("core", "report", "torch"))):
        for node in ast.walk(ast.parse(open(path).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith(("pyspark", "lakecurate.spark", "lakecurate.stages")) for n in names), (path, names)


def test_stage_records_are_complete_and_in_run_order():
    names = [s.name for s in STAGES]
    assert names == ["embed", "dedup", "coreset", "cluster", "assign", "sample", "shards", "report"]
    assert len(set(names)) == len(names)
    from lakecurate.config import RunConfig, EmbedConfig

    cfg = RunConfig(embed=EmbedConfig())
    for record in STAGES:
        assert record.help and callable(record.run)
        for table in record.writes(cfg):
            assert table in DESCRIPTIONS, f"stage {record.name} writes {table!r}, which lakecurate/tables.py does not declare"
        assert record.section is None or hasattr(cfg, record.section)
    assert [s.name for s in STAGES if s.provides_input] == ["embed"]


def test_every_stage_that_runs_alone_is_a_cli_command():
    from lakecurate.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"run", "vacuum", "where", "runs", "show", "report", "plan"} | {s.name for s in STAGES if s.command}
