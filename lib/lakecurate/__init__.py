"""lakecurate: large, diverse and balanced training sets from raw data pools, on Spark and Delta.

The pure API (numpy + faiss, no Spark) is importable from here; the Spark pipeline lives in
:mod:`lakecurate.pipeline` and the command line in :mod:`lakecurate.cli`.
"""

from lakecurate._blas import tune_openblas_env

tune_openblas_env()  # before anything imports faiss

from lakecurate.errors import ConfigError, InputDataError, LakecurateError, MissingDependencyError, TableError
from lakecurate.core.dedup import deduplicate
from lakecurate.estimator import HierarchicalKMeans, balanced_sample, target_coreset

__version__ = "0.2.0"

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
