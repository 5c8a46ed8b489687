"""Where an encoder runs: one function decides, for the laptop and the GPU cluster alike.

The CPU and GPU paths are the same code with a different ``torch.device``; nothing else in the
embed package branches on the hardware except half precision, which only pays (and is only
numerically safe enough) on CUDA.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Optional

from lakecurate.embed._deps import require
from lakecurate.errors import ConfigError
from lakecurate.validation import check_choice, check_int

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask when the OS has one (containers, YARN), else cpu_count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def select_device(requested: str = "auto", *, num_threads: Optional[int] = None, gpu_index: Optional[int] = None) -> "torch.device":
    """Pick the torch device for an encoder and size the CPU thread pool.

    CUDA when ``requested`` is ``auto`` or ``cuda`` and torch sees a GPU; ``gpu_index`` is the GPU
    Spark assigned to the task (``TaskContext.resources()['gpu'].addresses[0]``), so two tasks on a
    multi-GPU executor do not share one card. Otherwise CPU, with ``torch.set_num_threads`` set to
    ``num_threads`` (the task's cores; default every CPU the process may use): torch's own default
    counts the whole machine and oversubscribes an executor that runs several tasks.
    """
    torch = require("torch", "the embed stage")
    check_choice(requested, ("auto", "cpu", "cuda"), "encoder.device")
    if num_threads is not None:
        check_int(num_threads, "num_threads", minimum=1)
    if requested != "cpu" and torch.cuda.is_available():
        index = torch.cuda.current_device() if gpu_index is None else int(gpu_index)
        if not 0 <= index < torch.cuda.device_count():
            raise ConfigError(f"gpu_index={gpu_index!r} is not a visible GPU (torch sees {torch.cuda.device_count()})")
        return torch.device("cuda", index)
    if requested == "cuda":
        # a CPU-only executor in a mixed pool should still finish the job, loudly
        log.warning("encoder.device='cuda' but torch sees no GPU here; encoding on CPU")
    threads = num_threads if num_threads is not None else available_cpus()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.device("cpu")


def use_half_precision(requested: bool, device: "torch.device") -> bool:
    """float16 only on CUDA: on CPU it is slower than float32 and loses precision for nothing."""
    if requested and device.type != "cuda":
        log.info("encoder.half_precision=True ignored on %s: half precision is used on CUDA only", device)
        return False
    return requested
