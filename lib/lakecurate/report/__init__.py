"""The HTML report of a run: ``<lake>/reports/<run_id>/index.html`` and its PNGs.

Three steps, each its own module: :mod:`~lakecurate.report.gather` reads what the run's tables
hold into plain data (delta-rs + pyarrow, no Spark, O(clusters) memory);
:mod:`~lakecurate.report.figures` draws it with matplotlib; :mod:`~lakecurate.report.page` puts
figures, tables and example rows into one self-contained page. ``lakecurate report RUN_ID``
calls :func:`write_report`, and so does every ``lakecurate run`` at its end.
"""

from __future__ import annotations

import logging
import time

from lakecurate.lake import get_bytes

log = logging.getLogger(__name__)

REPORTS = "reports"


def report_relpath(run_id: str, name: str = "index.html") -> str:
    return f"{REPORTS}/{run_id}/{name}"


def write_report(lake, run_id: str, *, seed: int = 0) -> str:
    """Build the report of ``run_id`` from ``lake``'s tables and write it; returns the page's path."""
    from lakecurate.report.figures import FIGURES
    from lakecurate.report.gather import gather
    from lakecurate.report.page import Thumbnails, render

    t0 = time.perf_counter()
    log.info("report %s: reading the run's tables under %s", run_id, lake.root)
    data = gather(lake, run_id, seed=seed)
    log.info("report %s: tables read in %.1fs; drawing the figures", run_id, time.perf_counter() - t0)
    figures = {}
    for name, draw, _ in FIGURES:
        png = draw(data)
        if png is not None:
            figures[name] = png
            lake.put_file(report_relpath(run_id, name), png)
    thumbs = Thumbnails(lambda path: get_bytes(path, lake.options))
    page = render(data, figures, lake_root=lake.root, thumbs=thumbs)
    lake.put_file(report_relpath(run_id), page.encode("utf-8"))  # last: a page on disk has all its figures
    path = lake.file_path(report_relpath(run_id))
    log.info("report %s: %d figures, %d thumbnails, written in %.1fs: %s", run_id, len(figures), thumbs.count,
             time.perf_counter() - t0, path)
    return path
