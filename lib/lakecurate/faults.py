"""Named points where the fault-injection suite kills the job (``tests/faults``).

``LAKECURATE_FAULT=<point>[@<nth>]`` makes the process kill its whole process group (the driver,
its JVM and the Python workers: a ``kill -9`` of the job) the ``nth`` time (default: first) it
reaches ``point``. A point may carry a context, matched as ``point:key=value``, e.g.
``commit:files_written:table=clusters``. Unset (always, outside the tests) a point costs one
environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "LAKECURATE_FAULT"
_reached: dict[str, int] = {}


def fault_point(name: str, **context) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition("@")
    here = ":".join([name, *(f"{k}={v}" for k, v in sorted(context.items()))])
    if not (here == target or name == target or here.startswith(target + ":")):
        return
    _reached[target] = _reached.get(target, 0) + 1
    if _reached[target] >= int(nth or 1):
        kill_job()


def kill_job() -> None:
    """SIGKILL the Spark JVM this driver started (PySpark puts it in a process group of its own),
    then this process's group: nothing gets to clean up, as with ``kill -9`` of the job."""
    try:
        from pyspark import SparkContext

        gateway = SparkContext._gateway
        if gateway is not None and getattr(gateway, "proc", None) is not None:
            os.killpg(os.getpgid(gateway.proc.pid), signal.SIGKILL)
    except Exception:  # no JVM of ours (not started yet, or Spark Connect): the group is enough
        pass
    os.killpg(os.getpgrp(), signal.SIGKILL)
