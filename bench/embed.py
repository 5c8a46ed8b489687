"""Benchmark: the Spark ``embed`` stage against ``SentenceTransformer.encode`` on the same texts.

Same model (the bundled all-MiniLM-L6-v2), same texts, same machine, one process::

    .venv/bin/python bench/embed.py --rows 20000

Prints rows/s of

* ``direct t threads``: ``SentenceTransformer.encode`` in this process with ``torch.set_num_threads(t)``
  (the model is loaded and warmed up before the clock starts); the ratio column divides by the
  fastest direct row, so the Spark stage is compared with the best a person gets by hand;
* ``spark cold``: the whole stage (``pipeline.run`` with ``stages: [embed]``: driver probe, source
  read, encode on the executors, Delta commits) on Python workers that start, import torch and
  load the model inside the timed run, as a first job on a cluster does;
* ``spark warm T x t``: the same stage again on workers that already hold the model, with T
  encoding tasks of t torch threads each (e.g. 2 x 1: one worker per core, single-threaded torch;
  1 x 2: one worker with two threads);

and each one's ratio to ``direct``. Texts are generated (no download). Not a test: figures only.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("bench.embed")

# everyday words, so the tokenizer sees realistic word pieces (about 1.3 tokens per word)
WORDS = """the of and to in is was for on are with as his they be at one have this from or had by word but what
some we can out other were all there when up use your how said an each she which do their time if will way about
many then them write would like so these her long make thing see him two has look more day could go come did
number sound no most people my over know water than call first who may down side been now find any new work part
take get place made live where after back little only round man year came show every good me give our under name
very through just form sentence great think say help low line differ turn cause much mean before move right boy
old too same tell does set three want air well also play small end put home read hand port large spell add even
land here must big high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country found answer school
grow study still learn plant cover food sun four between state keep eye never last let thought city tree cross
farm hard start might story saw far sea draw left late run while press close night real life few north open seem
together next white children begin got walk example ease paper group always music those both mark often letter
until mile river car feet care second book carry took science eat room friend began idea fish mountain stop once
base hear horse cut sure watch color face wood main enough plain girl usual young ready above ever red list though
feel talk bird soon body dog family direct pose leave song measure door product black short numeral class wind
question happen complete ship area half rock order fire south problem piece told knew pass since top whole king
space heard best hour better true during hundred five remember step early hold west ground interest reach fast
verb sing listen six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit power town fine
certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct able pound done
beauty drive stood contain front teach week final gave green oh quick develop ocean warm free minute strong
special mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue object
decide surface deep moon island foot system busy test record boat common gold possible plane stead dry wonder
laugh thousand ago ran check game shape equate hot miss brought heat snow tire bring yes distant fill east paint
language among""".split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences of 6..40 words (a caption-to-paragraph mix), deterministic."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 41, size=n)
    vocab = np.array(WORDS)
    return [" ".join(vocab[rng.integers(0, len(vocab), size=k)]).capitalize() + "." for k in lengths]


def time_direct(texts: list[str], threads: int, batch_size: int) -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    from lakecurate.embed import bundled_minilm_dir

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(bundled_minilm_dir()), device="cpu")
    model.encode(texts[:256], batch_size=batch_size)  # warm-up: allocator, kernels
    t0 = time.perf_counter()
    out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    seconds = time.perf_counter() - t0
    assert out.shape == (len(texts), 384)
    return seconds


def time_spark(spark, src: str, lake_root: str, *, tasks: int, threads: int, batch_rows: int, batch_size: int) -> tuple[float, dict]:
    from lakecurate.pipeline import run
    from lakecurate.plan import load_plan

    shutil.rmtree(lake_root, ignore_errors=True)
    cfg = load_plan(
        alone="embed",
        data={
            "name": "bench",
            "lake": {"root": lake_root},
            "embed": {
                "source": {"format": "parquet", "path": src},
                "encoder": {"batch_size": batch_size},
                "batch_rows": batch_rows,
                "partitions": tasks,
                "threads_per_task": threads,
            },
        },
    )
    t0 = time.perf_counter()
    result = run(cfg, spark=spark)
    return time.perf_counter() - t0, result.stages["embed"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="Spark local[cores] and direct torch threads")
    p.add_argument("--batch-rows", type=int, default=4096, help="embed.batch_rows (Arrow batch per worker call)")
    p.add_argument("--batch-size", type=int, default=32, help="model batch size, the same for direct and Spark")
    p.add_argument("--layouts", default="", help="warm layouts as TASKSxTHREADS,... (default: Cx1,1xC)")
    p.add_argument("--direct-threads", default="", help="torch threads of the direct runs, comma-separated (default: 1,C)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "sentence_transformers", "lakecurate.lake", "lakecurate.runlog", "lakecurate.pipeline", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    c = args.cores
    layouts = [tuple(int(v) for v in s.split("x")) for s in (args.layouts or f"{c}x1,1x{c}").split(",")]
    direct_threads = [int(v) for v in (args.direct_threads or f"1,{c}").split(",")]

    from lakecurate.spark.session import get_spark

    work = args.workdir or tempfile.mkdtemp(prefix="lakecurate-bench-embed-")
    src = os.path.join(work, "texts.parquet")
    texts = make_texts(args.rows)
    pq.write_table(pa.table({"id": pa.array(np.arange(args.rows, dtype=np.int64)), "text": pa.array(texts)}), src)
    spark = get_spark(f"local[{c}]", "bench-embed", {"spark.sql.shuffle.partitions": str(2 * c)})
    spark.range(1).count()  # JVM warm, outside every timing

    rows: list[tuple[str, float, float]] = []
    for threads in direct_threads:
        log.info("direct SentenceTransformer.encode on %d texts, %d thread(s)", args.rows, threads)
        direct_s = time_direct(texts, threads, args.batch_size)
        rows.append((f"direct encode, {threads} thread(s)", direct_s, args.rows / direct_s))

    first = layouts[0]
    log.info("spark cold (%dx%d)", *first)
    cold_s, m = time_spark(spark, src, os.path.join(work, "lake"), tasks=first[0], threads=first[1], batch_rows=args.batch_rows, batch_size=args.batch_size)
    assert m["embedded"] == args.rows, m
    rows.append((f"spark cold {first[0]}x{first[1]} (stage)", cold_s, args.rows / cold_s))
    for tasks, threads in layouts:
        log.info("spark warm (%dx%d)", tasks, threads)
        warm_s, m = time_spark(spark, src, os.path.join(work, "lake"), tasks=tasks, threads=threads, batch_rows=args.batch_rows, batch_size=args.batch_size)
        assert m["embedded"] == args.rows, m
        rows.append((f"spark warm {tasks}x{threads} (stage)", warm_s, args.rows / warm_s))
        rows.append((f"  of which encode job {tasks}x{threads}", m["encode_seconds"], args.rows / m["encode_seconds"]))

    direct_rate = max(rate for name, _, rate in rows if name.startswith("direct"))
    lines = [
        f"embed benchmark: {args.rows} texts, all-MiniLM-L6-v2, {c} cores, Arrow batch {args.batch_rows}, model batch {args.batch_size}",
        f"{'mode':<36}{'seconds':>10}{'rows/s':>10}{'ratio':>8}",
    ]
    for name, seconds, rate in rows:
        lines.append(f"{name:<36}{seconds:>10.1f}{rate:>10.0f}{rate / direct_rate:>8.2f}")
    print("\n".join(lines))
    spark.stop()
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    sys.exit(main())
