"""The HTML report as a person gets it: written by a real `lakecurate run` (fresh process) over an
input with image bytes, checked against the run's tables, rendered in headless Chromium, and the
notebooks in notebooks/ executed against the same lake."""

from __future__ import annotations

import colorsys
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lakecurate.config import LakeConfig
from lakecurate.core.metrics import covered
from lakecurate.core.synthetic import redundant_pool
from lakecurate.lake import Lake, read_delta_files

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.spark]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N, DIM, ITEMS, CONCEPTS, TARGET = 3000, 32, 1200, 40, 600
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def env() -> dict:
    e = dict(os.environ)
    e["PYSPARK_PYTHON"] = e["PYSPARK_DRIVER_PYTHON"] = sys.executable
    e["PYTHONPATH"] = os.path.join(ROOT, "lib") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def item_png(item: int, concept: int) -> bytes:
    """A 32 x 32 image: its colour says the concept, its stripes the item (copies look the same)."""
    from PIL import Image, ImageDraw

    r, g, b = (int(255 * v) for v in colorsys.hsv_to_rgb((concept * 0.618) % 1.0, 0.75, 0.9))
    img = Image.new("RGB", (32, 32), (r, g, b))
    draw = ImageDraw.Draw(img)
    for k in range(item % 5 + 1):
        draw.line([(0, 4 + 6 * k), (31, 4 + 6 * k)], fill=(20, 20, 20), width=2)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real run (dedup, cluster, sample, report) over a redundant pool with image bytes."""
    base = tmp_path_factory.mktemp("report")
    pool = redundant_pool(N, DIM, ITEMS, n_concepts=CONCEPTS, copy_noise=0.02, seed=3)
    pngs = {}
    images = [pngs.setdefault(int(i), item_png(int(i), int(c))) for i, c in zip(pool.item, pool.concept)]
    table = pa.table({"id": pa.array(np.arange(N), pa.int64()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(pool.x.ravel()), DIM).cast(pa.list_(pa.float32())),
                      "concept": pa.array([f"concept-{c:02d}" for c in pool.concept]), "image": pa.array(images, pa.binary())})
    src = base / "input"
    src.mkdir()
    pq.write_table(table, src / "part-0.parquet")
    lake = str(base / "lake")
    overrides = [f"lake.root={lake}", "name=report-e2e", "stages=[dedup,cluster,sample]", "input.format=parquet", f"input.path={src}",
                 "input.synthetic=null", "clustering.n_clusters=[60,12]", "clustering.n_resampling_steps=2",
                 "clustering.resample_size=[1,3]", "clustering.n_iter=6", "clustering.metric=cosine", f"sampling.target_size={TARGET}",
                 "report.label_column=concept", "dedup.eps=0.002", "spark.partitions=2", "spark.master=local[2]"]
    cmd = [sys.executable, "-m", "lakecurate.cli", "run", os.path.join(ROOT, "conf", "demo.yaml"), *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = re.search(r"report: (\S+index\.html)", out.stdout)
    assert printed, out.stdout[-2000:]
    run_id = re.search(r"run (\S+) finished", out.stdout).group(1)
    return {"lake": lake, "run_id": run_id, "page": printed.group(1), "input": table, "stdout": out.stdout}


def test_the_run_writes_a_self_contained_page_with_its_figures(run):
    page = run["page"]
    assert page == os.path.join(run["lake"], "reports", run["run_id"], "index.html")
    html = open(page, encoding="utf-8").read()
    for section in ("tree", "balance", "map", "guidance", "dedup", "examples", "convergence", "timings", "config"):
        assert f'id="{section}"' in html, section
    # nothing is fetched: every image is a data URI, no script, no external link
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    assert "<script" not in html
    pngs = sorted(f for f in os.listdir(os.path.dirname(page)) if f.endswith(".png"))
    assert pngs == sorted(["cluster_sizes.png", "lorenz.png", "concepts.png", "centroids.png", "guidance.png", "duplicates.png",
                           "convergence.png", "timings.png"])
    assert html.count('class="thumb"') >= 20  # the example rows show their images
    # a newcomer is told what good looks like, and what the numbers are (issue 31)
    assert html.count('class="good"') >= 5
    assert "evens the top of the tree, not level 1" in html
    assert "expected counts, not a drawn subset" in html and "curated: concept with ≥ 10 rows" in html
    assert re.search(r"The two axes explain \d+% of the centroids' variance", html)


def test_what_the_report_shows_agrees_with_the_tables(run):
    from lakecurate.report.gather import gather

    lake = Lake(None, LakeConfig(root=run["lake"]))
    data = gather(lake, run["run_id"])
    part = {"run_id": run["run_id"]}
    curated = read_delta_files(os.path.join(run["lake"], "curated"), partition=part, columns=["id", "cluster"])
    dups = read_delta_files(os.path.join(run["lake"], "duplicates"), partition=part, columns=["id", "kept_id"])
    # per-cluster counts, and the guidance at the run's own target is what the sampler drew
    assert data.curated.sum() == TARGET == curated.num_rows
    assert np.array_equal(data.curated, np.bincount(curated.column("cluster").to_numpy(), minlength=60))
    at_target = next(g for g in data.guidance if g["target_size"] == TARGET)
    assert at_target["level1"] == covered(data.curated, (10, 100, 1000))
    assert [g["target_size"] for g in data.guidance] == sorted({g["target_size"] for g in data.guidance}, reverse=True)
    assert data.random.sum() == TARGET and np.all(data.random <= data.levels[0].sizes)
    # per-concept counts: the pool's are the input's, the curated ones the curated rows' labels
    concept = dict(zip(run["input"].column("id").to_pylist(), run["input"].column("concept").to_pylist()))
    names = data.labels.names
    pool = dict(zip(*np.unique(run["input"].column("concept").to_numpy(zero_copy_only=False), return_counts=True)))
    assert {n: int(c) for n, c in zip(names, data.labels.totals["pool"])} == {k: int(v) for k, v in pool.items()}
    cur = dict(zip(*np.unique([concept[i] for i in curated.column("id").to_pylist()], return_counts=True)))
    assert {n: int(c) for n, c in zip(names, data.labels.totals["curated"]) if c} == {k: int(v) for k, v in cur.items()}
    # duplicate groups: sizes from the duplicates table, the kept row never removed itself
    assert data.dedup.removed == dups.num_rows > 0
    removed = set(dups.column("id").to_pylist())
    for g in data.dedup.groups:
        assert g.size == pc.sum(pc.equal(dups.column("kept_id"), g.kept["id"])).as_py()
        assert g.kept["id"] not in removed and {r["id"] for r in g.removed} <= removed
        assert g.kept["image"] is not None  # its payload was found in the input
    # example rows are curated rows of the cluster they are shown under
    cluster_of = dict(zip(curated.column("id").to_pylist(), curated.column("cluster").to_pylist()))
    assert {e.kind for e in data.examples} == {"largest", "smallest", "random"}
    for e in data.examples:
        assert e.rows and all(cluster_of[r["id"]] == e.cluster_id for r in e.rows)
        assert all(r["concept"] == concept[r["id"]] for r in e.rows)


def test_lakecurate_report_writes_it_again_and_names_a_missing_run(run, capsys):
    from lakecurate.cli import main

    os.remove(run["page"])
    assert main(["report", run["run_id"], "--lake", run["lake"]]) == 0
    assert capsys.readouterr().out.strip() == f"report of run {run['run_id']}: {run['page']}"
    assert 'id="examples"' in open(run["page"], encoding="utf-8").read()
    assert main(["report", "no-such-run", "--lake", run["lake"]]) == 2
    assert "run 'no-such-run' is not in the runs table" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: scripts/setup.sh installs Debian's chromium as root; "
                                               "without it the report is not rendered in a browser")
def test_the_page_renders_in_chromium_with_figures_and_thumbnails(run, tmp_path):
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]}"))
        page.goto("file://" + run["page"], wait_until="load")
        # as it opens: long parts folded, so the page stays short (issue 31: a 6,000-row run's page was 11,000 px)
        folded_height = page.evaluate("document.documentElement.scrollHeight")
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        images = page.evaluate("Array.from(document.images).map(i => ({cls: i.className, w: i.naturalWidth, h: i.naturalHeight,"
                               " shown: i.getBoundingClientRect().width}))")
        # no text runs out of its box: example rows, cards, table cells
        overflow = page.evaluate("Array.from(document.querySelectorAll('.row, .card, td, th, p, li, figcaption'))"
                                 ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.className + ':' + e.textContent.slice(0, 60))")
        # example rows use the width of their card (they were ~170 px inside ~370 px cards)
        widths = page.evaluate("Array.from(document.querySelectorAll('#examples .row')).map(r => ({card: r.closest('.card').clientWidth,"
                               " tile: r.classList.contains('tile'), w: r.getBoundingClientRect().width}))")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        title = page.title()
        browser.close()
    assert errors == []
    assert title == f"lakecurate report: {run['run_id']}"
    assert folded_height < 7000, f"the page is {folded_height} px tall as it opens"
    assert overflow == [], overflow
    # a row of text takes its card's width; a row with a picture is a thumbnail tile
    assert widths and all(w["w"] <= 150 if w["tile"] else w["w"] > 0.85 * w["card"] for w in widths), widths
    figures = [i for i in images if i["cls"] != "thumb"]
    thumbs = [i for i in images if i["cls"] == "thumb"]
    assert len(figures) == 8 and all(i["w"] > 300 and i["shown"] > 200 for i in figures)
    assert len(thumbs) >= 20 and all(0 < i["w"] <= 112 and i["shown"] > 0 for i in thumbs)
    assert os.path.getsize(tmp_path / "report.png") > 100_000


def test_the_notebooks_run_headless_against_the_run(run):
    import nbformat
    from nbclient import NotebookClient

    folder = os.path.join(ROOT, "notebooks")
    books = sorted(f for f in os.listdir(folder) if f.endswith(".ipynb"))
    assert books
    os.environ["LAKECURATE_LAKE"] = run["lake"]  # the kernel inherits it
    try:
        for name in books:
            nb = nbformat.read(os.path.join(folder, name), as_version=4)
            NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": folder}}).execute()
            outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
            assert not [o for o in outputs if o.output_type == "error"], name
            text = json.dumps([o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs])
            assert run["run_id"] in text, name  # it explored this run, not another lake's
            assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} drew no figure"
    finally:
        del os.environ["LAKECURATE_LAKE"]
