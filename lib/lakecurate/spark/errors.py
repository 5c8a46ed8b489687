"""Spark's failures as one-line lakecurate errors that say what failed, where, and why.

A failed Spark job surfaces in Python as a Py4J or PySpark exception whose text is hundreds of
lines of JVM stack. :func:`as_lakecurate_error` keeps what a person needs: the file it could not
read, the disk that is full, the error a lakecurate function raised inside a Python worker. The
full text stays on the exception chain (``-v`` prints it; the ``runs`` table keeps it).
"""

from __future__ import annotations

import re
from typing import Optional

from lakecurate import errors

_READ_FILE = re.compile(r"[Ee]ncountered error while reading file (\S+?)\.?\s")
_CAUSE = re.compile(r"Caused by: [\w.$]+(?:Exception|Error): (.+)")
_ERROR_CLASS = re.compile(r"\[([A-Z][A-Z0-9_.]+)\] (.+?)(?:\s+SQLSTATE: \w+)?\.?$", re.M)
_WORKER_ERROR = re.compile(r"^(lakecurate\.errors\.(\w+)): (.+)$", re.M)
_DISK = (
    ("No space left on device", "no space left on the device"),
    ("Disk quota exceeded", "disk quota exceeded"),
    ("Read-only file system", "read-only file system"),
    ("Permission denied", "permission denied"),
)
#: the driver JVM ran out of memory (said outright, or by what fails once it has died of it)
_OUT_OF_MEMORY = ("java.lang.OutOfMemoryError", "Java heap space", "GC overhead limit exceeded")
_DRIVER_GONE = ("driverEndpoint()", "SparkContext was shut down", "Cannot call methods on a stopped SparkContext",
                "SparkContext has been shutdown")
_PATH = re.compile(r"((?:file|s3a?|gs|abfss?|hdfs|dbfs):/\S+|/(?:[\w.@%+=-]+/)+[\w.@%+=-]*)")


def _setting(key: str) -> str:
    """A Spark setting of the session this process started, as it was asked for (for messages)."""
    from lakecurate.spark import session

    return session.STARTED_WITH.get(key, "Spark's default, 1g")


def is_spark_error(exc: BaseException) -> bool:
    """An exception raised by Spark (a JVM error, a failed job, a Python worker's failure)."""
    return any(c.__module__.split(".")[0] in ("py4j", "pyspark") for c in type(exc).__mro__)


def describe(text: str) -> str:
    """The most specific line of a Spark error's text."""
    causes = _CAUSE.findall(text)
    if causes:
        return causes[-1].strip()
    m = _ERROR_CLASS.search(text)
    if m:
        return f"[{m.group(1)}] {m.group(2).strip()}"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("An error occurred while calling", "\tat "))]
    return lines[0].lstrip(": ") if lines else "unknown Spark error"


def as_lakecurate_error(exc: BaseException, doing: str) -> Optional[errors.LakecurateError]:
    """A one-line lakecurate error for a Spark failure while ``doing`` something; None for others."""
    if isinstance(exc, errors.LakecurateError) or not is_spark_error(exc):
        return None
    text = str(exc)
    worker = _WORKER_ERROR.findall(text)
    if worker:  # a lakecurate error raised in a Python worker: the same class, its own message
        _, name, message = worker[-1]
        cls = getattr(errors, name, errors.LakecurateError)
        return cls(f"{doing}: {message}") if isinstance(cls, type) and issubclass(cls, errors.LakecurateError) else None
    if any(m in text for m in _OUT_OF_MEMORY):
        return errors.LakecurateError(
            f"{doing}: Spark's JVM ran out of memory (java.lang.OutOfMemoryError); raise spark.conf.spark.driver.memory "
            f"(local sessions and the driver; now {_setting('spark.driver.memory')}) or spark.conf.spark.executor.memory on a cluster")
    if any(m in text for m in _DRIVER_GONE):
        return errors.LakecurateError(
            f"{doing}: the Spark driver stopped in the middle of the job, most often because its JVM ran out of memory (look for "
            f"java.lang.OutOfMemoryError above, with -v); raise spark.conf.spark.driver.memory (now {_setting('spark.driver.memory')})")
    for needle, reason in _DISK:
        if needle in text:
            where = next((p for p in _PATH.findall(text[max(0, text.index(needle) - 400) : text.index(needle)]) if "/" in p), None)
            return errors.TableError(f"{doing}: {reason}" + (f" ({where})" if where else ""))
    read = _READ_FILE.search(text)
    if read:
        return errors.InputDataError(f"{doing}: cannot read {read.group(1)}: {describe(text)}")
    return errors.LakecurateError(f"{doing}: Spark failed: {describe(text)}")
