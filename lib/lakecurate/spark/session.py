"""Building (or reusing) the SparkSession with the settings lakecurate relies on."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional

log = logging.getLogger(__name__)

#: Settings every lakecurate session needs, whatever the cluster:
#: - Arrow for mapInArrow/pandas UDF transfer;
#: - microsecond timestamps in Parquet (Spark's default INT96 breaks delta-rs readers);
#: - UTC, so timings in the runs table mean the same everywhere.
REQUIRED_CONF: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.session.timeZone": "UTC",
}

#: Defaults for local mode only (a laptop, CI): small shuffles and a driver heap that fits k x d.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "4g",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
}


#: Spark's logging in local sessions: failed tasks are reported once, by lakecurate (see the file)
LOCAL_LOG4J = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2-local.properties")


def get_spark(master: Optional[str] = "local[*]", app_name: str = "lakecurate", conf: Optional[dict[str, Any]] = None):
    """The active SparkSession, or a new one with lakecurate's settings.

    Under ``spark-submit`` (master None) the cluster's own settings win except the required ones.
    Workers must run this very interpreter in local mode, or they import another Python.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        for key, value in {**REQUIRED_CONF, **{k: str(v) for k, v in (conf or {}).items()}}.items():
            try:
                active.conf.set(key, value)
            except Exception:  # static settings cannot change on a running session
                log.debug("cannot set %s on the active session", key)
        return active

    builder = SparkSession.builder.appName(app_name)
    settings: dict[str, str] = {}
    if master:
        builder = builder.master(master)
        if master.startswith("local"):
            settings.update(LOCAL_DEFAULTS)
            if os.environ.get("LAKECURATE_SPARK_LOG", "quiet") != "full" and "spark.driver.extraJavaOptions" not in (conf or {}):
                settings["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{LOCAL_LOG4J}"
    settings.update(REQUIRED_CONF)
    settings.update({k: str(v) for k, v in (conf or {}).items()})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s session %s (master=%s)", spark.version, app_name, spark.sparkContext.master)
    return spark


def has_native_delta(spark) -> bool:
    """True when the session can read and write ``format("delta")`` natively (Databricks, EMR, --packages)."""
    try:
        jvm = spark.sparkContext._jvm  # classic Spark; Spark Connect (e.g. serverless) has no JVM handle
    except Exception:
        return True
    try:
        jvm.java.lang.Thread.currentThread().getContextClassLoader().loadClass(
            "org.apache.spark.sql.delta.sources.DeltaDataSource"
        )
        return True
    except Exception:
        return False
