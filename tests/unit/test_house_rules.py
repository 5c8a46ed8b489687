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
    assert [s.name for s in STAGES if s.replaces_input] == ["embed"]


def test_every_stage_that_runs_alone_is_a_cli_command():
    from lakecurate.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"run", "vacuum", "where", "runs", "show", "report", "plan"} | {s.name for s in STAGES if s.command is not None}


def _import_graph() -> dict:
    """lakecurate module -> the lakecurate modules it imports anywhere in its file (at the top,
    under TYPE_CHECKING, or inside a function: a lazy import hides a circle, it does not remove it)."""
    lib = os.path.join(ROOT, "lib")
    mods = {}
    for path in _python_files(os.path.join("lib", "lakecurate")):
        name = os.path.relpath(path, lib)[:-3].replace(os.sep, ".")
        mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    graph = {}
    for name, path in mods.items():
        out = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lakecurate"):
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                out.update(subs if len(subs) == len(node.names) else [node.module, *subs])
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("lakecurate"))
        graph[name] = {m for m in out if m in mods and m != name}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    """Issue 31: core/assign <-> core/pruning and plan -> stages -> stages/context -> plan were
    circles a newcomer had to untangle; none may come back (any length, lazy imports counted)."""
    graph = _import_graph()
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"
