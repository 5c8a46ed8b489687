"""The deployment recipes in examples/ name things that exist: each job's command line is a valid
lakecurate config (bundled config + overrides, validated as a run would), each file it names ships
in the package, and the Airflow DAG compiles."""

from __future__ import annotations

import json
import os
import re

import yaml

from lakecurate.cli import build_parser
from lakecurate.config import bundled_config
from lakecurate.plan import load_plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
PACKAGE = os.path.join(ROOT, "lib", "lakecurate")


def _check_command_line(args: list[str]) -> None:
    """``lakecurate <command> <config> k=v ...`` parses, and its config validates and plans."""
    parsed = build_parser().parse_args(args)
    assert bundled_config(parsed.config) is not None, parsed.config
    plan = load_plan(parsed.config, parsed.overrides, alone=None if parsed.command == "run" else parsed.command)
    assert plan.stages


def test_databricks_bundle_jobs_are_valid_lakecurate_runs():
    bundle = yaml.safe_load(open(os.path.join(EXAMPLES, "databricks", "databricks.yml")))
    variables = {k: v["default"] for k, v in bundle["variables"].items()}
    jobs = bundle["resources"]["jobs"]
    assert set(jobs) == {"curate_gpu", "curate_serverless"}
    for job in jobs.values():
        for task in job["tasks"]:
            wheel_task = task["python_wheel_task"]
            assert wheel_task["package_name"] == "lakecurate" and wheel_task["entry_point"] == "lakecurate"
            params = [re.sub(r"\$\{var\.(\w+)\}", lambda m: variables[m.group(1)], p) for p in wheel_task["parameters"]]
            _check_command_line(params)
    assert "environments" in jobs["curate_serverless"] and "job_clusters" in jobs["curate_gpu"]


def test_emr_step_submits_a_shipped_job_file_with_a_valid_config():
    (step,) = json.load(open(os.path.join(EXAMPLES, "emr", "step.json")))
    args = step["Args"]
    assert args[0] == "spark-submit"
    job = next(a for a in args if a.endswith(".py"))
    assert os.path.isfile(os.path.join(PACKAGE, "jobs", os.path.basename(job)))
    rest = args[args.index(job) + 1:]
    config = os.path.basename(rest[0])
    assert os.path.isfile(os.path.join(PACKAGE, "conf", config))
    _check_command_line(["run", config.removesuffix(".yaml"), *rest[1:]])
    for script in ("pack_venv.sh", "bootstrap.sh"):
        assert os.access(os.path.join(EXAMPLES, "emr", script), os.X_OK)


def test_airflow_dag_compiles():
    path = os.path.join(EXAMPLES, "airflow", "lakecurate_dag.py")
    compile(open(path).read(), path, "exec")


def _bundle_commands(path: str, variables: dict) -> dict:
    jobs = yaml.safe_load(open(path))["resources"]["jobs"]
    out = {}
    for name, job in jobs.items():
        for task in job["tasks"]:
            wheel_task = task["python_wheel_task"]
            assert wheel_task["package_name"] == "lakecurate" and wheel_task["entry_point"] == "lakecurate"
            out[(name, task["task_key"])] = [re.sub(r"\$\{var\.(\w+)\}", lambda m: variables[m.group(1)], str(p))
                                             for p in wheel_task["parameters"]]
    return out


def test_the_nightly_recipes_call_commands_that_exist():
    """The Airflow DAG and the Databricks jobs of the nightly path: every command line is a valid
    lakecurate run, the nightly one assigns and tops up, the re-cluster fits a tree with the same
    clustering section the nightly assign looks for."""
    import ast

    path = os.path.join(EXAMPLES, "airflow", "nightly_dag.py")
    tree = ast.parse(open(path).read())
    compile(tree, path, "exec")
    commands = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "COMMANDS")
    assert set(commands) == {"embed", "nightly", "recluster"}
    plans = {}
    for name, args in commands.items():
        _check_command_line(args)
        plans[name] = load_plan(args[1], args[2:], alone=None if args[0] == "run" else args[0])
    assert plans["nightly"].stage_names == ["dedup", "assign", "sample"] and plans["nightly"].config.sampling.mode == "top_up"
    assert plans["nightly"].config.dedup.mode == "incremental"
    assert plans["recluster"].stage_names == ["dedup", "cluster", "sample"] and plans["recluster"].config.dedup.mode == "full"
    assert plans["nightly"].config.clustering == plans["recluster"].config.clustering  # the tree the nightly run finds
    bundle = yaml.safe_load(open(os.path.join(EXAMPLES, "databricks", "databricks.yml")))
    assert "nightly.yml" in bundle["include"]
    variables = {k: v["default"] for k, v in bundle["variables"].items()}
    jobs = _bundle_commands(os.path.join(EXAMPLES, "databricks", "nightly.yml"), variables)
    assert set(jobs) == {("nightly", "embed"), ("nightly", "dedup_assign_and_top_up"), ("weekly", "recluster")}
    for args in jobs.values():
        _check_command_line(args)
    nightly = load_plan(jobs[("nightly", "dedup_assign_and_top_up")][1], jobs[("nightly", "dedup_assign_and_top_up")][2:])
    weekly = load_plan(jobs[("weekly", "recluster")][1], jobs[("weekly", "recluster")][2:])
    assert nightly.stage_names == ["dedup", "assign", "sample"] and weekly.config.clustering == nightly.config.clustering
    assert weekly.stage_names == ["dedup", "cluster", "sample"]

