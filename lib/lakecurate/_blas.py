"""Pick the BLAS kernel for faiss's bundled OpenBLAS before faiss loads.

faiss-cpu wheels bundle an older OpenBLAS that does not recognise recent Intel CPUs and falls
back to its generic "Prescott" kernels: nearest-centroid search ran 3.3x slower on this project's
AVX-512 machines (bench/README.md). When the user has not chosen a core type, name the one the
CPU's flags support. ``OPENBLAS_CORETYPE`` set by the user or the platform always wins, and
``LAKECURATE_BLAS_TUNING=0`` turns this off.
"""

from __future__ import annotations

import os

_SKYLAKEX = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
_HASWELL = {"avx2", "fma"}


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line of /proc/cpuinfo (None where there is none, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name (the platform's processor name where /proc/cpuinfo has none)."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine()


def tune_openblas_env() -> str | None:
    """Set OPENBLAS_CORETYPE from the CPU flags unless already set; returns the value chosen."""
    if "OPENBLAS_CORETYPE" in os.environ or os.environ.get("LAKECURATE_BLAS_TUNING", "1") == "0":
        return None
    flags = cpu_flags()
    core = "SkylakeX" if _SKYLAKEX <= flags else "Haswell" if _HASWELL <= flags else None
    if core:
        os.environ["OPENBLAS_CORETYPE"] = core
    return core
