"""What a Python task on an executor sets up before it computes: its own cores and its own GPU.

Spark runs ``spark.task.cpus`` cores per task, often several tasks per executor, and gives a task
a GPU with ``spark.task.resource.gpu.amount``. faiss and torch would each use every core of the
machine in every task; here they get the task's share, and the GPU Spark assigned, so the same
code runs on a laptop, a CPU cluster and a GPU cluster.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import uuid
from typing import Any, Callable, Iterator, Optional

log = logging.getLogger(__name__)


#: the column :func:`with_task_partition` adds: the partition each row's task works on
TASK_PARTITION = "_task_partition"


def with_task_partition(df):
    """``df`` plus :data:`TASK_PARTITION` (``spark_partition_id()``), for a function run by
    ``mapInArrow`` right after it: every engine numbers its tasks' partitions so, while
    ``TaskContext`` exists in classic and Connect Spark's workers only (Sail runs Python UDFs
    without one)."""
    from pyspark.sql import functions as F

    return df.withColumn(TASK_PARTITION, F.spark_partition_id())


def batches_with_partition(batches) -> tuple[Optional[int], Iterator]:
    """(the task's partition, the batches) from ``mapInArrow`` batches of a :func:`with_task_partition`
    frame: reads ahead to the first batch with rows; None (and no batches) for an empty partition."""
    it = iter(batches)
    held = []
    for b in it:
        held.append(b)
        if b.num_rows:
            part = int(b.column(TASK_PARTITION)[0].as_py())
            return part, itertools.chain(held, it)
    return None, iter(())


_TASK_PARTITION: Optional[int] = None


def set_task_partition(part: Optional[int]) -> None:
    """Record the running task's partition (from :func:`batches_with_partition`) for :func:`task_partition`."""
    global _TASK_PARTITION
    _TASK_PARTITION = part


def task_partition() -> int:
    """The partition the running task works on, as its block runner recorded it (every engine)."""
    if _TASK_PARTITION is None:
        raise RuntimeError("task_partition() outside a block runner's task")
    return _TASK_PARTITION


def task_cpus() -> Optional[int]:
    """Cores Spark gave the running task (``spark.task.cpus``); None outside a Spark task."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return max(1, int(ctx.cpus())) if ctx is not None else None


def task_gpu() -> Optional[int]:
    """The GPU Spark assigned to the running task (its first address), or None."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return None
    gpus = ctx.resources().get("gpu")
    return int(gpus.addresses[0]) if gpus is not None and gpus.addresses else None


def configure_faiss(threads: int = 0) -> None:
    """faiss in this task: ``threads`` = 0 gives it the task's cores (Spark already runs one task
    per core, so the two do not fight), -1 leaves faiss's own default (every core), n > 0 exactly n.
    When the process sees a GPU, faiss searches on the one Spark gave the task."""
    import faiss

    from lakecurate.core.assign import faiss_device, use_gpu_device

    if threads == 0:
        faiss.omp_set_num_threads(task_cpus() or 1)
    elif threads > 0:
        faiss.omp_set_num_threads(threads)
    if faiss_device() == "gpu":
        gpu = task_gpu()
        if gpu is not None:
            use_gpu_device(gpu)


#: payloads up to this size travel inside the task's closure (the pickled UDF: classic PySpark
#: broadcasts a large one by itself; Spark Connect sends it in the plan, whose gRPC message is
#: capped at 128 MiB by default); larger ones are written once to the lake and read by each task
CLOSURE_MAX_BYTES = 64 << 20


def ship_to_tasks(payload: Any, files: Optional[Callable[[], "PayloadFiles"]] = None) -> tuple[Callable[[], Any], Callable[[], None]]:
    """Make a driver-side ``payload`` (centroids, small lookup arrays) readable in every task.

    Returns ``(get, free)``: ``get()`` inside a task returns the payload, ``free()`` on the driver
    releases it once no job needs it. A payload of up to :data:`CLOSURE_MAX_BYTES` pickled
    travels in the closure; a larger one is written to ``files()`` (called only then: a folder
    in the lake every executor can read) and read once per Python worker. No SparkContext is involved, so this
    works the same on classic and Spark Connect sessions. Every payload lakecurate sends to
    executors goes through here.
    """
    if payload is None:
        return (lambda: None), _nothing
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) <= CLOSURE_MAX_BYTES:
        del data
        return (lambda: payload), _nothing
    if files is None:
        from lakecurate.errors import ConfigError

        raise ConfigError(
            f"a {len(data) / 2**20:.0f} MiB payload (e.g. k x d centroids) is over the {CLOSURE_MAX_BYTES >> 20} MiB that "
            "travels in a task's closure, and no lake folder was given to ship it through"
        )
    files = files()
    uri = files.put(data)
    log.info("payload of %.0f MiB shipped to tasks through %s", len(data) / 2**20, uri)
    return (lambda: files.get(uri)), (lambda: files.remove(uri))


def _nothing() -> None:
    return None


class PayloadFiles:
    """A folder every executor can read (under the lake's staging area) for payloads too large
    for a closure. Picklable: tasks receive it in their closure and read through pyarrow's
    filesystems (local paths and s3/gs/abfs URIs)."""

    def __init__(self, folder: str, options: Optional[dict] = None):
        self.folder = folder.rstrip("/")
        self.options = options or {}  # lake.storage_options

    def put(self, data: bytes) -> str:
        from lakecurate.lake import put_bytes

        uri = f"{self.folder}/{uuid.uuid4().hex}.pkl"
        put_bytes(uri, data, self.options)
        return uri

    def get(self, uri: str) -> Any:
        cached = _PAYLOADS.get(uri)
        if cached is None:
            from lakecurate.lake import get_bytes

            _PAYLOADS.clear()  # one large payload per worker at a time: the previous pass's is done
            cached = _PAYLOADS[uri] = pickle.loads(get_bytes(uri, self.options))
        return cached

    def remove(self, uri: str) -> None:
        from lakecurate.lake import remove_path

        try:
            remove_path(uri, self.options)
        except OSError as exc:
            log.warning("could not remove payload file %s: %s", uri, exc)


_PAYLOADS: dict[str, Any] = {}
