"""The embed stage on local Spark: same numbers as the model, rejects, incremental runs, CLI end to end."""

from __future__ import annotations

import html
import io
import os
import re
import textwrap
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable

from lakecurate.cli import main
from lakecurate.errors import ConfigError
from lakecurate.pipeline import run
from lakecurate.plan import load_plan

from builders import make_texts

pytestmark = pytest.mark.spark

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

def write_texts(path, ids, texts, source=None) -> str:
    cols = {"id": pa.array(ids, pa.int64()), "text": pa.array(texts, pa.string())}
    cols["source"] = pa.array(source if source is not None else [f"s{i % 3}" for i in range(len(ids))], pa.string())
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        os.remove(os.path.join(path, f))
    pq.write_table(pa.table(cols), os.path.join(path, "part-0.parquet"))
    return str(path)


def embed_config(lake_root, source: dict, encoder: dict | None = None, run_id: str = "r1", **embed):
    data = {
        "name": "t",
        "run_id": run_id,
        "lake": {"root": lake_root},
        "spark": {"master": "local[2]"},
        "embed": {"source": source, "encoder": encoder or {}, "batch_rows": 64, **embed},
    }
    return load_plan(data=data, alone="embed")


def table(lake_root, name):
    return DeltaTable(os.path.join(lake_root, name)).to_pandas()


@pytest.fixture(scope="module")
def direct_minilm():
    from sentence_transformers import SentenceTransformer

    from lakecurate.embed import bundled_minilm_dir

    return SentenceTransformer(str(bundled_minilm_dir()), device="cpu")


# ------------------------------------------------------------------------------------ text
@pytest.fixture(scope="module")
def text_run(spark, tmp_path_factory):
    """200 good texts plus a null text, a blank text and a null id, embedded once."""
    tmp = tmp_path_factory.mktemp("text")
    texts = make_texts(200, seed=1) + [None, "   ", "orphan without id"]
    ids = list(range(200)) + [200, 201, None]
    src = write_texts(tmp / "src", ids, texts)
    lake_root = str(tmp / "lake")
    cfg = embed_config(lake_root, {"format": "parquet", "path": src, "passthrough_columns": ["source"]}, run_id="first")
    return tmp, src, lake_root, texts, ids, run(cfg, spark=spark)


