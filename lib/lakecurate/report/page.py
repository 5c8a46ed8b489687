"""The report as one self-contained HTML page: figures and thumbnails embedded as data URIs, inline
CSS, no script, no font or file fetched from anywhere, so it opens offline from the lake or a laptop."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from typing import Callable, Optional

import numpy as np

from lakecurate import __version__
from lakecurate.core.metrics import covered, gini
from lakecurate.report.gather import THRESHOLDS, ReportData

log = logging.getLogger(__name__)

THUMB_PX = 112
MAX_THUMBS = 240  # images embedded at most (the rest show their path or size)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")

CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b57;color:#fff;padding:14px 28px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;font-size:13px;opacity:.9}
nav{padding:6px 28px;background:#e9eef3;font-size:13px}nav a{margin-right:14px;color:#1f3b57}
main{padding:8px 28px 40px;max-width:1250px}section{margin:22px 0}h2{font-size:17px;border-bottom:1px solid #ccd;padding-bottom:3px}
h3{font-size:14px;margin:14px 0 6px}p.note{font-size:12.5px;color:#555;max-width:900px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}th,td{border:1px solid #d5d9de;padding:3px 8px;text-align:right}
th{background:#eef1f4}td.l,th.l{text-align:left}figure{margin:8px 0}figure img{max-width:100%;border:1px solid #e3e3e3;background:#fff}
figcaption{font-size:12px;color:#555}.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #d5d9de;border-radius:4px;padding:8px;width:360px;font-size:12px}
.card h4{margin:0 0 6px;font-size:13px}.rows{display:flex;flex-wrap:wrap;gap:6px}
.row{border:1px solid #eee;padding:3px;flex:1 1 100%;min-width:0;overflow-wrap:anywhere}.row.tile{flex:0 0 auto;max-width:150px}.row.kept{border-color:#2ca02c;border-width:2px}
.row img.thumb{display:block;width:auto;height:auto;max-width:112px;max-height:112px}.id{color:#777;font-size:11px}
details{margin:6px 0}details>summary{cursor:pointer;font-size:13px;color:#1f3b57;margin:4px 0}
p.good{font-size:12.5px;color:#2d5a2d;max-width:900px;margin:4px 0}
pre{background:#fff;border:1px solid #ddd;padding:8px;font-size:11.5px;overflow:auto;max-height:420px}
"""


class Thumbnails:
    """Image payloads as small embedded PNGs (bytes with an image signature, or a path to an image file)."""

    def __init__(self, read_path: Optional[Callable[[str], bytes]] = None):
        self.read_path = read_path
        self.count = 0

    def html(self, value) -> Optional[str]:
        data = None
        if isinstance(value, (bytes, bytearray)) and bytes(value[:4]).startswith(_MAGIC):
            data = bytes(value)
        elif isinstance(value, str) and value.lower().endswith(IMAGE_EXTENSIONS) and self.read_path is not None:
            try:
                data = self.read_path(value)
            except Exception as exc:  # a moved file: its path is shown instead
                log.debug("report: image %s not read: %s", value, exc)
        if data is None or self.count >= MAX_THUMBS:
            return None
        try:
            from PIL import Image

            img = Image.open(io.BytesIO(data))
            img.thumbnail((THUMB_PX, THUMB_PX))
            out = io.BytesIO()
            img.convert("RGB").save(out, format="PNG")
        except Exception as exc:
            log.debug("report: image not decoded: %s", exc)
            return None
        self.count += 1
        return f'<img class="thumb" alt="image" src="data:image/png;base64,{base64.b64encode(out.getvalue()).decode()}">'


def _e(v) -> str:
    return html.escape(str(v))


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if float(v).is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return _e(v)


