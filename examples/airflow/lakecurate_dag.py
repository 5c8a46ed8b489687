"""Airflow: a nightly curation, on a plain Spark cluster or on Databricks.

Two DAGs on the same config: ``SparkSubmitOperator`` submits the job file the wheel ships
(``lakecurate where curate``) to a Spark cluster; ``DatabricksSubmitRunOperator`` runs the wheel's
``lakecurate`` entry point as a one-time Databricks job. Only the overrides change between runs.
"""

from datetime import datetime

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator

LAKE = "s3://my-bucket/lake"
OVERRIDES = [
    f"input.path={LAKE}/embeddings",
    f"lake.root={LAKE}/curation",
    "sampling.target_size=5000000",
]

with DAG("lakecurate_spark", start_date=datetime(2026, 1, 1), schedule="@daily", catchup=False) as spark_dag:
    SparkSubmitOperator(
        task_id="curate",
        conn_id="spark_default",
        application="/opt/lakecurate/jobs/curate.py",  # `lakecurate where curate` on the submitting host
        application_args=["curate", *OVERRIDES],
        conf={"spark.pyspark.python": "/opt/lakecurate/venv/bin/python"},
        packages="io.delta:delta-spark_2.13:4.0.0",
    )

with DAG("lakecurate_databricks", start_date=datetime(2026, 1, 1), schedule="@daily", catchup=False) as databricks_dag:
    DatabricksSubmitRunOperator(
        task_id="curate",
        databricks_conn_id="databricks_default",
        json={
            "run_name": "lakecurate-curate",
            "tasks": [{
                "task_key": "curate",
                "new_cluster": {"spark_version": "16.4.x-scala2.12", "node_type_id": "m6i.4xlarge", "num_workers": 8},
                "libraries": [{"whl": "/Volumes/main/curation/wheels/lakecurate-0.2.0-py3-none-any.whl"}],
                "python_wheel_task": {
                    "package_name": "lakecurate",
                    "entry_point": "lakecurate",
                    "parameters": ["run", "curate", *OVERRIDES, "lake.backend=native", "spark.master=null"],
                },
            }],
        },
    )
