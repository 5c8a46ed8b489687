"""Size a clustering job before it runs: memory per task and on the driver, FLOPs, passes, time.

``lakecurate plan CONFIG --rows N --dim D [--executors E --cores C --gpus G --task-memory M]``
prints :func:`size_job`'s table; ``lakecurate run`` calls the same :func:`size_job` (with the
input's real rows and width) before its first job and refuses a configuration that cannot run,
naming the level and the fix. The cluster stage resolves ``clustering.n_coarse: auto`` with
:func:`resolve_n_coarse`, from the same memory model.

The model (no Spark import; every constant names where it was measured):

- **A one-step level on the executors.** Every assignment pass ships the k x d float32 centroids
  to each task, which accumulates float64 sums for the clusters it touches:
  ``TASK_BYTES_PER_CENTROID_FLOAT`` x k x d bytes per task, plus its block buffers.
- **A two-step level** (:func:`lakecurate.core.hierarchy.fit_two_step_level`): the coarse passes
  as above with k = n_coarse; then each coarse cluster's rows come together in one task (Arrow,
  pandas and numpy copies: ``GROUP_BYTES_PER_FLOAT`` x rows x d) with its own fine centroids.
  The largest group is assumed ``GROUP_SKEW`` x the mean (long-tailed pools), and the cluster
  stage checks the real largest group before its group pass.
- **The driver** holds every level's centroids (centroids, the checkpoint, the clusters table:
  ``DRIVER_BYTES_PER_CENTROID_FLOAT`` x k x d per level), the partial sums of the level in flight,
  and the inputs of a level it fits in-process.
- **Time** = per assignment pass, rows x (a + b k) / cores, with a and b this machine's measured
  costs of lakecurate's exact kernel (:func:`calibrate`: one thread, at the job's width, at two k),
  + passes x ``PASS_SECONDS`` (a Spark job's fixed cost) + the one-off cache of the input
  (``CACHE_BYTES_PER_CORE_SECOND``) + the sampled k-means++ seedings. GPU rates are the
  documented constant ``GPU_FLOPS`` until measured on a GPU machine. Every pass is counted as a
  full product: the group bounds (:mod:`lakecurate.core.pruning`) make later passes cheaper by an
  amount that depends on the data (0.6-0.8x of a full pass after ~8 iterations in
  bench/RESULTS.md run K), so for long fits the estimate errs high.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from lakecurate.errors import ConfigError
from lakecurate.validation import AUTO, parse_bytes  # noqa: F401  (re-exported: the sizes and the auto choice live here)

#: bytes per centroid float held by one task in a one-step assignment pass: the float32
#: centroids (4, twice while the payload is unpickled) and float64 partial sums of the touched
#: clusters (8, up to three live while batches are added): 4 * 2 + 8 * 3
TASK_BYTES_PER_CENTROID_FLOAT = 32
#: bytes per float of a coarse group's rows while one task fits it (Arrow batch, pandas column
#: of bytes, the joined buffer and the numpy matrix)
GROUP_BYTES_PER_FLOAT = 16
#: the largest coarse cluster is assumed this many times the mean before the run measures it
GROUP_SKEW = 4.0
#: bytes per centroid float on the driver: centroids, the checkpoint, the clusters table (Arrow
#: and Spark's copy)
DRIVER_BYTES_PER_CENTROID_FLOAT = 16
#: a task may use this share of its memory for the assignment (the rest: Python, Arrow, Spark)
USABLE_SHARE = 0.6
#: fixed seconds per Spark pass (job start, one Python task per partition, the collect):
#: 0.42 s per iteration in the scale_n fit of bench/RESULTS.md run F (2 cores, local[*])
PASS_SECONDS = 0.42
#: input bytes (list<float> Parquet) read, validated and cached per core-second: 1M x 384
#: cached in 29.9 s on 2 cores (bench/RESULTS.md run F)
CACHE_BYTES_PER_CORE_SECOND = 1_000_000 * 384 * 4 / 29.9 / 2
#: assignments rows written per core-second (the final labelling pass's output, Delta commit
#: included): 1M rows' assignments + clusters written in 14.0 s on 2 cores (bench/RESULTS.md run F)
WRITE_ROWS_PER_CORE_SECOND = 1_000_000 / 14.0 / 2
#: seconds per Delta commit of a stage's table (a small Spark write + the log entry, embedded
#: Delta; the cluster stage commits clusters, coarse_clusters and assignments, and writes a
#: checkpoint per level): ~5 s over the per-pass model in bench/sizing.py
COMMIT_SECONDS = 1.5
#: the one-off start of a Spark session and its Python workers (importing numpy, faiss, pyarrow):
#: 6-13 s here (DESIGN.md section 5); counted apart from the stages
STARTUP_SECONDS = 10.0
#: ``n_coarse: auto`` shapes a level 2..T with more inputs than this (and no
#: ``clustering.driver_max_rows``) as it shapes a level on the executors, wherever it runs: the
#: threshold that placed levels before the placement followed the plan, so trees stay as they were
SHAPE_INPUTS = 500_000
#: ``n_coarse: auto`` also splits a level on the executors from this many clusters. Measured at
#: 1M x 384 (bench/scale.py --sections large_k, bench/RESULTS.md): one k-means costs ~5.7 ms per
#: cluster per iteration, two steps ~5.6 s + 0.061 s x sqrt(k), for a 10-13% higher objective;
#: from 10,000 clusters two steps are >= 5x faster (8x at 20k, 32x at 100k), below that the
#: objective's cost buys less
AUTO_TWO_STEP_MIN_K = 10_000
#: rows shuffled per core-second in a two-step group pass, as d x 4-byte vectors: bytes/second
SHUFFLE_BYTES_PER_CORE_SECOND = 40e6
#: fp32 FLOP/s of one GPU for faiss's search, until measured (about half an A100's 19.5 TFLOP/s
#: fp32 peak: faiss's brute-force search runs near the GEMM rate); per GPU, not per core
GPU_FLOPS = 10e12

def machine_memory() -> int:
    """This machine's physical memory (the driver's default in ``lakecurate plan`` and the run's check)."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_seconds(s: float) -> str:
    if s >= 86400:
        return f"{s / 86400:.1f} d"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