def _table(head: list[str], rows: list[list], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c if isinstance(c, _Raw) else _num(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


class _Raw(str):
    """Cell content that is already HTML."""


def _row_html(row: dict, id_col: str, thumbs: Thumbnails, kept: bool = False) -> str:
    parts = []
    for k, v in row.items():
        if k in (id_col, "similarity"):
            continue
        img = thumbs.html(v)
        if img:
            parts.append(img)
        elif isinstance(v, (bytes, bytearray)):
            parts.append(f"<i>{len(v):,} bytes</i>")
        elif v is not None:
            text = str(v)
            parts.append(f"<div>{_e(text[:280])}{'…' if len(text) > 280 else ''}</div>")
    rid = row.get(id_col)
    img = thumbs.html(rid) if isinstance(rid, str) else None  # image files: the id is the path
    if img:
        parts.insert(0, img)
    sim = f" · cos {row['similarity']:.4f}" if row.get("similarity") is not None else ""
    label = "kept " if kept else ""
    # a row with a picture is a tile (a gallery of thumbnails); a row of text takes the card's width
    tile = " tile" if any(p.startswith('<img class="thumb"') for p in parts) else ""
    return f'<div class="row{tile}{" kept" if kept else ""}">{"".join(parts)}<div class="id">{label}{_e(id_col)}={_e(rid)}{sim}</div></div>'


def _folded(summary: str, body: str, *, open_: bool = False) -> str:
    """A part of the page that starts collapsed (long lists of examples, tables for the curious)."""
    return f'<details{" open" if open_ else ""}><summary>{_e(summary)}</summary>{body}</details>'


def _good(text: str) -> str:
    """What a good result looks like on a figure or table, for this method."""
    return f'<p class="good">What good looks like: {_e(text)}</p>'


#: a centroid map whose two axes explain less of the variance than this is folded away with a warning
MAP_MIN_EXPLAINED = 0.25


def _figure(figures: dict, name: str, caption: str) -> str:
    png = figures.get(name)
    if png is None:
        return ""
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
            f"<figcaption>{_e(caption)} ({_e(name)} next to this page)</figcaption></figure>")


def _headline(data: ReportData) -> str:
    """The few figures a person checks first."""
    items = []
    if data.dedup is not None:
        items.append(f"{data.dedup.removed:,} near-duplicate rows removed" + (f" ({data.dedup.removed / data.dedup.rows_in:.1%} of the input)"
                                                                          if data.dedup.rows_in else ""))
    if data.levels:
        items.append("a tree of " + " / ".join(f"{lv.sizes.size:,}" for lv in data.levels) + " clusters (level 1 to the top) over "
                     f"{int(data.levels[0].sizes.sum()):,} rows")
    if data.curated is not None:
        g_pool, g_cur = gini(data.per_top(data.levels[0].sizes)), gini(data.per_top(data.curated))
        items.append(f"{int(data.curated.sum()):,} rows curated from {int((data.curated > 0).sum()):,} level-1 clusters; "
                     f"Gini of rows over the top-level clusters {g_pool:.2f} in the pool, {g_cur:.2f} in the curated subset")
    for name in ("pool", "random", "curated"):
        if data.balance.get(name) and data.labels is not None:
            b = data.balance[name]
            items.append(f"{name}: {b['effective_concepts']:,.1f} effective {_e(data.labels.column)} values of {len(data.labels.names):,}, "
                         f"the largest holds {b['largest_share']:.1%} of the rows")
    warnings = sum(len(s.metrics.get("warnings", [])) for s in data.run.stages)
    if warnings:
        items.append(f'{warnings} warning(s): see <a href="#timings">Stages</a>')
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" if items else "<p>This run wrote no tree, subset or duplicates.</p>"


def render(data: ReportData, figures: dict[str, bytes], *, lake_root: str, thumbs: Thumbnails) -> str:
    run = data.run
    m = data.stage_metrics
    sections: list[tuple[str, str, str]] = []  # (anchor, title, body)

    # ---- the tree
    if data.levels:
        rows = [[f"level {lv.level}", s["k"], int(lv.sizes.sum()), s["largest"], s["median"], s["smallest"], s["empty"],
                 s["imbalance"], s["gini"]] for lv in data.levels for s in [lv.summary]]
        body = _table(["level", "clusters", "data points", "largest", "median", "smallest", "empty", "imbalance (max/mean)", "Gini"], rows)
        body += _figure(figures, "cluster_sizes.png", "Rank/size of the clusters of each level (log-log): flatter is more even")
        body += _good("the levels above level 1 are fairly even (low imbalance and Gini): resampling spreads their centroids over "
                      "the concepts. Level 1 follows the data's density and may stay uneven; the sampler evens the tree from the top.")
        sections.append(("tree", f"Cluster tree (run {data.tree_run})", body))

    # ---- balance
    if data.curated is not None:
        subsets = {"pool": data.levels[0].sizes, "random": data.random, "curated": data.curated}
        rows = []
        for name, c in subsets.items():
            if c is None:
                continue
            per_top = data.per_top(c)
            rows.append([name, int(c.sum()), int((c > 0).sum()), gini(c), int((per_top > 0).sum()), gini(per_top),
                         *[covered(per_top, THRESHOLDS)[t] for t in THRESHOLDS]])
        body = _table(["subset", "rows", "level-1 clusters with rows", "Gini (level 1)", "top clusters with rows", "Gini (top)",
                       *[f"top clusters ≥ {t}" for t in THRESHOLDS]], rows)
        body += ('<p class="note">The random subset is a uniform draw of the curated size from the pool\'s clusters '
                 "(multivariate hypergeometric on the tree's cluster sizes). Gini 0 = every cluster holds the same rows.</p>")
        body += _good("the curated subset's Gini over the top clusters is far below the pool's and the random subset's. The sampler "
                      "splits the target evenly over the top-level clusters, then evenly down each branch, so it evens the top of "
                      "the tree, not level 1: a top-level cluster with few level-1 children gives each a large quota and one with "
                      "many a small one, and small clusters give all their rows. The level-1 Gini of the curated subset can "
                      "therefore be higher than the pool's; that is expected.")
        body += _figure(figures, "lorenz.png", "Lorenz curves: the diagonal is a perfectly even subset")
        if data.labels is not None:
            lab = data.labels
            body += f"<h3>Against known labels: <code>{_e(lab.column)}</code> ({len(lab.names):,} values)</h3>"
            names = [n for n in ("pool", "random", "deduplicated", "curated") if n in data.balance]
            brow = [[n, data.balance[n]["n"], data.balance[n]["concepts_covered"], data.balance[n]["entropy_bits"],
                     data.balance[n]["effective_concepts"], data.balance[n]["largest_share"], data.balance[n]["kl_to_uniform_bits"],
                     *[covered(lab.totals[n], THRESHOLDS)[t] for t in THRESHOLDS]] for n in names if n in lab.totals]
            body += _table(["subset", "rows", "covered", "entropy (bits)", "effective concepts", "largest share", "KL to uniform (bits)",
                            *[f"≥ {t} rows" for t in THRESHOLDS]], brow)
            body += _good(f"more effective {lab.column} values and a smaller largest share than the random subset, and the curated "
                          "line flatter than the pool's on the figure (the head cut down, the tail kept)")
            body += _figure(figures, "concepts.png", f"Rows per {lab.column}, most frequent in the pool first")
        sections.append(("balance", "Balance of the curated subset", body))

    if data.centroid_map is not None:
        explained = float(sum(data.centroid_map.explained))
        body = ('<p class="note">Each dot is a level-1 centroid, projected on the first two principal components of the '
                f"centroids (exact PCA); its area follows its cluster's size. The two axes explain {explained:.0%} of the "
                "centroids' variance.</p>")
        fig = _figure(figures, "centroids.png", f"Level-1 centroids (the axes explain {explained:.0%} of the variance)")
        if explained < MAP_MIN_EXPLAINED:
            body += _folded(f"Show the map anyway (only {explained:.0%} of the variance: distances on it mean little)", fig)
        else:
            body += fig
        sections.append(("map", "Map of the clusters", body))

    # ---- small-subset guidance
    if data.guidance:
        key = "concepts" if data.labels is not None else "top"
        what = f"{data.labels.column} values" if data.labels is not None else f"top-level clusters (of {data.levels[-1].sizes.size:,})"
        short = data.labels.column if data.labels is not None else "top clusters"
        head = ["subset size", *[f"curated: {short} with ≥ {t} rows" for t in THRESHOLDS]]
        if key == "concepts":
            head += [f"random: {short} with ≥ {t} rows" for t in THRESHOLDS]
        head += [f"curated: level-1 clusters with ≥ {t} rows" for t in THRESHOLDS]
        rows = [[g["target_size"], *[g[key][t] for t in THRESHOLDS],
                 *([g["concepts_random"][t] for t in THRESHOLDS] if key == "concepts" else []),
                 *[g["level1"][t] for t in THRESHOLDS]] for g in data.guidance]
        body = ('<p class="note">How many groups a curated subset of each size would still cover with at least N rows, from '
                f"this run's target down to a few thousand: {_e(what)}. These are <b>expected counts, not a drawn subset</b>: the "
                "quotas are the sampler's own for that <code>sampling.target_size</code> on this tree, and per label each "
                "cluster's quota is spread over its labels as in the pool (random: a uniform draw of the same size). They "
                "differ from the balance table above, which counts the rows actually drawn. In-domain pretraining on tens "
                "of thousands of well-spread images can beat generic large-scale pretraining, and the gains fade below "
                "roughly 50k images: pick the smallest size that still covers the concepts you need with enough rows each.</p>")
        body += _good("the curated columns stay high as the size shrinks while the random ones fall: the curated subset keeps "
                      "the rare groups")
        body += _table(head, rows) + _figure(figures, "guidance.png", "Coverage against subset size (expected counts)")
        sections.append(("guidance", "How small can the subset be?", body))

    # ---- dedup
    if data.dedup is not None:
        d = data.dedup
        dm = m.get("dedup", {})
        rows_in = d.rows_in
        body = f"<p>{d.removed:,} rows removed as near-duplicates" + (f" of {rows_in:,} ({d.removed / rows_in:.2%})" if rows_in else "")
        body += f", {d.group_sizes.size:,} kept rows stand for them (cosine ≥ {1 - float(dm.get('eps', 0) or 0):g})" if dm.get("eps") else ""
        body += ".</p>"
        if d.group_sizes.size:
            body += _table(["kept rows", "removed", "largest group", "median group", "groups of 1"],
                           [[d.group_sizes.size, d.removed, int(d.group_sizes.max()), float(np.median(d.group_sizes)),
                             int((d.group_sizes == 1).sum())]])
        body += _figure(figures, "duplicates.png", "Rows removed per kept row")
        if d.groups:
            cards = '<div class="cards">'
            for g in d.groups:
                rows_html = _row_html(g.kept, data.id_column, thumbs, kept=True) + "".join(_row_html(r, data.id_column, thumbs) for r in g.removed)
                cards += f'<div class="card"><h4>{g.size:,} removed for {_e(data.id_column)}={_e(g.kept.get(data.id_column))}</h4><div class="rows">{rows_html}</div></div>'
            cards += "</div>"
            body += _folded(f"The {len(d.groups)} largest groups: the kept row (green) and removed rows, most similar first", cards)
        sections.append(("dedup", "Near-duplicates", body))

    # ---- examples
    if data.examples:
        src = f" Payload from {_e(data.payload_source)}." if data.payload_source else " No payload column is known for this input: ids only."
        body = (f'<p class="note">Rows of the {"curated subset" if data.curated is not None else "tree"} in a few of the largest, '
                f"smallest and random level-1 clusters, so a person can tell what a cluster is about.{src}</p>")
        body += _good("the rows of one cluster look alike, and different clusters hold different things")
        by_kind: dict = {}
        for ex in data.examples:
            by_kind.setdefault(ex.kind, []).append(ex)
        for i, (kind, group) in enumerate(by_kind.items()):
            cards = '<div class="cards">'
            for ex in group:
                cur = "" if ex.curated is None else f", {ex.curated:,} curated"
                top = "" if ex.top is None else f", top-level {ex.top}"
                rows_html = "".join(_row_html(r, data.id_column, thumbs) for r in ex.rows) or "<i>no rows</i>"
                cards += f'<div class="card"><h4>{_e(ex.kind)}: cluster {ex.cluster_id} ({ex.size:,} rows{cur}{top})</h4><div class="rows">{rows_html}</div></div>'
            cards += "</div>"
            body += _folded(f"{kind} clusters ({len(group)})", cards, open_=i == 0)  # the first kind shown, the rest folded
        sections.append(("examples", "What is in the clusters", body))

    # ---- convergence and timings
    levels = m.get("cluster", {}).get("levels") or []
    if levels:
        rows = []
        for lv in levels:
            for st in lv.get("steps", []):
                its = st.get("iterations", [])
                rows.append([f"level {lv['level']}", st["step"], st.get("n_points"), len(its), its[0]["objective"] if its else None,
                             st.get("objective"), st.get("n_reseeded"), lv.get("seconds")])
        body = _figure(figures, "convergence.png", "Objective per Lloyd iteration")
        body += _good("each curve falls and levels off before its last iteration; few re-seeded clusters")
        body += _folded(f"Every k-means run ({len(rows)})", _table(["level", "resampling step", "points", "iterations", "first objective",
                                                                   "final objective", "re-seeded", "level seconds"], rows))
        sections.append(("convergence", "Convergence", body))
    rows = [[s.stage, s.status, s.attempts, s.seconds, s.started_at.strftime("%Y-%m-%d %H:%M:%S")] for s in run.stages]
    body = _table(["stage", "status", "attempts", "seconds", "started (UTC)"], rows) + _figure(figures, "timings.png", "Seconds per stage")
    warnings = [f"{s.stage}: {w}" for s in run.stages for w in s.metrics.get("warnings", [])]
    if warnings:
        body += "<h3>Warnings</h3><ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>"
    sections.append(("timings", "Stages", body))
    sections.append(("config", "Config", _folded("The run's config (as recorded in the runs table)",
                                                 f"<pre>{_e(json.dumps(run.config, indent=2, sort_keys=True, default=str))}</pre>")))

    sections.insert(0, ("summary", "In short", _headline(data)))
    nav = "".join(f'<a href="#{a}">{_e(t.split(" (")[0])}</a>' for a, t, _ in sections)
    main = "".join(f'<section id="{a}"><h2>{_e(t)}</h2>{b}</section>' for a, t, b in sections)
    head = (f"run {_e(run.run_id)}: {_e(run.status)}, started {run.started_at:%Y-%m-%d %H:%M:%S} UTC, {run.seconds:.1f} s of stages, "
            f"rows in {_num(run.rows_in)}, rows out {_num(run.rows_out)} · lake {_e(lake_root)} · lakecurate {_e(run.version or __version__)}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>lakecurate report: {_e(run.run_id)}</title>'
            f"<style>{CSS}</style></head><body><header><h1>lakecurate report: {_e(run.run_id)}</h1><p>{head}</p></header>"
            f"<nav>{nav}</nav><main>{main}</main></body></html>")
