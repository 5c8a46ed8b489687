"""Imports for the embed stage: optional packages (failing with the pip command that fixes them)
and user code named by import path.

torch, sentence-transformers and Pillow are the ``embed`` extra; torchvision, timm and
safetensors the ``images`` extra. None of them is needed to import lakecurate or to validate an
:class:`~lakecurate.embed.spec.EncoderSpec`, so every import here happens on first use.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from lakecurate.errors import ConfigError, MissingDependencyError

#: module -> the pip install that provides it (a PyPI torchvision must match the installed torch)
_PIP = {
    "torch": "pip install 'lakecurate[embed]' (or the torch build matching your CUDA)",
    "sentence_transformers": "pip install 'lakecurate[embed]'",
    "PIL": "pip install 'lakecurate[embed]' (Pillow)",
    "safetensors": "pip install safetensors",
    "torchvision": "pip install torchvision (the build matching your torch)",
    "timm": "pip install timm",
}


def require(module: str, why: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = _PIP.get(top, f"pip install {top}")
        raise MissingDependencyError(f"{why} needs the Python package {top!r}: {hint} ({exc})") from exc


def available(module: str) -> bool:
    """Whether ``module`` imports, for choosing between optional backends without raising."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def import_object(path: str, key: str) -> Any:
    """``pkg.module:attr.sub`` -> the object; ConfigError when the path is wrong, MissingDependencyError when the module's own imports fail."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"{key}={path!r}: no module named {exc.name!r} on this Python's path") from exc
        raise MissingDependencyError(f"{key}={path!r}: importing {module_name!r} failed: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{key}={path!r}: {module_name!r} has no attribute {attr!r}") from None
    return obj