@dataclass(frozen=True)
class Hardware:
    """Where the job runs. ``cores`` and ``gpus`` are per executor; ``task_memory`` per task."""

    executors: int = 1
    cores: int = 2
    gpus: int = 0
    task_memory: int = 4 << 30
    driver_memory: int = 8 << 30
    driver_cores: int = 2
    #: FLOP/s of the assignment kernel's search on one core, and its seconds per row that do not
    #: grow with k (re-score, sums, reading the block): both measured by :func:`calibrate`
    core_flops: float = 50e9
    row_seconds: float = 0.0
    #: seconds per (sample rows x k x d) of the sampled k-means++ seeding (:func:`calibrate`)
    seeding_seconds: float = 2.5e-10
    gpu_flops: float = GPU_FLOPS

    def pass_seconds(self, n: float, k: float, d: int, *, on_executors: bool) -> float:
        """Compute seconds of one exact assignment of n rows to k centroids (no fixed Spark cost)."""
        if on_executors and self.gpus:
            return 2.0 * n * k * d / (self.executors * self.gpus * self.gpu_flops) + n * self.row_seconds / self.total_cores
        cores = self.total_cores if on_executors else self.driver_cores
        return n * (self.row_seconds + 2.0 * k * d / self.core_flops) / cores

    @property
    def total_cores(self) -> int:
        return self.executors * self.cores



