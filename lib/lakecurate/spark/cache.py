"""Where a DataFrame that is read more than once lives between its reads.

``spark.block_cache`` chooses (for the embedding blocks and the stages' intermediate results):

* ``local_files``: Spark's cache, and k-means passes memory-map block files the executors wrote
  next to their cached partitions (the fastest; classic sessions and Connect servers that cache);
* ``spark``: Spark's cache only (passes stream the cached blocks from the JVM);
* ``lake``: written once as Parquet into a scratch folder of the lake and read back on every
  pass: no ``cache()`` at all, for sessions that cannot cache (Databricks serverless);
* ``auto`` (default): ``local_files`` when the session can cache, else ``lake``; said in the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from lakecurate.lake import Lake, Scratch

log = logging.getLogger(__name__)

_CAN_CACHE: dict[int, bool] = {}


def can_cache(spark) -> bool:
    """Whether this session can ``persist()`` a DataFrame (probed once per session)."""
    key = id(spark)
    if key not in _CAN_CACHE:
        from pyspark import StorageLevel

        try:
            probe = spark.range(1).persist(StorageLevel.MEMORY_AND_DISK_DESER)
            probe.count()
            probe.unpersist()
            _CAN_CACHE[key] = True
        except Exception as exc:  # e.g. serverless: NOT_SUPPORTED_WITH_SERVERLESS
            log.info("this Spark session cannot cache DataFrames (%s)", str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__)
            _CAN_CACHE[key] = False
    return _CAN_CACHE[key]


def resolve(spark, mode: str) -> str:
    """The concrete mode for ``mode`` on this session (``auto`` decided here)."""
    if mode != "auto":
        return mode
    chosen = "local_files" if can_cache(spark) else "lake"
    if chosen == "lake":
        log.info("spark.block_cache=auto: the session cannot cache, so data read more than once is staged in the lake and re-read")
    return chosen


@dataclass
class Kept:
    """A DataFrame kept for several reads, and how to let it go."""

    frame: object
    how: str  # "spark" or "lake"
    scratch: Optional["Scratch"] = None
    _unpersist: Optional[Callable[[], object]] = None

    def touch(self) -> None:
        if self.scratch is not None:
            self.scratch.touch()

    def release(self) -> None:
        if self._unpersist is not None:
            self._unpersist()
            self._unpersist = None
        if self.scratch is not None:
            self.scratch.remove()
            self.scratch = None


def keep(df, *, spark, lake: Optional["Lake"], mode: str, what: str) -> Kept:
    """``df`` kept for several reads: persisted, or staged in the lake (``mode`` resolved)."""
    mode = resolve(spark, mode)
    if mode != "lake":
        from pyspark import StorageLevel

        # deserialized: PySpark's MEMORY_AND_DISK stores each cached partition serialized, so every
        # pass, even one that selects only the blocks' (part, seq, n) and reads the vectors from the
        # block files, deserialized the whole partition: an empty job over 1M x 384 cached blocks took
        # 0.73 s, 0.33 s deserialized (bench/assign_profile.py --spark-n 1000000, bench/RESULTS.md runs L-P)
        frame = df.persist(StorageLevel.MEMORY_AND_DISK_DESER)
        return Kept(frame, "spark", _unpersist=frame.unpersist)
    if lake is None:
        from lakecurate.errors import ConfigError

        raise ConfigError(f"spark.block_cache='lake' needs a lake to stage {what} in")
    frame, scratch = lake.stage_frame(df, what)
    log.info("%s staged in the lake (%s) and re-read from there", what, scratch.path)
    return Kept(frame, "lake", scratch=scratch)
