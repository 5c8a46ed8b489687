"""Torch image models from local files: a whole serialized model, or an architecture + weights.

Kept apart from the encoders because this is where the optional libraries live: torchvision and
timm are imported only when an architecture names them, and the weights are read without ever
unpickling code (safetensors, or ``torch.load(weights_only=True)``), so a file from a shared
bucket cannot run anything on the executors.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from lakecurate.embed._deps import available, import_object, require
from lakecurate.embed.images import timm_defaults, torchvision_defaults
from lakecurate.embed.spec import EncoderSpec
from lakecurate.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: checkpoint layouts that wrap the state dict one level down
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "teacher")


def load_image_module(spec: EncoderSpec, device: "torch.device") -> tuple[Any, dict[str, Any], str]:
    """``(module in eval mode on device, the architecture's preprocessing defaults, name)``."""
    if spec.model is not None:
        module = _load_serialized_module(spec.model, device)
        name = spec.name or Path(spec.model).name
        defaults: dict[str, Any] = {}
    else:
        assert spec.architecture is not None and spec.weights is not None
        module, defaults, source = _build_architecture(spec.architecture, dict(spec.kwargs))
        state = read_state_dict(spec.weights)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigError(
                f"encoder.weights={spec.weights!r} does not fit encoder.architecture={spec.architecture!r}: {exc}"
            ) from exc
        if spec.strip_head:
            _strip_classifier(module, source)
        name = spec.name or f"{spec.architecture}@{Path(spec.weights).name}"
        module = module.to(device)
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):  # some exported programs refuse mode switches; they are traced in eval
        pass
    if spec.half_precision and device.type == "cuda":  # the encoder logs why it is ignored elsewhere
        module = module.half()
    return module, defaults, name


def _load_serialized_module(path: str, device: "torch.device") -> Any:
    """A TorchScript archive (``torch.jit.save``) or an exported program (``.pt2``, ``torch.export.save``)."""
    torch = require("torch", "an image encoder")
    if path.endswith(".pt2"):
        try:
            program = torch.export.load(path)
            if device.type != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, device)
            return program.module()
        except Exception as exc:
            raise ConfigError(f"encoder.model={path!r} is not a loadable torch.export program (.pt2): {exc}") from exc
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in recent torch, but a user who saved one chose it
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location=device)
    except Exception as exc:
        raise ConfigError(
            f"encoder.model={path!r} is not a TorchScript archive (torch.jit.save): {exc}. "
            "For a state dict use encoder.architecture + encoder.weights; for torch.export use a .pt2 file"
        ) from exc


def _build_architecture(architecture: str, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], str]:
    """``(module with random init, preprocessing defaults, 'timm' | 'torchvision' | 'import')``."""
    torch = require("torch", "an image encoder")
    if ":" in architecture:
        factory = import_object(architecture, "encoder.architecture")
        try:
            module = factory(**kwargs)
        except Exception as exc:
            raise ConfigError(f"encoder.architecture={architecture!r} could not be built with kwargs={kwargs!r}: {exc}") from exc
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"encoder.architecture={architecture!r} built a {type(module).__name__}, not a torch.nn.Module")
        return module, {}, "import"
    source, _, name = architecture.rpartition("/")
    if not source:
        source = _which_library(name)
    if source == "timm":
        timm = require("timm", f"encoder.architecture={architecture!r}")
        if not timm.is_model(name):
            raise ConfigError(f"encoder.architecture={architecture!r}: timm has no model {name!r}")
        module = timm.create_model(name, pretrained=False, **kwargs)
        return module, timm_defaults(module), "timm"
    tvm = require("torchvision.models", f"encoder.architecture={architecture!r}")
    if name not in tvm.list_models():
        raise ConfigError(f"encoder.architecture={architecture!r}: torchvision has no model {name!r}")
    module = tvm.get_model(name, weights=None, **kwargs)
    return module, torchvision_defaults(name), "torchvision"


def _which_library(name: str) -> str:
    """A bare architecture name: torchvision's if it has one, else timm's."""
    has_tv, has_timm = available("torchvision"), available("timm")
    if not (has_tv or has_timm):
        raise MissingDependencyError(
            f"encoder.architecture={name!r} needs torchvision or timm: pip install timm, or torchvision "
            "(the build matching your torch); or give a TorchScript/.pt2 file as encoder.model"
        )
    if has_tv:
        import torchvision.models as tvm

        if name in tvm.list_models():
            return "torchvision"
    if has_timm:
        import timm

        if timm.is_model(name):
            return "timm"
    searched = " or ".join(lib for lib, ok in (("torchvision", has_tv), ("timm", has_timm)) if ok)
    raise ConfigError(f"encoder.architecture={name!r} is not a model of {searched}")


def _strip_classifier(module: Any, source: str) -> None:
    """Replace the classification head by identity so the encoder returns pooled features."""
    torch = require("torch", "an image encoder")
    if source == "timm":
        module.reset_classifier(0)
        return
    if source != "torchvision":
        return  # the user's own class returns what it returns
    for attr in ("fc", "heads", "head", "classifier"):
        head = getattr(module, attr, None)
        if isinstance(head, torch.nn.Linear):
            setattr(module, attr, torch.nn.Identity())
            return
        if isinstance(head, torch.nn.Sequential):
            linear = [i for i, m in enumerate(head) if isinstance(m, torch.nn.Linear)]
            if linear:
                head[linear[-1]] = torch.nn.Identity()
                return
    log.warning("could not find a classification head on %s to strip; using its raw output", type(module).__name__)


def read_state_dict(path: str) -> Mapping[str, Any]:
    """A state dict from ``.safetensors`` or a ``torch.load(weights_only=True)`` file.

    ``weights_only`` never unpickles code, so a weights file from a shared bucket cannot run
    anything on the executors. Common checkpoint wrappers (``{'state_dict': ...}``) and DDP's
    ``module.`` prefix are unwrapped.
    """
    torch = require("torch", "an image encoder")
    if path.endswith(".safetensors"):
        st = require("safetensors.torch", f"encoder.weights={path!r}")
        try:
            state: Any = st.load_file(path, device="cpu")
        except Exception as exc:
            raise ConfigError(f"encoder.weights={path!r} is not a readable safetensors file: {exc}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(
                f"encoder.weights={path!r} cannot be read with torch.load(weights_only=True): {exc}. "
                "Save the model's state_dict() (or a .safetensors file), not a pickled model"
            ) from exc
    for key in _STATE_DICT_KEYS:
        if isinstance(state, Mapping) and not _is_tensor_dict(state, torch) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not _is_tensor_dict(state, torch):
        raise ConfigError(f"encoder.weights={path!r} does not hold a state dict (name -> tensor); got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_tensor_dict(state: Mapping[str, Any], torch: Any) -> bool:
    return bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())
