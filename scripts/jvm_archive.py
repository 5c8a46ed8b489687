"""Writes a JVM class-data-sharing archive of the classes a lakecurate job loads, for the test suite.

Usage: ``python scripts/jvm_archive.py OUT.jsa``. The suite starts some sixty driver JVMs (its
sessions, the CLI jobs it starts and kills, spark-submit, the Connect server); each spends seconds
loading and verifying the same few thousand Spark, Parquet and Arrow classes. With the archive
(``-XX:SharedArchiveFile``, which ``make test`` passes when this wrote one) they are mapped
ready-parsed instead: a cold 1,200-row ``lakecurate run`` (dedup, cluster, sample, report) went
from 32-33 s to 25-26 s on this 2-core machine.

The archive is written when the JVM exits normally (``-XX:ArchiveClassesAtExit``), so this runs
one small job of every stage the suite runs most (a curation with de-duplication and the report on
a Parquet input, then a nightly incremental dedup, assign and top-up on the grown input) in a
session of its own and stops it. A JVM of another build, or on another class path, ignores the
archive and loads its classes as before; nothing here changes what a test computes.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings


def main(out: str) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lakecurate.core.synthetic import redundant_pool
    from lakecurate.pipeline import run
    from lakecurate.plan import load_plan
    from lakecurate.spark.arrow import matrix_to_list_array

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    out = os.path.abspath(out)
    partial = f"{out}.partial"  # renamed once whole: a killed dump never leaves a torn archive under the real name
    # -Xlog:disable: the dump names every class it leaves out (generated, signed jars), a thousand lines
    os.environ["SPARK_SUBMIT_OPTS"] = f"{os.environ.get('SPARK_SUBMIT_OPTS', '')} -Xlog:disable -XX:ArchiveClassesAtExit={partial}".strip()
    with tempfile.TemporaryDirectory(prefix="lakecurate-jsa-") as tmp:
        p = redundant_pool(1200, 8, 300, copies_alpha=1.1, n_concepts=20, seed=2)
        ids = np.arange(len(p.x), dtype=np.int64)
        first, grown = os.path.join(tmp, "first"), os.path.join(tmp, "grown")
        os.makedirs(first)
        os.makedirs(grown)
        table = pa.table({"id": pa.array(ids[:1000]), "embedding": matrix_to_list_array(p.x[:1000]),
                          "item": pa.array(p.item[:1000].astype("int32"))})
        pq.write_table(table, os.path.join(first, "part-0.parquet"))
        pq.write_table(table, os.path.join(grown, "part-0.parquet"))
        pq.write_table(pa.table({"id": pa.array(ids[1000:]), "embedding": matrix_to_list_array(p.x[1000:]),
                                 "item": pa.array(p.item[1000:].astype("int32"))}), os.path.join(grown, "part-1.parquet"))
        spark_cfg = {"master": "local[2]", "partitions": 2, "conf": {"spark.sql.shuffle.partitions": 2, "spark.ui.enabled": False}}
        lake = {"root": os.path.join(tmp, "lake")}
        clustering = {"n_clusters": [24, 6], "resample_size": [1, 3], "n_resampling_steps": 1, "n_iter": 3}
        fit = {"name": "jsa", "stages": ["dedup", "cluster", "sample"], "lake": lake, "input": {"format": "parquet", "path": first},
               "dedup": {"eps": 0.01, "n_clusters": 4, "n_iter": 2}, "clustering": clustering, "sampling": {"target_size": 150},
               "report": {"label_column": "item"}, "spark": spark_cfg}
        nightly = {**fit, "name": "jsa-nightly", "stages": ["dedup", "assign", "sample"], "input": {"format": "parquet", "path": grown},
                   "dedup": {**fit["dedup"], "mode": "incremental"}, "sampling": {"target_size": 170, "mode": "top_up"},
                   "report": {"label_column": None}}
        from pyspark import SparkContext

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a small tree's warnings: not what this is for
                run(load_plan(data=fit))  # the session the CLI would start
                run(load_plan(data=nightly))
        finally:
            gateway = SparkContext._gateway
            if SparkContext._active_spark_context is not None:
                SparkContext._active_spark_context.stop()
            if gateway is not None and getattr(gateway, "proc", None) is not None:
                gateway.proc.stdin.close()  # the launcher's signal to exit: the JVM exits normally and writes the archive
                gateway.proc.wait(timeout=300)
    if not os.path.exists(partial):
        print(f"jvm_archive: the JVM wrote no archive at {partial}; the suite runs without one", file=sys.stderr)
        return 1
    os.replace(partial, out)
    print(f"jvm_archive: {out} ({os.path.getsize(out) / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