def _kernel_seconds_per_row(d: int, ks: tuple[int, ...], rows: int, repeats: int) -> list[float]:
    """Best seconds per row of ``assign_batch`` on one thread at each k in ``ks``. The k's are timed
    in turn, ``repeats`` rounds of all of them, so a busy spell on a shared machine slows every k
    alike instead of bending the fitted slope (the line the estimate extrapolates along)."""
    import faiss

    from lakecurate.core.assign import assign_batch

    data = []
    for k in ks:
        rng = np.random.default_rng(k)
        data.append((rng.standard_normal((rows, d), dtype=np.float32), rng.standard_normal((k, d), dtype=np.float32)))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    best = [math.inf] * len(ks)
    try:
        for x, c in data:
            assign_batch(x[:1024], c)  # warm up
        for _ in range(repeats):
            for i, (x, c) in enumerate(data):
                t0 = time.perf_counter()
                assign_batch(x, c)
                best[i] = min(best[i], time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
    return [b / rows for b in best]


def seeding_k(k: int) -> int:
    """The k :func:`calibrate` measures the seeding at for a level-1 ``k`` (50 to 500)."""
    return int(min(max(k, 50), 500))


def calibrate(d: int, k: int = 200, *, rows: int = 8192, repeats: int = 5) -> dict:
    """This machine's rates for :class:`Hardware`, measured at width ``d`` on one thread (~2 s).

    lakecurate's exact assignment kernel (``assign_batch``: faiss's search of two candidates, the
    re-score, float64 sums) at k = 32 and k = 1024: its seconds per row are a + b k, so
    ``core_flops`` = 2 d / b (the search) and ``row_seconds`` = a (what every row costs whatever k);
    and the sampled k-means++ seeding's seconds per (sample rows x k x d), measured at ``k`` (capped
    at 500: the seeding's pruning makes that figure fall as k grows, so pass the job's level-1 k).
    """
    from lakecurate.core.kmeans import kmeans_plusplus

    lo, hi = 32, 1024
    t_lo, t_hi = _kernel_seconds_per_row(d, (lo, hi), rows, repeats)
    b = max((t_hi - t_lo) / (hi - lo), 1e-15)
    k, ppc = seeding_k(k), 40
    x = np.random.default_rng(1).standard_normal((ppc * k, d), dtype=np.float32)
    t0 = time.perf_counter()
    kmeans_plusplus(x, k, np.random.default_rng(0))
    seeding = (time.perf_counter() - t0) / (ppc * k * k * d)
    return {"core_flops": 2.0 * d / b, "row_seconds": max(t_lo - b * lo, 0.0), "seeding_seconds": seeding}


#: where ``lakecurate plan`` keeps the rates it measured, per machine kind and width
CALIBRATION_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                                 "lakecurate", "calibration.json")


def machine_kind() -> str:
    """What the kernel's rates depend on: the CPU model, its cores, and the faiss and numpy builds."""
    import faiss

    from lakecurate._blas import cpu_model

    return f"{cpu_model()} x{os.cpu_count()}; faiss {faiss.__version__}; numpy {np.__version__}"


def cached_rates(d: int, k: int, *, path: Optional[str] = None) -> Optional[dict]:
    """:func:`calibrate`'s rates for width ``d`` and level-1 ``k`` if ``lakecurate plan`` measured
    them on this machine kind before, else None (nothing is measured: a run's placement of its
    levels uses the documented defaults then)."""
    import json

    try:
        with open(path or CALIBRATION_CACHE) as f:
            hit = json.load(f).get(f"{machine_kind()} | d={d} | k={seeding_k(k)}")
    except (OSError, ValueError, AttributeError):
        return None
    return hit["rates"] if isinstance(hit, dict) and isinstance(hit.get("rates"), dict) else None


def cached_calibration(d: int, k: int, *, refresh: bool = False, path: Optional[str] = None) -> tuple[dict, str]:
    """:func:`calibrate`'s rates for width ``d`` and level-1 ``k`` on this machine kind, from the
    cache when they were measured here before (unless ``refresh``), else measured now and kept.
    Returns (rates, one line saying which)."""
    import json

    path = path or CALIBRATION_CACHE
    key = f"{machine_kind()} | d={d} | k={seeding_k(k)}"
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if hit is not None and not refresh:
        return hit["rates"], f"kernel rates measured on this machine at {hit['when']} (cached in {path}; --recalibrate measures again)"
    rates = calibrate(d, k)
    cache[key] = {"rates": rates, "when": time.strftime("%Y-%m-%d %H:%M", time.localtime())}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(cache, f, indent=1)
        os.replace(tmp, path)
        where = f"kept in {path}"
    except OSError as exc:  # a read-only home: measure every time
        where = f"not kept: {exc}"
    return rates, f"kernel rates measured now ({where})"


@dataclass
class LevelSize:
    """The sizing of one level (one row of the plan)."""

    level: int
    k: int
    inputs: int
    where: str  # "executors" or "driver"
    n_coarse: int  # 0: one k-means
    task_bytes: int  # per task, largest over the level's passes
    driver_bytes: int
    flops_per_iteration: float  # one Lloyd iteration's assignment over every input
    passes: int  # Spark passes over the level's inputs (0 on the driver)
    seconds: float
    why: str = ""  # how n_coarse was chosen
    placed: str = ""  # why the level runs where it does


