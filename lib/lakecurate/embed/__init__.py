"""The encoder layer of the ``embed`` stage: raw texts and image files to embedding vectors.

Pure Python + torch, no Spark: the Spark stage gets an encoder with
:func:`get_cached_encoder` inside its Arrow UDF and calls ``encode_texts`` / ``encode_images``
per batch. Importing this package needs neither torch nor Pillow (they are imported when an
encoder is loaded), so a driver can validate an :class:`EncoderSpec` anywhere.

>>> spec = EncoderSpec(kind="text")                      # bundled all-MiniLM-L6-v2, offline
>>> enc = get_cached_encoder(spec, num_threads=4)       # doctest: +SKIP
>>> enc.name, enc.dim                                    # doctest: +SKIP
('sentence-transformers/all-MiniLM-L6-v2', 384)
"""

from __future__ import annotations

from lakecurate.embed.device import available_cpus, select_device, use_half_precision
from lakecurate.embed.encoders import (
    EncodedImages,
    Encoder,
    bundled_minilm_dir,
    check_paths,
    clear_encoder_cache,
    find_text_rejects,
    get_cached_encoder,
    load_encoder,
    model_label,
)
from lakecurate.embed.images import ImagePreprocess, ImageRejected
from lakecurate.embed.spec import DEFAULT_TEXT_MODEL, EncoderSpec

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "EncoderSpec",
    "Encoder",
    "EncodedImages",
    "ImagePreprocess",
    "ImageRejected",
    "available_cpus",
    "bundled_minilm_dir",
    "check_paths",
    "clear_encoder_cache",
    "find_text_rejects",
    "get_cached_encoder",
    "load_encoder",
    "model_label",
    "select_device",
    "use_half_precision",
]
