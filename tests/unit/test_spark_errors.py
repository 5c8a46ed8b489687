"""Spark's failures as one line that says what to do: a JVM out of memory names the setting to raise,
also when what reaches Python is only the failure of a driver that already died of it."""

from __future__ import annotations

import os

import pytest

from lakecurate.errors import LakecurateError
from lakecurate.spark import session
from lakecurate.spark.errors import as_lakecurate_error


class CapturedError(Exception):
    """Stands for a PySpark/Py4J exception (lakecurate tells them by their module)."""


CapturedError.__module__ = "pyspark.errors.exceptions.captured"

OOM = """An error occurred while calling o123.collectToPython.
: java.lang.OutOfMemoryError: Java heap space
\tat java.base/java.util.Arrays.copyOf(Arrays.java:3537)
\tat org.apache.spark.sql.execution.SparkPlan.executeCollect(SparkPlan.scala:450)"""
DEAD = """An error occurred while calling o130.collectToPython.
: java.lang.NullPointerException: Cannot invoke "org.apache.spark.rpc.RpcEndpointRef.askSync(Object, scala.reflect.ClassTag)" because the return value of "org.apache.spark.scheduler.local.LocalSchedulerBackend.driverEndpoint()" is null
\tat org.apache.spark.scheduler.local.LocalSchedulerBackend.reviveOffers(LocalSchedulerBackend.scala:161)"""


@pytest.mark.parametrize("text, says", [(OOM, "ran out of memory (java.lang.OutOfMemoryError)"),
                                         (DEAD, "the Spark driver stopped in the middle of the job")])
def test_a_jvm_out_of_memory_is_one_line_naming_the_setting(monkeypatch, text, says):
    monkeypatch.setattr(session, "STARTED_WITH", {"spark.driver.memory": "3g"})
    err = as_lakecurate_error(CapturedError(text), "stage dedup")
    assert isinstance(err, LakecurateError)
    message = str(err)
    assert "\n" not in message and message.startswith("stage dedup: ") and says in message
    assert "raise spark.conf.spark.driver.memory" in message and "now 3g" in message


def test_a_local_sessions_heap_is_sized_from_the_machine():
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    got = int(session.local_driver_memory().rstrip("g"))
    assert got == min(32, max(1, int(total * session.LOCAL_HEAP_SHARE) >> 30))
    assert got > 1 or total < (4 << 30), "a machine of several GiB gives the driver more than Spark's 1g default"
