"""Where tables and files live: local paths, URIs and Databricks mounts as Spark, pyarrow and
delta-rs each take them; atomic small-file writes; one-line errors for what a disk refuses."""

from __future__ import annotations

import errno
import os
import posixpath
import re
import uuid
from typing import Optional

import pyarrow.fs as pafs

from lakecurate.errors import TableError
from lakecurate.validation import PYARROW_STORAGE_OPTIONS, STORAGE_SCHEMES


_DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system"}


def disk_error(exc: OSError, doing: str) -> TableError:
    """A one-line TableError for an OSError while ``doing`` something: what, where, and why."""
    reason = _DISK_ERRNOS.get(exc.errno or -1, exc.strerror or first_line(exc))
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return TableError(f"{doing} failed: {reason}{where}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_uri(path: str) -> bool:
    return "://" in path


def dbfs_local(path: str) -> str:
    """``dbfs:/Volumes/x`` -> ``/Volumes/x``, ``dbfs:/x`` -> ``/dbfs/x``: Databricks' FUSE mounts,
    which Spark, pyarrow and delta-rs all read; refused where the mount does not exist (it would
    otherwise become a local folder named ``dbfs:``)."""
    if not path.startswith("dbfs:"):
        return path
    rest = path[len("dbfs:"):].lstrip("/")
    local = "/" + rest if rest.startswith("Volumes/") else "/dbfs/" + rest
    top = "/" + local.strip("/").split("/")[0]
    if not os.path.isdir(top):
        raise TableError(f"{path!r}: dbfs: paths are read through Databricks' {top} mount, which this machine does not have; "
                         "on Databricks give /Volumes/... paths, elsewhere an s3://, abfss:// or gs:// URI")
    return local


def absolute(path: str) -> str:
    path = dbfs_local(path)
    return path if is_uri(path) else os.path.abspath(path)


def filesystem(path: str, options: Optional[dict] = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``path`` (with ``lake.storage_options`` for object stores) and the
    path inside it."""
    path = dbfs_local(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    kind = STORAGE_SCHEMES.get(scheme.lower())
    if not options or kind not in PYARROW_STORAGE_OPTIONS:
        return pafs.FileSystem.from_uri(f"s3://{rest}" if kind == "s3" else path)
    lower = {k.lower(): v for k, v in options.items()}
    kwargs = {arg: str(lower[k]) for k, arg in PYARROW_STORAGE_OPTIONS[kind].items() if k in lower}
    if kind == "s3":
        if str(lower.get("aws_allow_http", "")).lower() == "true":
            kwargs["scheme"] = "http"
        if "endpoint_override" in kwargs:
            kwargs["endpoint_override"] = kwargs["endpoint_override"].split("://", 1)[-1]
        return pafs.S3FileSystem(**kwargs), rest
    container, _, inner = rest.partition("/")
    account = container.split("@", 1)
    return pafs.AzureFileSystem(**kwargs), (account[0] + "/" + inner if len(account) == 2 else rest)


def hadoop_uri(path: str) -> str:
    """The path as Spark (Hadoop) takes it: ``file://`` plus the path as it is for local paths
    (Hadoop reads every character literally: a ``%`` is a ``%``), URIs unchanged."""
    path = dbfs_local(path)
    return path if is_uri(path) else "file://" + os.path.abspath(path)


#: ``%`` and two hex digits: delta-rs (1.6) decodes such a sequence in a table's location once more
#: than it encodes it, so a table under a folder named ``a%20b`` is written but cannot be read back
_ESCAPE_LIKE = re.compile(r"%[0-9A-Fa-f]{2}")


def delta_rs_unreadable(location: str) -> Optional[str]:
    """Why delta-rs cannot read a table at ``location`` back (:data:`_ESCAPE_LIKE`), or None."""
    bad = _ESCAPE_LIKE.search(location)
    if bad is None:
        return None
    return (f"the embedded Delta backend (delta-rs) cannot read a table whose location holds {bad.group(0)!r} (a '%' and two "
            "hex digits: it decodes it as an escaped character); rename the folder, or use lake.backend=native on a Spark with Delta")


def rs_uri(uri: str) -> str:
    """A :func:`hadoop_uri` as delta-rs takes it: a local table as its plain path (in a ``file://`` URL a
    ``#`` would start a fragment), an object-store URI as it is; TableError for a location delta-rs
    cannot read back (:func:`delta_rs_unreadable`), naming it, before anything is written there.
    Spaces, ``#``, ``=``, a lone ``%`` and non-ASCII characters pass as they are."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    why = delta_rs_unreadable(uri)
    if why:
        raise TableError(f"{uri!r}: {why}")
    return uri


def put_bytes(uri: str, data: bytes, options: Optional[dict] = None) -> None:
    """Write a file (local path or URI) atomically: a temporary name, then a rename."""
    fs, path = filesystem(uri, options)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        fs.create_dir(posixpath.dirname(path), recursive=True)
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except OSError as exc:
        quietly(fs.delete_file, tmp)
        raise disk_error(exc, f"writing {path!r}") from exc


def get_bytes(uri: str, options: Optional[dict] = None) -> bytes:
    fs, path = filesystem(uri, options)
    with fs.open_input_file(path) as f:
        return f.read()


def remove_path(uri: str, options: Optional[dict] = None) -> None:
    """Delete a file or a folder (and everything under it), if it exists."""
    fs, path = filesystem(uri, options)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:
        pass
