"""One exception root for everything lakecurate raises on purpose.

Every message names the offending value and where it came from (a config key, a
column, a row id, a path), so a failed scheduled job can be fixed from its log alone.
"""

from __future__ import annotations


class LakecurateError(Exception):
    """Root of all errors raised deliberately by lakecurate."""


class ConfigError(LakecurateError, ValueError):
    """A configuration key is unknown, missing, of the wrong type or out of range."""


class InputDataError(LakecurateError, ValueError):
    """The input data is unusable: NaN/inf values, wrong dimension, bad or duplicate ids, empty."""


class TableError(LakecurateError):
    """A table cannot be read, written or committed (missing path, schema mismatch, ...)."""


class MissingDependencyError(LakecurateError, ImportError):
    """An optional dependency is needed for the requested feature; the message names the pip install."""
