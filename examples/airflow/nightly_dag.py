"""Airflow: the nightly path on a growing lake, and the weekly (or stale-tree) re-cluster.

* ``lakecurate_nightly`` (@daily): embed the day's new source rows (the embed stage is
  incremental), then ``lakecurate run nightly``: the new embeddings are de-duplicated against the
  tree's kept rows and each other (``dedup.mode: incremental``), the rest join the current tree
  (``assign``) and the curated set is topped up on the grown tree (``sampling.mode: top_up``).
  A branch then reads the assign stage's staleness from the ``runs`` table (delta-rs, no Spark)
  and triggers the re-cluster when it is above ``assign.refit_threshold``.
* ``lakecurate_weekly`` (@weekly): the full run, ``lakecurate run curate`` with a full dedup
  first: a new tree of the grown pool, which the next nights' assign stages find by its clustering section.

Every command line is in ``COMMANDS`` (``tests/unit/test_examples.py`` checks each is a valid
lakecurate run); the job file is the one the wheel ships (``lakecurate where curate``).
"""

from datetime import datetime

from airflow import DAG
from airflow.operators.python import BranchPythonOperator
from airflow.operators.empty import EmptyOperator
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

LAKE = "s3://my-bucket/lake"
COMMANDS = {
    "embed": ["embed", "embed-text", "embed.source.path=s3://my-bucket/lake/raw/texts", "lake.root=s3://my-bucket/lake/curation"],
    "nightly": ["run", "nightly", "input.path=s3://my-bucket/lake/curation/embeddings", "lake.root=s3://my-bucket/lake/curation",
                "sampling.target_size=5000000"],
    "recluster": ["run", "curate", "stages=[dedup,cluster,sample]", "input.path=s3://my-bucket/lake/curation/embeddings", "lake.root=s3://my-bucket/lake/curation",
                  "sampling.target_size=5000000"],
}
SUBMIT = {
    "conn_id": "spark_default",
    "application": "/opt/lakecurate/jobs/curate.py",  # `lakecurate where curate`: runs `lakecurate <args>`
    "conf": {"spark.pyspark.python": "/opt/lakecurate/venv/bin/python"},
    "packages": "io.delta:delta-spark_2.13:4.0.0",
}


def stale_or_done(**_) -> str:
    """The re-cluster task when the latest assign stage said its tree is stale, else the end."""
    import json

    from deltalake import DeltaTable

    runs = DeltaTable(f"{LAKE}/curation/runs").to_pandas(columns=["stage", "status", "finished_at", "metrics"])
    assigns = runs[(runs["stage"] == "assign") & (runs["status"] == "succeeded")].sort_values("finished_at")
    if assigns.empty:
        return "done"
    m = json.loads(assigns.iloc[-1]["metrics"])
    return "recluster" if m.get("stale_share", 0) > m.get("refit_threshold", 1) else "done"


with DAG("lakecurate_nightly", start_date=datetime(2026, 1, 1), schedule="@daily", catchup=False) as nightly_dag:
    # the embed job file runs `lakecurate embed ...`; curate.py runs the `run` commands
    embed = SparkSubmitOperator(task_id="embed", application_args=COMMANDS["embed"][1:],
                                **{**SUBMIT, "application": "/opt/lakecurate/jobs/embed.py"})
    nightly = SparkSubmitOperator(task_id="nightly", application_args=COMMANDS["nightly"][1:], **SUBMIT)
    check = BranchPythonOperator(task_id="stale_or_done", python_callable=stale_or_done)
    recluster = SparkSubmitOperator(task_id="recluster", application_args=COMMANDS["recluster"][1:], **SUBMIT)
    embed >> nightly >> check >> [recluster, EmptyOperator(task_id="done")]

with DAG("lakecurate_weekly", start_date=datetime(2026, 1, 1), schedule="@weekly", catchup=False) as weekly_dag:
    SparkSubmitOperator(task_id="recluster", application_args=COMMANDS["recluster"][1:], **SUBMIT)
