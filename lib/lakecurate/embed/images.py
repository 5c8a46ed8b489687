"""Image bytes to model input, with Pillow and numpy only (no torchvision at run time).

The transform is torchvision's classic evaluation transform, step for step, so weights trained
with ``Resize(s) -> CenterCrop(c) -> ToTensor -> Normalize`` see the same pixels here:
decode, convert to RGB, resize the shorter side to ``resize`` with Pillow (as torchvision does for
PIL input), cut the centre ``crop`` square with torchvision's rounding, scale to [0, 1], then
subtract the mean and divide by the standard deviation per channel.

One bad file must not fail a batch of a billion-row job: every problem (empty, oversized,
undecodable, truncated, a decompression bomb) becomes a reject with a reason, and the caller
keeps going with the rest.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from lakecurate.embed._deps import available, require
from lakecurate.embed.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec
from lakecurate.errors import ConfigError

log = logging.getLogger(__name__)

#: torchvision's resize-then-crop convention for 224 crops (256 / 224)
DEFAULT_CROP_PCT = 0.875
DEFAULT_CROP = 224


class ImageRejected(Exception):
    """One image cannot be used; ``reason`` goes to the rejects table."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImagePreprocess:
    """The resolved transform for one image encoder (all sizes in pixels)."""

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 89_478_485

    def __call__(self, data: Any) -> np.ndarray:
        """Decode and transform one image to a float32 ``(3, crop, crop)`` array, or raise ImageRejected."""
        image = open_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        return self.transform(image)

    def transform(self, image: Any) -> np.ndarray:
        """The torchvision-equivalent transform of a decoded RGB Pillow image."""
        Image = require("PIL.Image", "image decoding")
        resample = getattr(Image.Resampling, self.interpolation.upper())
        w, h = image.size
        if w <= h:
            new_w, new_h = self.resize, int(self.resize * h / w)
        else:
            new_w, new_h = int(self.resize * w / h), self.resize
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample)
        # torchvision CenterCrop rounding, so crops match pixel for pixel
        top = int(round((new_h - self.crop) / 2.0))
        left = int(round((new_w - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def check_image_bytes(data: Any, *, max_bytes: int) -> Optional[str]:
    """The reason ``data`` cannot be an image file before decoding, or None (cheap: no decode)."""
    if data is None:
        return "null image bytes"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return f"image must be bytes; got {type(data).__name__}"
    size = len(data)
    if size == 0:
        return "empty image (0 bytes)"
    if size > max_bytes:
        return f"image is {size} bytes, over encoder.max_bytes={max_bytes}"
    return None


def open_image(data: Any, *, max_bytes: int, max_pixels: int) -> Any:
    """Fully decode ``data`` into an RGB Pillow image, or raise ImageRejected with the reason."""
    Image = require("PIL.Image", "image decoding")
    reason = check_image_bytes(data, max_bytes=max_bytes)
    if reason is not None:
        raise ImageRejected(reason)
    try:
        with warnings.catch_warnings():
            # the pixel limit below is ours; Pillow's warning would only be noise in worker logs
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"image too large to decode safely: {exc}") from None
    except Exception as exc:  # UnidentifiedImageError, SyntaxError from broken headers, ...
        raise ImageRejected(f"undecodable image: {type(exc).__name__}: {exc}") from None
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageRejected(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageRejected(f"image is {w}x{h} = {w * h} pixels, over encoder.max_pixels={max_pixels}")
    try:
        image.load()
        return image.convert("RGB")
    except OSError as exc:
        kind = "truncated image" if "truncated" in str(exc).lower() else "undecodable image"
        raise ImageRejected(f"{kind}: {exc}") from None
    except Exception as exc:
        raise ImageRejected(f"undecodable image: {type(exc).__name__}: {exc}") from None


def decoded_chunks(
    images: Sequence[Any], preprocess: ImagePreprocess, chunk_size: int, pool: Optional[Executor] = None
) -> Iterator[tuple[int, Optional[np.ndarray], list[int], list[tuple[int, str]]]]:
    """Yield ``(start, pixels (k, 3, c, c) or None, kept indices, rejects)`` per chunk of the input.

    Indices are positions in ``images``. Decoding chunk by chunk bounds memory (a 10k-row Arrow
    batch of decoded 224 px images is 6 GB); with a thread pool the next chunk decodes while the
    caller runs the model on this one.
    """

    def submit(start: int) -> list[Any]:
        chunk = images[start : start + chunk_size]
        if pool is None:  # decoded when collected below, one chunk in memory at a time
            return list(chunk)
        return [pool.submit(_try, preprocess, item) for item in chunk]

    starts = range(0, len(images), chunk_size)
    pending = submit(0) if len(images) else []
    for pos, start in enumerate(starts):
        current = pending
        if pos + 1 < len(starts):
            pending = submit(starts[pos + 1])
        arrays: list[np.ndarray] = []
        kept: list[int] = []
        rejects: list[tuple[int, str]] = []
        for offset, item in enumerate(current):
            value = _try(preprocess, item) if pool is None else item.result()
            if isinstance(value, str):
                rejects.append((start + offset, value))
            else:
                arrays.append(value)
                kept.append(start + offset)
        yield start, (np.stack(arrays) if arrays else None), kept, rejects


def _try(preprocess: ImagePreprocess, data: Any) -> Any:
    """An array, or the reject reason as a str (exceptions do not cross the thread pool cheaply)."""
    try:
        return preprocess(data)
    except ImageRejected as exc:
        return exc.reason


def resolve_preprocess(spec: EncoderSpec, model_defaults: Optional[dict[str, Any]] = None) -> ImagePreprocess:
    """The transform for ``spec``: explicit spec values, else the model's own, else ImageNet 256/224."""
    d = model_defaults or {}
    crop = spec.crop_size or d.get("crop")
    if crop is None:
        crop = spec.image_size if spec.image_size is not None and spec.image_size < DEFAULT_CROP else DEFAULT_CROP
    resize = spec.image_size
    if resize is None:
        # the model's resize only goes with the model's crop; a custom crop keeps the ratio instead
        resize = d.get("resize") if d.get("crop") == crop and d.get("resize") else int(math.floor(crop / DEFAULT_CROP_PCT))
    if resize < crop:
        raise ConfigError(f"encoder.image_size={resize} must be >= encoder.crop_size={crop}")
    return ImagePreprocess(
        resize=int(resize),
        crop=int(crop),
        mean=spec.mean or tuple(d.get("mean") or IMAGENET_MEAN),  # type: ignore[arg-type]
        std=spec.std or tuple(d.get("std") or IMAGENET_STD),  # type: ignore[arg-type]
        interpolation=spec.interpolation or d.get("interpolation") or "bilinear",
        max_bytes=spec.max_bytes,
        max_pixels=spec.max_pixels,
    )


def timm_defaults(model: Any) -> dict[str, Any]:
    """A timm model's own evaluation transform (its pretrained_cfg), in ImagePreprocess terms."""
    timm_data = require("timm.data", "a timm architecture")
    cfg = timm_data.resolve_data_config({}, model=model)
    crop = int(cfg["input_size"][-1])
    return {
        "crop": crop,
        "resize": int(math.floor(crop / float(cfg.get("crop_pct") or DEFAULT_CROP_PCT))),
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "interpolation": _known_interpolation(cfg.get("interpolation")),
    }


def torchvision_defaults(name: str) -> dict[str, Any]:
    """A torchvision architecture's evaluation transform, read from its DEFAULT weights' metadata.

    Only the metadata is read (``weights.transforms()`` builds the transform object); nothing is
    downloaded. Architectures without published weights give ``{}`` and the ImageNet default.
    """
    if not available("torchvision"):
        return {}
    import torchvision.models as tvm

    try:
        transform = tvm.get_model_weights(name).DEFAULT.transforms()
    except Exception as exc:  # no weights enum, or a transform of another shape (video, detection)
        log.debug("no torchvision preprocessing metadata for %r: %s", name, exc)
        return {}
    out: dict[str, Any] = {}
    for key, attr in (("crop", "crop_size"), ("resize", "resize_size")):
        value = getattr(transform, attr, None)
        if isinstance(value, (list, tuple)) and len(value) == 1:
            out[key] = int(value[0])
    for key in ("mean", "std"):
        value = getattr(transform, key, None)
        if value is not None and len(value) == 3:
            out[key] = tuple(float(v) for v in value)
    interpolation = getattr(transform, "interpolation", None)
    out["interpolation"] = _known_interpolation(getattr(interpolation, "value", interpolation))
    return out


def probe_image_bytes(size: int = 64) -> bytes:
    """A small valid PNG, to learn a custom image encoder's output dimension."""
    Image = require("PIL.Image", "image decoding")
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


def _known_interpolation(value: Any) -> Optional[str]:
    value = str(value).lower() if value is not None else None
    return value if value in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming") else None
