"""Where a lakecurate table keeps its files, and how long unreferenced files are left alone."""

import random
import time
import uuid

RUN_ID = "run_id"
#: where a table's data files live: ``_data/run_id=<id>/<token>/part-*.parquet`` (embedded backend)
DATA_DIR = "_data"
#: ``_data/run_id=<id>/write=<token>/<column>=<value>/part-*.parquet`` for tables with more partition columns
WRITE_DIR = "write"
#: attempts at one commit when concurrent writers keep committing first
COMMIT_ATTEMPTS = 12


def retry_wait(attempt: int) -> float:
    """Seconds to wait before commit attempt ``attempt + 1`` after a conflict: doubling from 50 ms,
    at most 2 s, jittered so racing writers do not meet again (both backends)."""
    return min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())

#: an unreferenced file younger than this may belong to a write still in flight
ORPHAN_AGE_SECONDS = 3600.0


def new_token() -> str:
    """A unique, time-ordered name for one write's files (UTC time first, so age is visible)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:12]
