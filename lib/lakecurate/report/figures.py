"""The report's figures, drawn with matplotlib's Agg backend (no display, no network fonts) as PNG bytes.

Each function takes the plain data :mod:`lakecurate.report.gather` built and returns a PNG, or
None when the run has nothing to draw for it.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np

from lakecurate.core.metrics import gini, lorenz
from lakecurate.report.gather import THRESHOLDS, ReportData

DPI = 110
SUBSET_STYLE = {"pool": dict(color="#7f7f7f", ls="-"), "random": dict(color="#ff7f0e", ls="--"),
                "deduplicated": dict(color="#9467bd", ls=":"), "curated": dict(color="#1f77b4", ls="-")}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def cluster_sizes(data: ReportData) -> Optional[bytes]:
    """Rank/size of the clusters of each level, log-log: a flat line is an even level."""
    if not data.levels:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for lv in data.levels:
        sizes = np.sort(lv.sizes)[::-1]
        ax.plot(np.arange(1, sizes.size + 1), np.maximum(sizes, 0.8), lw=1.5, label=f"level {lv.level} (k={sizes.size:,})")
    ax.set(xscale="log", yscale="log", xlabel="cluster rank (largest first)", ylabel="data points under the cluster",
           title="Cluster sizes per level")
    ax.legend(frameon=False)
    return _png(fig)


def _subset_counts(data: ReportData, top: bool) -> dict[str, np.ndarray]:
    out = {"pool": data.levels[0].sizes}
    if data.random is not None:
        out["random"] = data.random
    if data.curated is not None:
        out["curated"] = data.curated
    return {name: data.per_top(c) for name, c in out.items()} if top else out


def lorenz_curves(data: ReportData) -> Optional[bytes]:
    """Lorenz curves of rows per level-1 and per top-level cluster: pool, random subset, curated subset."""
    if not data.levels or data.curated is None:
        return None
    plt = _plt()
    panels = [(False, "level-1 clusters")] + ([(True, f"top-level (level {data.levels[-1].level}) clusters")] if len(data.levels) > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (top, what) in zip(axes[0], panels):
        for name, counts in _subset_counts(data, top).items():
            x, y = lorenz(counts)
            ax.plot(x, y, lw=1.6, label=f"{name} (Gini {gini(counts):.2f})", **SUBSET_STYLE[name])
        ax.plot([0, 1], [0, 1], color="black", lw=0.7, alpha=0.5)
        ax.set(xlabel=f"share of {what} (smallest first)", ylabel="share of rows", xlim=(0, 1), ylim=(0, 1), title=f"Rows per {what}")
        ax.legend(frameon=False, loc="upper left")
    return _png(fig)


def concept_counts(data: ReportData) -> Optional[bytes]:
    """Rows per known label, labels ordered by pool size: pool, random subset, curated subset."""
    if data.labels is None:
        return None
    plt = _plt()
    totals = data.labels.totals
    order = np.argsort(-totals["pool"], kind="stable")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    rank = np.arange(1, order.size + 1)
    for name in ("pool", "random", "deduplicated", "curated"):
        if name in totals:
            ax.plot(rank, np.maximum(totals[name][order], 0.8), lw=1.3, label=name, **SUBSET_STYLE[name])
    for t in THRESHOLDS:
        ax.axhline(t, color="black", lw=0.5, alpha=0.35)
    ax.set(yscale="log", xlabel=f"{data.labels.column} (by pool size, largest first)", ylabel="rows (log scale; none = bottom line)",
           title=f"Rows per {data.labels.column}")
    ax.legend(frameon=False)
    return _png(fig)


def centroid_map(data: ReportData) -> Optional[bytes]:
    """Level-1 centroids on their first two principal components: sized by cluster size, coloured by
    top-level cluster (left) and by the share of their rows the curated subset took (right)."""
    m = data.centroid_map
    if m is None:
        return None
    plt = _plt()
    sizes = data.levels[0].sizes[m.cluster_ids].astype(np.float64)
    area = 6 + 140 * np.sqrt(sizes / max(sizes.max(), 1))
    panels = 2 if data.curated is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4), squeeze=False)
    ax = axes[0][0]
    top = data.top_of_level1[m.cluster_ids]
    ax.scatter(m.xy[:, 0], m.xy[:, 1], s=area, c=top % 20, cmap="tab20", alpha=0.7, linewidths=0)
    shown = "" if m.cluster_ids.size == m.of_total else f", {m.cluster_ids.size:,} of {m.of_total:,} shown"
    ax.set(xlabel=f"PC 1 ({m.explained[0]:.0%} of variance)", ylabel=f"PC 2 ({m.explained[1]:.0%})",
           title=f"Level-1 centroids by top-level cluster{shown}")
    if panels == 2:
        ax = axes[0][1]
        share = data.curated[m.cluster_ids] / np.maximum(sizes, 1)
        pts = ax.scatter(m.xy[:, 0], m.xy[:, 1], s=area, c=share, cmap="viridis", alpha=0.8, linewidths=0, vmin=0, vmax=1)
        fig.colorbar(pts, ax=ax, label="share of the cluster's rows curated")
        ax.set(xlabel=f"PC 1 ({m.explained[0]:.0%} of variance)", ylabel=f"PC 2 ({m.explained[1]:.0%})",
               title="Curated share per level-1 cluster (size = rows)")
    return _png(fig)


def duplicate_groups(data: ReportData) -> Optional[bytes]:
    """How many rows were removed per kept row."""
    d = data.dedup
    if d is None or d.group_sizes.size == 0:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    values, counts = np.unique(d.group_sizes, return_counts=True)
    ax.bar(values, counts, width=0.8 if values.max() < 60 else max(values.max() / 80, 1), color="#9467bd")
    ax.set(yscale="log", xlabel="rows removed for one kept row", ylabel="kept rows",
           title=f"Duplicate groups ({d.group_sizes.size:,} kept rows stand for {d.removed:,} removed)")
    return _png(fig)


def convergence(data: ReportData) -> Optional[bytes]:
    """The k-means objective per Lloyd iteration, one panel per level, one line per resampling step."""
    levels = data.stage_metrics.get("cluster", {}).get("levels") or []
    levels = [lv for lv in levels if lv.get("steps")]
    if not levels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(levels), figsize=(3.3 * len(levels), 3.0), squeeze=False)
    for ax, lv in zip(axes[0], levels):
        for step in lv["steps"]:
            obj = [it["objective"] for it in step.get("iterations", [])]
            if obj:
                ax.plot(np.arange(len(obj)), obj, lw=1.2, marker=".", ms=3, label=f"step {step['step']}")
        ax.set(xlabel="Lloyd iteration", title=f"level {lv['level']}, k={lv['n_clusters']:,}")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        if len(lv["steps"]) > 1:
            ax.legend(frameon=False, fontsize=7)
    axes[0][0].set_ylabel("objective (sum of squared distances)")
    return _png(fig)


def guidance_curve(data: ReportData) -> Optional[bytes]:
    """What smaller subsets still cover: groups with at least N rows against the subset size."""
    if not data.guidance:
        return None
    plt = _plt()
    key, what = ("concepts", f"{data.labels.column} values") if data.labels is not None else ("top", "top-level clusters")
    sizes = [g["target_size"] for g in data.guidance]
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for i, t in enumerate(THRESHOLDS):
        color = f"C{i}"
        ax.plot(sizes, [g[key][t] for g in data.guidance], marker="o", ms=3, color=color, label=f"curated, >= {t} rows")
        if key == "concepts":
            ax.plot(sizes, [g["concepts_random"][t] for g in data.guidance], ls="--", color=color, alpha=0.7, label=f"random, >= {t}")
    ax.set(xscale="log", xlabel="subset size (rows)", ylabel=f"{what} covered", title=f"{what.capitalize()} a subset of each size covers")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    return _png(fig)


def stage_timings(data: ReportData) -> Optional[bytes]:
    stages = data.run.stages
    if not stages:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(stages) + 0.9))
    names = [s.stage + ("" if s.status == "succeeded" else f" ({s.status})") for s in stages]
    ax.barh(names[::-1], [s.seconds for s in stages][::-1], color="#2ca02c")
    ax.set(xlabel="seconds", title=f"Stage times (run total {data.run.seconds:.1f} s)")
    return _png(fig)


#: (file name, figure function, caption), in the order the page shows them
FIGURES = [
    ("cluster_sizes.png", cluster_sizes, "Cluster sizes per level"),
    ("lorenz.png", lorenz_curves, "Balance: Lorenz curves"),
    ("concepts.png", concept_counts, "Rows per known label"),
    ("centroids.png", centroid_map, "Map of the level-1 centroids"),
    ("guidance.png", guidance_curve, "Small-subset guidance"),
    ("duplicates.png", duplicate_groups, "Duplicate groups"),
    ("convergence.png", convergence, "Convergence"),
    ("timings.png", stage_timings, "Stage times"),
]