def test_text_embeddings_equal_the_models_own_output(text_run, direct_minilm):
    _, _, lake_root, texts, _, res = text_run
    emb = table(lake_root, "embeddings").sort_values("id")
    assert emb["id"].tolist() == list(range(200))
    assert set(emb["model"]) == {"sentence-transformers/all-MiniLM-L6-v2"} and set(emb["dim"]) == {384}
    assert emb["source"].tolist() == [f"s{i % 3}" for i in range(200)]
    got = np.stack(emb["embedding"].to_numpy()).astype(np.float32)
    want = direct_minilm.encode(texts[:200], batch_size=32, convert_to_numpy=True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bad_rows_go_to_rejects_and_the_counts_add_up(text_run):
    _, _, lake_root, _, _, res = text_run
    rej = table(lake_root, "rejects")
    reasons = {(None if np.isnan(r.id) else int(r.id)): r.reason for r in rej.itertuples()}
    assert reasons == {200: "null text", 201: "empty text", None: "null id"}
    assert set(rej["source"]) <= {"s0", "s1", "s2"}  # the pass-through columns locate a row without id
    m = res.stages["embed"]
    assert (m["source_rows"], m["embedded"], m["rejected"], m["already_embedded"], m["previously_rejected"]) == (203, 200, 3, 0, 0)
    assert m["source_rows"] == m["embedded"] + m["rejected"] + m["already_embedded"] + m["previously_rejected"]


def test_rerun_on_a_grown_source_embeds_only_the_new_ids(spark, text_run, direct_minilm):
    tmp, _, lake_root, texts, ids, _ = text_run
    grown_texts = texts + make_texts(50, seed=2)
    grown_ids = ids + list(range(300, 350))
    src = write_texts(tmp / "grown", grown_ids, grown_texts)
    source = {"format": "parquet", "path": src, "passthrough_columns": ["source"]}
    res = run(embed_config(lake_root, source, run_id="second"), spark=spark)
    m = res.stages["embed"]
    # the null-id row cannot be matched to an earlier reject, so it is rejected again
    assert (m["source_rows"], m["embedded"], m["rejected"], m["already_embedded"], m["previously_rejected"]) == (253, 50, 1, 200, 2)
    emb = table(lake_root, "embeddings")
    assert len(emb) == 250 and emb["id"].is_unique
    new = emb[emb.run_id == "second"].sort_values("id")
    assert new["id"].tolist() == list(range(300, 350))
    np.testing.assert_allclose(
        np.stack(new["embedding"].to_numpy()), direct_minilm.encode(grown_texts[203:]), rtol=1e-4, atol=1e-5
    )

    # unchanged: nothing embedded, no commit to the embeddings table (a clean source says "nothing
    # new to embed": see the end-to-end test); the null-id row cannot be recognised, so it is rejected again
    version = DeltaTable(os.path.join(lake_root, "embeddings")).version()
    again = run(embed_config(lake_root, source, run_id="third"), spark=spark).stages["embed"]
    assert (again["embedded"], again["rejected"], again["already_embedded"], again["previously_rejected"]) == (0, 1, 250, 2)
    assert DeltaTable(os.path.join(lake_root, "embeddings")).version() == version
    # ... and counted, but not written twice; nor are ids rejected again when retried
    retried = run(embed_config(lake_root, source, run_id="fourth", retry_rejects=True), spark=spark).stages["embed"]
    assert (retried["rejected"], retried["previously_rejected"], retried["rejects_written"]) == (3, 0, 0)
    rej = table(lake_root, "rejects")
    assert len(rej) == 3 and rej["id"].dropna().is_unique


# ------------------------------------------------------------------------------------ images
MAX_BYTES = 20_000


def png(color, size=(24, 18)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three small PNGs (one in a sub-folder), a corrupt PNG, an empty (0-byte) PNG, a noisy PNG over
    the size limit, a .txt."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    good = {"a.png": png((255, 0, 0)), "b.png": png((0, 128, 255), (30, 40)), "sub/c.png": png((10, 200, 10))}
    for name, data in good.items():
        (root / name).write_bytes(data)
    (root / "sub" / "broken.png").write_bytes(good["a.png"][:20] + b"\x00garbage" * 10)
    (root / "sub" / "empty.png").write_bytes(b"")  # Spark's binaryFile source does not even list it
    noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert len(buf.getvalue()) > MAX_BYTES
    (root / "huge.png").write_bytes(buf.getvalue())
    (root / "notes.txt").write_text("not an image")
    return root, good


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1)
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TinyCNN().eval()
    path = tmp_path_factory.mktemp("model") / "tiny.ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(path))
    return model, str(path)


def test_image_folder_embeds_good_files_and_rejects_corrupt_and_oversized(spark, image_folder, tiny_model, tmp_path):
    from lakecurate.embed import ImagePreprocess

    root, good = image_folder
    model, model_path = tiny_model
    encoder = {"kind": "image", "model": model_path, "image_size": 32, "crop_size": 28, "batch_size": 2, "max_bytes": MAX_BYTES}
    source = {"format": "files", "path": str(root), "glob": "*.png", "passthrough_columns": ["length"]}
    lake_root = str(tmp_path / "lake")
    m = run(embed_config(lake_root, source, encoder), spark=spark).stages["embed"]
    assert (m["source_rows"], m["embedded"], m["rejected"], m["dim"], m["model"]) == (6, 3, 3, 8, "tiny.ts.pt")

    emb = table(lake_root, "embeddings").sort_values("id")
    assert [p.split(str(root))[-1].lstrip("/") for p in emb["id"]] == ["a.png", "b.png", "sub/c.png"]
    got = np.stack(emb["embedding"].to_numpy())
    assert got.shape == (3, 8) and set(emb["dim"]) == {8}
    assert emb["length"].tolist() == [len(good[k]) for k in ("a.png", "b.png", "sub/c.png")]
    pre = ImagePreprocess(resize=32, crop=28)
    with torch.inference_mode():
        want = model(torch.from_numpy(np.stack([pre(good[k]) for k in ("a.png", "b.png", "sub/c.png")]))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    rej = table(lake_root, "rejects").set_index("id")["reason"]
    rej.index = [p.rsplit("/", 1)[-1] for p in rej.index]
    assert "undecodable image" in rej["broken.png"]
    assert rej["empty.png"] == "empty image (0 bytes)"
    assert rej["huge.png"].startswith("file is") and f"max_bytes={MAX_BYTES}" in rej["huge.png"]

    # the same files as an image-bytes column of a table give the same vectors, ids hashed or not
    names = ["a.png", "b.png", "sub/c.png"]
    pq.write_table(
        pa.table({"key": pa.array(names), "image": pa.array([good[k] for k in names], pa.binary())}),
        str(tmp_path / "bytes.parquet"),
    )
    source = {"format": "parquet", "path": str(tmp_path / "bytes.parquet"), "id_column": "key"}
    run(embed_config(str(tmp_path / "lake2"), source, encoder), spark=spark)
    by_table = table(str(tmp_path / "lake2"), "embeddings").sort_values("key")
    np.testing.assert_allclose(np.stack(by_table["embedding"].to_numpy()), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ custom encoders
CUSTOM_MODULE = """
import numpy as np

def char_stats(batch, dim=5):
    out = np.zeros((len(batch), dim), dtype=np.float32)
    for i, text in enumerate(batch):
        out[i, 0] = len(text)
        for j, ch in enumerate(text):
            out[i, 1 + (ord(ch) + j) % (dim - 1)] += 1.0
    return out
"""


def test_custom_encoder_by_import_path_runs_on_the_executors(spark, tmp_path, monkeypatch):
    mod_dir = tmp_path / "usercode"
    mod_dir.mkdir()
    (mod_dir / "lc_user_encoder.py").write_text(textwrap.dedent(CUSTOM_MODULE))
    monkeypatch.syspath_prepend(str(mod_dir))  # the driver imports it to learn the dimension
    spark.sparkContext.addPyFile(str(mod_dir / "lc_user_encoder.py"))  # how a team ships its code to executors
    import lc_user_encoder

    texts = make_texts(40, seed=4)
    src = write_texts(tmp_path / "src", list(range(40)), texts)
    encoder = {"kind": "custom", "import_path": "lc_user_encoder:char_stats", "kwargs": {"dim": 7}, "name": "charstats-7"}
    lake_root = str(tmp_path / "lake")
    m = run(embed_config(lake_root, {"format": "parquet", "path": src}, encoder), spark=spark).stages["embed"]
    assert (m["embedded"], m["dim"], m["model"]) == (40, 7, "charstats-7")
    emb = table(lake_root, "embeddings").sort_values("id")
    np.testing.assert_array_equal(np.stack(emb["embedding"].to_numpy()), lc_user_encoder.char_stats(texts, dim=7))

    # the same model name with another output dimension is refused before anything is encoded
    with pytest.raises(ConfigError, match="dimension 5 but table 'embeddings' already holds"):
        run(embed_config(lake_root, {"format": "parquet", "path": src}, {**encoder, "kwargs": {"dim": 5}}, run_id="r2"), spark=spark)
    assert len(table(lake_root, "embeddings")) == 40


def test_missing_model_path_is_a_config_error_before_spark_work(spark, tmp_path):
    src = write_texts(tmp_path / "src", [1, 2], ["a b", "c d"])
    lake_root = str(tmp_path / "lake")
    for encoder, message in (
        ({"kind": "text", "model": str(tmp_path / "no-such-model")}, "no such directory"),
        ({"kind": "image", "model": str(tmp_path / "missing.pt")}, "no such file"),
    ):
        cfg = embed_config(lake_root, {"format": "parquet", "path": src}, encoder)
        with pytest.raises(ConfigError, match=message):
            run(cfg, spark=spark)
    assert not os.path.exists(os.path.join(lake_root, "embeddings"))


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.html_report
def test_cli_embed_then_run_embed_cluster_sample_end_to_end(spark, tmp_path, capsys):
    texts = make_texts(300, seed=5)
    src = write_texts(tmp_path / "src", list(range(1000, 1300)), texts)
    lake_root = str(tmp_path / "lake")
    conf = {
        "name": "e2e",
        "stages": ["embed", "cluster", "sample"],
        "lake": {"root": lake_root},
        "embed": {"source": {"format": "parquet", "path": src, "passthrough_columns": ["source"]}, "encoder": {"normalize": True}},
        "clustering": {"n_clusters": [12, 3], "n_resampling_steps": 1, "resample_size": [1, 2], "n_iter": 5, "metric": "cosine"},
        "sampling": {"target_size": 100, "seed": 1},
        "spark": {"master": "local[2]", "partitions": 2},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(conf))

    # embed alone first (a scheduled ingest job), then the full run finds nothing new to embed
    assert main(["embed", str(path), "embed.batch_rows=128"]) == 0
    assert "embedded 300 new rows with sentence-transformers/all-MiniLM-L6-v2 (384-d)" in capsys.readouterr().out
    assert main(["run", str(path), "run_id=e2e-1"]) == 0
    out = capsys.readouterr().out
    assert "embedded 0 new rows" in out and "(nothing new to embed)" in out and "curated 100 of 300 rows" in out
    # its HTML report shows the example rows' texts, fetched from the embed source by id
    page = re.search(r"report: (\S+index\.html)", out).group(1)
    assert page == os.path.join(lake_root, "reports", "e2e-1", "index.html")
    shown = open(page, encoding="utf-8").read()
    assert sum(html.escape(t) in shown for t in texts) >= 12

    curated = table(lake_root, "curated")
    assert len(curated) == 100 and curated["id"].is_unique and set(curated["id"]) <= set(range(1000, 1300))
    clusters = table(lake_root, "clusters")
    assert sorted(clusters.groupby("level").size().tolist()) == [3, 12]
    emb = table(lake_root, "embeddings")
    norms = np.linalg.norm(np.stack(emb["embedding"].to_numpy()), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)

    # the source grows: the same `lakecurate run` (no run id given) is a new run, embeds only the new rows
    write_texts(tmp_path / "src", list(range(1000, 1340)), texts + make_texts(40, seed=6))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "skipped" not in out and "embedded 40 new rows" in out and "curated 100 of 340 rows" in out


def test_encoding_progress_counts_the_rows_tasks_have_done_and_nothing_new_costs_no_encoding(spark, tmp_path, monkeypatch, caplog):
    """Issue 31: the progress line said ``0/2 Spark tasks`` for minutes; it now sums the rows each
    running task reports (rows, rows/s, ETA). A rerun with nothing new reads the ids and stops:
    no encoding pass (no encode_seconds), and the counters' scratch folder is gone after a run."""
    import logging

    import lakecurate.spark.progress as progress_module

    monkeypatch.setattr(progress_module, "EVERY", 0.05)
    src = write_texts(tmp_path / "src", list(range(600)), make_texts(600, seed=5))
    lake_root = str(tmp_path / "lake")
    source = {"format": "parquet", "path": src}
    with caplog.at_level(logging.INFO, logger="lakecurate.progress"):
        first = run(embed_config(lake_root, source, run_id="p1", batch_rows=16), spark=spark).stages["embed"]
    assert first["embedded"] == 600
    lines = [r.getMessage() for r in caplog.records if r.name == "lakecurate.progress" and "encoding 600 new rows" in r.getMessage()]
    counted = [line for line in lines if re.search(r"[1-9][\d,]*/600 rows, [\d,]+ rows/s", line)]
    assert counted, lines
    assert any("ETA" in line for line in counted) or any("600/600 rows" in line for line in counted)
    assert not os.path.exists(os.path.join(lake_root, "_staging", "scratch")) or not any(
        "embed-progress" in d for d in os.listdir(os.path.join(lake_root, "_staging", "scratch")))
    again = run(embed_config(lake_root, source, run_id="p2"), spark=spark).stages["embed"]
    assert again["nothing_new"] and again["already_embedded"] == 600 and "encode_seconds" not in again