@dataclass
class Problem:
    level: int
    message: str
    fix: str

    def __str__(self) -> str:
        return f"level {self.level}: {self.message}; fix: {self.fix}"


@dataclass
class JobSize:
    rows: int
    dim: int
    hardware: Hardware
    levels: list[LevelSize]
    cache_seconds: float
    write_seconds: float  # the assignments pass and the tables' writes
    driver_bytes: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.cache_seconds + sum(lv.seconds for lv in self.levels) + self.write_seconds

    def raise_if_impossible(self) -> None:
        if self.problems:
            raise ConfigError("this clustering cannot run on the given hardware:\n  " + "\n  ".join(map(str, self.problems)))

    def dominant_line(self) -> str:
        """Where the estimate's time goes, and what shortens it, in one line."""
        parts = [("reading and caching the input", self.cache_seconds), ("the assignments pass and the writes", self.write_seconds)]
        parts += [(f"level {lv.level}", lv.seconds) for lv in self.levels]
        name, secs = max(parts, key=lambda p: p[1])
        share = secs / self.seconds if self.seconds > 0 else 0.0
        head = f"time: {share:.0%} of the estimate ({fmt_seconds(secs)}) is {name}"
        lv = next((lv for lv in self.levels if f"level {lv.level}" == name), None)
        if lv is None:
            return head + f": {self.rows:,} rows of {self.dim} float32 over {self.hardware.total_cores} cores; more cores shorten it"
        if lv.where == "driver":
            return (head + f": {lv.inputs:,} inputs against k={lv.k:,} on the driver's {self.hardware.driver_cores} cores, "
                    f"{lv.flops_per_iteration / 1e9:,.0f} GFLOP per iteration; fewer iterations or resampling steps shorten it")
        gpu = "" if self.hardware.gpus else ", GPUs (--gpus)"
        return (head + f": {lv.passes} passes over {lv.inputs:,} rows, {lv.flops_per_iteration / 1e9:,.0f} GFLOP each, on "
                f"{self.hardware.total_cores} cores at {self.hardware.core_flops / 1e9:.0f} GFLOP/s per core; more cores{gpu}, "
                "fewer iterations (clustering.n_iter) or a smaller k shorten it")

    def lines(self) -> list[str]:
        hw = self.hardware
        gpu = f", {hw.gpus} GPU(s) each at {hw.gpu_flops / 1e12:.0f} TFLOP/s (documented constant)" if hw.gpus else ""
        out = [
            f"input: {self.rows:,} rows x {self.dim} float32 ({fmt_bytes(self.rows * self.dim * 4)})",
            f"hardware: {hw.executors} executor(s) x {hw.cores} cores{gpu}, {fmt_bytes(hw.task_memory)} per task, "
            f"driver {fmt_bytes(hw.driver_memory)}; assignment kernel {hw.core_flops / 1e9:.1f} GFLOP/s per core + "
            f"{hw.row_seconds * 1e6:.2f} us per row (measured here)",
            "",
            "| level | k | inputs | where | steps | centroids per task | task memory | driver memory | GFLOP per iteration | passes | est. time |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| cache | | {self.rows:,} | executors | | | | | | 1 | {fmt_seconds(self.cache_seconds)} |",
        ]
        for lv in self.levels:
            steps = f"two-step ({lv.n_coarse} coarse)" if lv.n_coarse else "one"
            held = lv.n_coarse + max(1, lv.k // max(lv.n_coarse, 1)) if lv.n_coarse else lv.k
            out.append(
                f"| {lv.level} | {lv.k:,} | {lv.inputs:,} | {lv.where} | {steps} | {fmt_bytes(held * self.dim * 4)} | "
                f"{fmt_bytes(lv.task_bytes)} | {fmt_bytes(lv.driver_bytes)} | {lv.flops_per_iteration / 1e9:,.1f} | {lv.passes} | "
                f"{fmt_seconds(lv.seconds)} |"
            )
        out.append(f"| assignments | | {self.rows:,} | executors | | | | | | 1 | {fmt_seconds(self.write_seconds)} |")
        out += ["", f"driver peak (estimate): {fmt_bytes(self.driver_bytes)}; cluster stage (estimate): {fmt_seconds(self.seconds)}, "
                    f"plus ~{STARTUP_SECONDS:.0f} s for the Spark session and its workers to start"]
        for lv in self.levels:
            out.append(f"level {lv.level}: {lv.placed}" + (f"; {lv.why}" if lv.why else ""))
        out.append(self.dominant_line())
        if self.problems:
            out += ["", "CANNOT RUN:"] + [f"  {p}" for p in self.problems]
        return out


def one_step_task_bytes(k: int, d: int, block_rows: int = 20_000) -> int:
    return int(TASK_BYTES_PER_CENTROID_FLOAT * k * d + 2 * 4 * block_rows * d)


def group_task_bytes(n: int, k: int, n_coarse: int, d: int) -> int:
    """A two-step level's largest task: one coarse group's rows and its fine centroids."""
    rows = GROUP_SKEW * n / n_coarse
    fine = GROUP_SKEW * k / n_coarse
    return int(GROUP_BYTES_PER_FLOAT * rows * d + TASK_BYTES_PER_CENTROID_FLOAT * fine * d)


def resolve_n_coarse(spec, k: int, n: int, d: int, *, on_executors: bool, task_memory: int) -> tuple[int, str]:
    """The coarse clusters of one level and why: ``spec`` is ``auto``, 0 (one k-means) or C."""
    if spec != AUTO:
        return int(spec), ("two-step as configured" if spec else "")
    budget = USABLE_SHARE * task_memory
    need = one_step_task_bytes(k, d)
    big = k >= AUTO_TWO_STEP_MIN_K
    if not on_executors or k < 4 or (need <= budget and not big):
        return 0, ""
    best = max(2, math.ceil(math.sqrt(k)))  # the fewest FLOPs: C coarse + k / C fine centroids per row
    c = best
    while max(one_step_task_bytes(c, d), group_task_bytes(n, k, c, d)) > budget:
        if c * 2 > k // 2:  # groups of fewer than two fine clusters are no two-step: nothing fits a task
            return best, (f"two-step with {best} coarse clusters (auto, the fewest FLOPs), though no number of coarse clusters "
                          f"up to k/2 fits both steps in {USABLE_SHARE:.0%} of clustering.task_memory={fmt_bytes(task_memory)}")
        c *= 2
    if need > budget:
        why = (f"one k-means with k={k:,} needs {fmt_bytes(need)} per task, over {USABLE_SHARE:.0%} of "
               f"clustering.task_memory={fmt_bytes(task_memory)}")
    else:
        why = f"k={k:,} >= {AUTO_TWO_STEP_MIN_K:,}: one k-means would cost {k / (c + k / c):.0f}x the FLOPs per iteration"
    return c, f"two-step with {c} coarse clusters (auto): {why}"


def size_job(
    rows: int,
    dim: int,
    n_clusters: Sequence[int],
    *,
    n_coarse: Sequence = (AUTO,),
    resample_size: Sequence[int] = (1,),
    n_resampling_steps: int = 10,
    n_iter: int = 50,
    init_points_per_centroid: int = 40,
    driver_max_rows: Optional[int] = None,
    hardware: Optional[Hardware] = None,
) -> JobSize:
    """The plan of one hierarchical k-means (see the module docstring for the model).

    Level 1 reads the whole input on the executors. A level 2..T (its inputs: the previous
    level's centroids) goes where the model says: where it fits when it fits only on one side (the
    driver's memory, a task's memory), else on the driver when its estimated time there is at most
    its time on the executors (whose passes each pay ``PASS_SECONDS``), else on the executors. ``driver_max_rows`` (a number)
    replaces that choice with a threshold: more inputs than it on the executors, else the driver.
    """
    hw = hardware or Hardware()
    T = len(n_clusters)
    coarse_spec = list(n_coarse) * T if len(n_coarse) == 1 else list(n_coarse)
    rs = list(resample_size) * T if len(resample_size) == 1 else list(resample_size)
    d = dim
    levels: list[LevelSize] = []
    problems: list[Problem] = []
    centroid_bytes_held = 0
    driver_peak = 0
    budget = USABLE_SHARE * hw.task_memory
    driver_budget = USABLE_SHARE * hw.driver_memory

    def estimate(t: int, k: int, n: int, c: int, why: str, on_exec: bool) -> tuple[LevelSize, list[Problem]]:
        """Level t (``c`` coarse clusters) placed on the executors or the driver: its size and time, and what cannot run there."""
        found: list[Problem] = []
        m = n_resampling_steps if rs[t - 1] > 1 else 0
        lloyd_passes = n_iter + 1 + 2  # iterations, the final assignment, the two passes drawing the seeding sample
        npass = lambda rows_, kk: hw.pass_seconds(rows_, kk, d, on_executors=on_exec)  # noqa: E731
        seed_s = lambda kk, rows_=n: hw.seeding_seconds * min(rows_, init_points_per_centroid * kk) * kk * d  # noqa: E731
        if c:
            flops = 2.0 * n * (c + k / c) * d
            fine_rows = GROUP_SKEW * n / c  # the fine fits: each group's k-means and resampling inside one task
            # sum over groups of rows x fine k, with k_g proportional to n_g: (k / n) sum n_g^2 = n k / c x (1 + cv^2);
            # GROUP_SKEW stands for 1 + cv^2 of a long-tailed pool's coarse clusters
            fine_work = n * (k / c) * GROUP_SKEW
            fine_cores = min(hw.total_cores if on_exec else hw.driver_cores, c)
            runs = (n_iter + 2) * (1 + m)  # Lloyd passes of each k-means inside a group, times its resampling steps

            def group_s(rows_: float, kk: float) -> float:  # one group's fit, on one core
                return rows_ * (hw.row_seconds + 2.0 * kk * d / hw.core_flops) * runs + seed_s(kk, rows_)

            # all groups over the cores, but never less than the largest group alone (one task)
            fine = max(group_s(fine_rows, GROUP_SKEW * k / c),
                       (n * hw.row_seconds * runs + 2.0 * fine_work * d / hw.core_flops * runs + c * seed_s(k / c, n / c)) / fine_cores)
            passes = lloyd_passes + 2 if on_exec else 0  # coarse passes, the group pass, the routed labels
            shuffle = 2 * n * d * 4 / (SHUFFLE_BYTES_PER_CORE_SECOND * hw.total_cores) if on_exec else 0.0
            seconds = (npass(n, c) * lloyd_passes + fine + npass(n, c + k / c) + passes * PASS_SECONDS + shuffle + seed_s(c))
            task = max(one_step_task_bytes(c, d), group_task_bytes(n, k, c, d)) if on_exec else 0
            if on_exec and group_task_bytes(n, k, c, d) > budget:
                found.append(Problem(t, f"two-step with {c} coarse clusters puts ~{fine_rows:,.0f} rows (the largest group, "
                                        f"{GROUP_SKEW:g}x the mean) in one task: {fmt_bytes(group_task_bytes(n, k, c, d))} > "
                                        f"{USABLE_SHARE:.0%} of the task memory {fmt_bytes(hw.task_memory)}",
                                     f"more coarse clusters (clustering.n_coarse[{t - 1}] >= "
                                     f"{math.ceil(c * group_task_bytes(n, k, c, d) / budget)}) or more task memory"))
        else:
            flops = 2.0 * n * k * d
            passes = (lloyd_passes + m + 1) if on_exec else 0  # + one closest-rows pass per resampling step + the final one
            resampled = min(n, k * rs[t - 1])  # the k-means of each resampling step runs on these points, on the driver
            seconds = (npass(n, k) * (lloyd_passes + m + 1) + m * (n_iter + 1) * hw.pass_seconds(resampled, k, d, on_executors=False)
                       + passes * PASS_SECONDS + seed_s(k) + m * seed_s(k, resampled))
            task = one_step_task_bytes(k, d) if on_exec else 0
            if on_exec and task > budget:
                alt = resolve_n_coarse(AUTO, k, n, d, on_executors=True, task_memory=hw.task_memory)[0]
                found.append(Problem(t, f"one k-means with k={k:,} holds {fmt_bytes(task)} per task (centroids and partial sums) > "
                                        f"{USABLE_SHARE:.0%} of the task memory {fmt_bytes(hw.task_memory)}",
                                     f"two-step at this level (clustering.n_coarse[{t - 1}]: {alt or 'auto'}), fewer clusters, "
                                     f"or more task memory"))
        in_flight = 8 * k * d * 2 + (4 * n * d * 3 if not on_exec else 0)
        driver = centroid_bytes_held + DRIVER_BYTES_PER_CENTROID_FLOAT * k * d + in_flight
        if driver > driver_budget:
            fix = ("fewer clusters at this level or a larger driver (spark.driver.memory)" if on_exec else
                   "the level on the executors (clustering.driver_max_rows below its inputs, or null: the plan's choice), or a larger driver")
            found.append(Problem(t, f"the driver holds {fmt_bytes(driver)} (every level's centroids so far, this level's "
                                    f"{'partial sums' if on_exec else 'inputs and sums'}) > {USABLE_SHARE:.0%} of the driver memory "
                                    f"{fmt_bytes(hw.driver_memory)}", fix))
        level = LevelSize(t, k, n, "executors" if on_exec else "driver", c, task, driver, flops, passes, seconds, why)
        return level, found

    for t, k in enumerate(n_clusters, start=1):
        n = rows if t == 1 else n_clusters[t - 2]
        # the level's shape (one k-means or two steps) never depends on where it runs, so that
        # every placement gives the same tree: n_coarse auto splits a level 2..T as it splits a
        # level on the executors once it has more inputs than the threshold (or SHAPE_INPUTS)
        shaped_as_executors = t == 1 or n > (driver_max_rows if driver_max_rows is not None else SHAPE_INPUTS)
        c, why = resolve_n_coarse(coarse_spec[t - 1], k, n, d, on_executors=shaped_as_executors, task_memory=hw.task_memory)
        if t == 1:
            (level, found), placed = estimate(t, k, n, c, why, True), "on the executors: level 1 reads the whole input"
        elif driver_max_rows is not None:
            on_exec = n > driver_max_rows
            level, found = estimate(t, k, n, c, why, on_exec)
            placed = (f"on the executors: its {n:,} inputs are more than clustering.driver_max_rows={driver_max_rows:,}" if on_exec else
                      f"on the driver: its {n:,} inputs are at most clustering.driver_max_rows={driver_max_rows:,}")
        else:
            (ex, ex_found), (dr, dr_found) = estimate(t, k, n, c, why, True), estimate(t, k, n, c, why, False)
            if dr_found and not ex_found:
                (level, found), placed = (ex, ex_found), (f"on the executors: on the driver it would hold {fmt_bytes(dr.driver_bytes)}, "
                                                          f"over {USABLE_SHARE:.0%} of the driver memory {fmt_bytes(hw.driver_memory)}")
            elif ex_found and not dr_found:
                (level, found), placed = (dr, dr_found), f"on the driver: on the executors, {ex_found[0].message}"
            elif dr.seconds <= ex.seconds:  # both fit, or neither: the faster
                (level, found), placed = (dr, dr_found), (f"on the driver: est. {fmt_seconds(dr.seconds)} there against "
                                                          f"{fmt_seconds(ex.seconds)} on the executors ({ex.passes} Spark passes)")
            else:
                (level, found), placed = (ex, ex_found), (f"on the executors: est. {fmt_seconds(ex.seconds)} there against "
                                                          f"{fmt_seconds(dr.seconds)} on the driver's {hw.driver_cores} cores")
        problems += found
        centroid_bytes_held += DRIVER_BYTES_PER_CENTROID_FLOAT * k * d
        driver_peak = max(driver_peak, level.driver_bytes)
        levels.append(replace(level, placed=placed))
    cache = rows * d * 4 / (CACHE_BYTES_PER_CORE_SECOND * hw.total_cores) + PASS_SECONDS
    first = levels[0]
    label_k = (first.n_coarse + first.k / first.n_coarse) if first.n_coarse else first.k
    write = (hw.pass_seconds(rows, label_k, d, on_executors=True) + rows / (WRITE_ROWS_PER_CORE_SECOND * hw.total_cores)
             + 2 * PASS_SECONDS + 3 * COMMIT_SECONDS)
    return JobSize(rows, dim, hw, levels, cache, write, driver_peak, problems)


def size_config(cfg, rows: int, dim: int, hardware: Optional[Hardware] = None, **kw) -> JobSize:
    """:func:`size_job` for a run config's ``clustering`` section."""
    cc = cfg.clustering
    h = cc.hierarchy()
    return size_job(rows, dim, h.n_clusters, n_coarse=cc.n_coarse, resample_size=h.resample_size,
                    n_resampling_steps=h.n_resampling_steps, n_iter=h.n_iter, init_points_per_centroid=h.init_points_per_centroid,
                    driver_max_rows=cc.driver_max_rows, hardware=hardware, **kw)
