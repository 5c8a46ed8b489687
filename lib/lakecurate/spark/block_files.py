"""Block files: each executor's own copy of the blocks it caches, as ``.npy`` files.

While the blocks are built (:class:`lakecurate.spark.blocks.EmbeddingBlocks`), every task also
writes its blocks' row keys and float32 vectors into its executor's Spark work directory. A pass
over the blocks then memory-maps them instead of receiving the vectors from the JVM over Arrow:
the N x d stream per pass is gone and the page cache serves the bytes. The files are a speed-up
only: a task that cannot write them (full or read-only disk) logs it and carries on, and a pass
that finds a partition's files missing runs that partition on the streamed blocks.

A job's own ``release`` deletes its files on every executor, and Spark removes its work
directories when an application ends. A job killed with ``kill -9`` (or an executor lost) leaves
its files behind: every cache folder records the executor JVM that owns it (``owner.json``), and
the first Python worker of a later job on the same host removes the folders whose JVM is gone.

Everything here runs inside Python tasks on the executors (or on the driver in local mode).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
import zipfile
from typing import BinaryIO, Callable, Optional

import numpy as np

log = logging.getLogger(__name__)

FOLDER = "lakecurate-blocks"


def block_folder(cache_id: str) -> str:
    """This process's folder for a cache's block files: under Spark's per-application work dir
    (``SparkFiles``: the executor's work directory, removed with the application); where the
    worker has no ``SparkFiles`` (Sail runs Python UDFs with the Connect client's ``pyspark``),
    under the machine's temporary folder (the cache's own clean-up removes them)."""
    try:
        from pyspark import SparkFiles

        root = SparkFiles.getRootDirectory()
    except ImportError:
        import tempfile

        root = tempfile.gettempdir()
    return os.path.join(root, FOLDER, cache_id)


def block_paths(folder: str, part: int, seq: int) -> tuple[str, str]:
    """(keys file, vectors file) of block ``seq`` of partition ``part``."""
    stem = os.path.join(folder, f"p{part:05d}-s{seq:05d}")
    return stem + "-keys.npy", stem + "-vectors.npy"


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into a temporary name, then rename: a retried or speculative task never leaves a
    half-written file behind."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_npy_atomically(path: str, arr: np.ndarray) -> None:
    """One ``.npy`` file, written atomically (:func:`write_atomically`)."""
    write_atomically(path, lambda f: np.save(f, arr, allow_pickle=False))


_OWNER = "owner.json"
_swept: set[str] = set()  # caches this Python worker has already swept for (once per job's cache)


def _executor_jvm_pid() -> Optional[int]:
    """The pid of the JVM this Python worker serves (its nearest ``java`` ancestor), Linux only."""
    pid = os.getppid()
    for _ in range(4):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "java":
                    return pid
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_dead_caches() -> int:
    """Delete the block files of jobs whose executor JVM on this host is gone; returns how many
    cache folders went. Folders without an owner record are left alone."""
    from pyspark import SparkFiles

    local_dirs = os.path.dirname(os.path.dirname(SparkFiles.getRootDirectory()))
    host = socket.gethostname()
    removed = 0
    for owner in glob.glob(os.path.join(local_dirs, "*", "*", FOLDER, "*", _OWNER)):
        try:
            with open(owner) as f:
                meta = json.load(f)
            if meta.get("host") != host or is_alive(int(meta["jvm_pid"])):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        shutil.rmtree(os.path.dirname(owner), ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed the block files of %d earlier job(s) whose executor is gone", removed)
    return removed


def _claim(folder: str) -> None:
    """Create the cache folder and record its owner; for each new cache, first sweep the dead."""
    if folder not in _swept:
        _swept.add(folder)
        try:
            remove_dead_caches()
        except Exception as e:  # cleaning up after others must never fail this job
            log.warning("could not look for block files of earlier jobs: %s", e)
    os.makedirs(folder, exist_ok=True)
    owner = os.path.join(folder, _OWNER)
    pid = _executor_jvm_pid()
    if pid is not None and not os.path.exists(owner):
        tmp = f"{owner}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            json.dump({"host": socket.gethostname(), "jvm_pid": pid}, f)
        os.replace(tmp, owner)


def write_block_files(cache_id: str, part: int, seq: int, keys: np.ndarray, x: np.ndarray) -> None:
    """Best effort: a disk that cannot take the files must not fail the job; the partition's
    passes then run on the streamed blocks."""
    try:
        folder = block_folder(cache_id)
        _claim(folder)
        kp, vp = block_paths(folder, part, seq)
        save_npy_atomically(vp, np.ascontiguousarray(x, dtype=np.float32))
        save_npy_atomically(kp, np.ascontiguousarray(keys, dtype=np.int64))
    except OSError as e:
        log.warning("block files for partition %d not written (%s): its passes will stream", part, e)


def open_block_files(cache_id: str, metas: list[tuple[int, int, int]]) -> Optional[list[tuple[int, int, np.ndarray, np.ndarray]]]:
    """Memory-mapped ``(part, seq, keys, vectors)`` for ``(part, seq, n)`` entries; None when any
    file is missing or short (the caller then streams the partition)."""
    folder = block_folder(cache_id)
    out = []
    for part, seq, n in metas:
        if not n:  # a batch with no valid rows writes no files
            continue
        kp, vp = block_paths(folder, part, seq)
        try:
            keys = np.load(kp, mmap_mode="r")
            x = np.load(vp, mmap_mode="r")
        except (FileNotFoundError, ValueError, OSError):
            return None
        if keys.shape[0] != n or x.shape[0] != n:
            return None
        out.append((part, seq, keys, x))
    return out


def delete_block_files(cache_id: str) -> None:
    """Remove this process's files of one cache (each executor runs this for its own)."""
    shutil.rmtree(block_folder(cache_id), ignore_errors=True)


def bounds_path(cache_id: str, part: int, seq: int) -> str:
    """The file of one block's pruning bounds (:class:`lakecurate.core.pruning.Bounds`), beside its vectors."""
    return block_paths(block_folder(cache_id), part, seq)[0][: -len("-keys.npy")] + "-bounds.npz"


def keys_digest(keys: np.ndarray) -> str:
    """Names a block's rows in order: its bounds are kept for exactly these rows (computed once per
    block and pass, for :func:`load_bounds` and :func:`save_bounds`)."""
    return hashlib.blake2b(np.ascontiguousarray(keys, dtype=np.int64).tobytes(), digest_size=16).hexdigest()


def load_bounds(cache_id: str, part: int, seq: int, keys_id: str, fingerprint: Optional[str]):
    """The block's bounds if this executor holds them for the centroids ``fingerprint`` and for
    exactly the rows ``keys_id`` names (:func:`keys_digest`), else None (the pass then computes
    every centroid for the block: slower, same result)."""
    from lakecurate.core.pruning import Bounds

    if fingerprint is None:
        return None
    try:
        with np.load(bounds_path(cache_id, part, seq), allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint or str(z["keys"]) != keys_id:
                return None
            return Bounds(fingerprint, z["labels"], z["lower"])
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile):  # missing, foreign or damaged
        return None


def save_bounds(cache_id: str, part: int, seq: int, keys_id: str, bounds) -> None:
    """Best effort, atomically (a retried task never leaves half a file); only where the block's
    files are (a streamed partition keeps none)."""
    path = bounds_path(cache_id, part, seq)
    if not os.path.isdir(os.path.dirname(path)):
        return
    try:
        write_atomically(path, lambda f: np.savez(f, fingerprint=np.array(bounds.fingerprint), keys=np.array(keys_id),
                                                  labels=bounds.labels, lower=bounds.lower))
    except OSError as e:
        log.warning("pruning bounds of block %d/%d not kept (%s): its next pass computes every centroid", part, seq, e)
