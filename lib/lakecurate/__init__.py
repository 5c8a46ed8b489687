"""lakecurate: large, diverse and balanced training sets from raw data pools, on Spark and Delta.

The pure API (numpy + faiss, no Spark) is importable from here; the Spark pipeline lives in
:mod:`lakecurate.pipeline` and the command line in :mod:`lakecurate.cli`.
"""

from lakecurate._blas import tune_openblas_env

tune_openblas_env()  # before anything imports faiss

from lakecurate.errors import ConfigError, InputDataError, LakecurateError, MissingDependencyError, TableError

__version__ = "0.2.0"

#: the pure API, imported on first use: a Spark task that only reads files or writes rows does not
#: pay for faiss, scipy and the estimators (0.8 s in every fresh Python worker)
_LAZY = {"deduplicate": "lakecurate.core.dedup", "HierarchicalKMeans": "lakecurate.estimator",
         "balanced_sample": "lakecurate.estimator", "target_coreset": "lakecurate.estimator"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lakecurate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "HierarchicalKMeans",
    "balanced_sample",
    "deduplicate",
    "target_coreset",
    "LakecurateError",
    "ConfigError",
    "InputDataError",
    "TableError",
    "MissingDependencyError",
]
