"""One exception root for everything lakecurate raises on purpose, and one warning root.

Every message names the offending value and where it came from (a config key, a
column, a row id, a path), so a failed scheduled job can be fixed from its log alone.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional


class LakecurateError(Exception):
    """Root of all errors raised deliberately by lakecurate."""


class ConfigError(LakecurateError, ValueError):
    """A configuration key is unknown, missing, of the wrong type or out of range."""


class InputDataError(LakecurateError, ValueError):
    """The input data is unusable: NaN/inf values, wrong dimension, bad or duplicate ids, empty."""


class TableError(LakecurateError):
    """A table cannot be read, written or committed (missing path, schema mismatch, ...)."""


class RunChangedError(TableError):
    """A conditional write found that another writer committed rows of the same run partition after
    the version the write was computed from: nothing was committed; read again and recompute."""


class MissingDependencyError(LakecurateError, ImportError):
    """An optional dependency is needed for the requested feature; the message names the pip install."""


class LakecurateWarning(UserWarning):
    """A result that is valid but not what was asked for; callers and tests can catch it
    (``warnings.simplefilter("error", LakecurateWarning)`` turns every one into an error)."""


class ClusteringWarning(LakecurateWarning):
    """k-means degraded: clusters re-seeded or left empty, fewer distinct centroids than k,
    resampling stopped early."""


class SamplingWarning(LakecurateWarning):
    """Sampling could not balance as asked: the target takes the whole pool, or rows are drawn twice."""


def warn_degraded(message: str, category: type = LakecurateWarning, *, logger: Optional[logging.Logger] = None) -> None:
    """Log ``message`` as a warning and raise it as a ``category`` warning (both: a scheduled job's
    log shows it, a caller can catch it)."""
    (logger or logging.getLogger("lakecurate")).warning(message)
    warnings.warn(message, category, stacklevel=3)


class StaleTreeWarning(LakecurateWarning):
    """New rows fall outside the tree they were assigned to more often than ``assign.refit_threshold``
    allows: a full re-cluster is due."""

