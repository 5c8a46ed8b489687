"""What a Python task on an executor sets up before it computes: its own cores and its own GPU.

Spark runs ``spark.task.cpus`` cores per task, often several tasks per executor, and gives a task
a GPU with ``spark.task.resource.gpu.amount``. faiss and torch would each use every core of the
machine in every task; here they get the task's share, and the GPU Spark assigned, so the same
code runs on a laptop, a CPU cluster and a GPU cluster.
"""

from __future__ import annotations

from typing import Any, Callable, Optional


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


def ship_to_tasks(spark, payload: Any) -> tuple[Callable[[], Any], Callable[[], None]]:
    """Make a driver-side ``payload`` (centroids, small lookup arrays) readable in every task.

    Returns ``(get, free)``: ``get()`` inside a task returns the payload, ``free()`` on the driver
    releases it once no job needs it. Every payload lakecurate sends to executors goes through here.
    """
    bc = spark.sparkContext.broadcast(payload)
    return (lambda: bc.value), bc.unpersist
