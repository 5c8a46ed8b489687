"""Building (or reusing) the SparkSession with the settings lakecurate relies on.

Both kinds of session work: a classic one (``local[*]``, ``spark-submit`` on YARN/Kubernetes,
a Databricks job cluster) and a Spark Connect one (``SPARK_REMOTE`` or ``spark.remote``:
Databricks serverless and shared clusters, Databricks Connect, a Spark 4 Connect server). The
code after this module uses only the DataFrame API, so it never needs to know which it got;
what differs (can the session cache? does it have Delta?) is probed here, once.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
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

#: Defaults for local mode only (a laptop, CI): small shuffles; the driver heap is sized from the
#: machine (:func:`local_driver_memory`) unless the config says it.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
}


#: Spark's logging in local sessions: failed tasks are reported once, by lakecurate (see the file)
LOCAL_LOG4J = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2-local.properties")
#: the settings the session this process started was given (error messages name them)
STARTED_WITH: dict[str, str] = {}
#: a local session's driver (which is also its only executor) gets this share of the machine's
#: memory as heap, at least 1 GiB and at most 32 GiB; the Python workers live in the rest
LOCAL_HEAP_SHARE = 0.5


def local_driver_memory() -> str:
    """The heap of a local session's JVM when the config sets none: :data:`LOCAL_HEAP_SHARE` of
    the machine's memory (Spark's own default, 1g, runs out on a laptop-size de-duplication)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "4g"
    gib = int(total * LOCAL_HEAP_SHARE) >> 30
    return f"{min(32, max(1, gib))}g"


def is_connect(spark) -> bool:
    """True for a Spark Connect session (no JVM, no SparkContext on this side)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def get_spark(master: Optional[str] = "local[*]", app_name: str = "lakecurate", conf: Optional[dict[str, Any]] = None,
              remote: Optional[str] = None):
    """The active SparkSession, or a new one with lakecurate's settings.

    ``remote`` (else ``$SPARK_REMOTE``) makes a Spark Connect session: ``sc://host:port/;token=...``
    for a server, ``local[n]`` for a Connect server started here (tests, laptops). Otherwise a
    classic session on ``master``; under ``spark-submit`` (master None) the cluster's own settings
    win except the required ones. Workers must run this very interpreter in local mode, or they
    import another Python.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        from lakecurate.errors import MissingDependencyError

        raise MissingDependencyError(
            "lakecurate's Spark jobs need pyspark: pip install 'lakecurate[spark]' (or run them where Spark is installed, "
            "e.g. with spark-submit or on a Databricks cluster)"
        ) from None

    remote = remote or os.environ.get("SPARK_REMOTE") or None
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
    # no master and no spark-submit around this process (which would have started the JVM and set
    # PYSPARK_GATEWAY_PORT): pyspark starts a local[*] JVM itself, a local session all the same
    launched = "PYSPARK_GATEWAY_PORT" in os.environ
    local = remote.startswith("local") if remote else bool(master.startswith("local") if master else not launched)
    if remote:
        _require_connect_client(remote)
        builder = builder.remote(remote)
    elif master:
        builder = builder.master(master)
    if local:
        settings.update(LOCAL_DEFAULTS)
        settings["spark.driver.memory"] = local_driver_memory()
        if os.environ.get("LAKECURATE_SPARK_LOG", "quiet") != "full" and "spark.driver.extraJavaOptions" not in (conf or {}):
            settings["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{LOCAL_LOG4J}"
    settings.update(REQUIRED_CONF)
    settings.update({k: str(v) for k, v in (conf or {}).items()})
    for key, value in settings.items():
        builder = builder.config(key, value)
    STARTED_WITH.clear()
    STARTED_WITH.update(settings)
    with warnings.catch_warnings():
        if remote and local:  # pyspark starts the local server with these; its client then also
            # tries each as a runtime setting and warns for the static ones (driver memory, ...)
            warnings.filterwarnings("ignore", message="Failed to set", category=UserWarning)
        if remote and local and not port_is_free(CONNECT_PORT):
            spark = _local_connect_on_a_free_port(remote, app_name, settings)
        else:
            spark = builder.getOrCreate()
    if is_connect(spark):
        log.info("Spark %s Connect session %s (remote=%s)", spark.version, app_name, _redact(remote or "default"))
    else:
        spark.sparkContext.setLogLevel("WARN")  # classic only: Connect sessions log on the server
        log.info("Spark %s session %s (master=%s)", spark.version, app_name, spark.conf.get("spark.master", master))
    return spark


#: the port pyspark's local Spark Connect server binds (and its client dials) by default
CONNECT_PORT = 15002


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _local_connect_on_a_free_port(remote: str, app_name: str, settings: dict):
    """A local Connect server (``spark.remote=local[n]``) when another process holds the default
    port: pyspark would fail to bind it (a raw Py4J BindException) and its client would dial the
    other process's server. The server is started as pyspark starts it, on a free port, and the
    client dials that port (the server's token reaches the client through the environment, as in
    pyspark's own local mode)."""
    import socket

    from pyspark.sql.connect.session import SparkSession as RemoteSparkSession

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = {**settings, "spark.app.name": app_name, "spark.connect.grpc.binding.port": str(port)}
    os.environ["SPARK_LOCAL_REMOTE"] = "1"  # as pyspark does: stopping the session stops this server
    RemoteSparkSession._start_connect_server(remote, opts)  # keeps in opts only the runtime settings
    log.info("port %d is taken (another local Spark Connect server?): this one listens on port %d", CONNECT_PORT, port)
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    return RemoteSparkSession.builder.config(map={**opts, "spark.remote": f"sc://localhost:{port}"}).getOrCreate()


def _require_connect_client(remote: str) -> None:
    try:
        import grpc  # noqa: F401  (pyspark[connect] brings grpcio, grpcio-status, zstandard)
    except ImportError:
        from lakecurate.errors import ConfigError

        raise ConfigError(f"spark.remote={_redact(remote)!r} needs the Spark Connect client: pip install 'lakecurate[spark]' "
                          "(or pyspark[connect]); on Databricks, databricks-connect") from None


def _redact(remote: str) -> str:
    """A Connect URL without its token (``sc://host/;token=...``), for logs and errors."""
    return ";".join(p for p in remote.split(";") if not p.lower().startswith("token="))


_NO_DELTA = ("DATA_SOURCE_NOT_FOUND", "Failed to find the data source: delta", "ClassNotFoundException")


def has_native_delta(spark) -> bool:
    """True when the session reads and writes ``format("delta")`` natively (Databricks, EMR,
    ``--packages io.delta:...``). Probed through the DataFrame API (works under Spark Connect):
    a missing path is an error from Delta itself; a missing data source is a different error."""
    try:
        spark.read.format("delta").load("file:///nonexistent-lakecurate-delta-probe").schema
    except Exception as exc:
        return not any(marker in str(exc) for marker in _NO_DELTA)
    return True


def default_parallelism(spark) -> int:
    """The session's default parallelism (cores of the cluster, as Spark counts them), without a
    SparkContext: ``spark.default.parallelism`` when it is set, else the partitions Spark gives a
    ``range`` (one tiny job)."""
    value = spark.conf.get("spark.default.parallelism", None)
    if value:
        return max(1, int(value))
    from pyspark.sql import functions as F

    row = spark.range(0, 4096).select(F.spark_partition_id().alias("p")).agg(F.max("p").alias("p")).first()
    return max(1, int(row["p"]) + 1)
