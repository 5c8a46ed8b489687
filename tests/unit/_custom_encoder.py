"""Importable stand-ins for a user's own encoder code, named by import path in the tests."""

from __future__ import annotations

import io

import numpy as np
import torch


class TinyCNN(torch.nn.Module):
    """A few-kilobyte image backbone: conv -> ReLU -> global average pool -> (b, width)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, kernel_size=3, stride=2, padding=1)
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def hash_texts(batch: list[str], dim: int = 6) -> np.ndarray:
    """A deterministic text 'encoder': character statistics, so the tests can predict the output."""
    out = np.zeros((len(batch), dim), dtype=np.float64)
    for i, text in enumerate(batch):
        out[i, 0] = len(text)
        for j, ch in enumerate(text):
            out[i, 1 + (ord(ch) + j) % (dim - 1)] += 1.0
    return out


class ImageSizeEncoder:
    """A custom image encoder as a class: decodes bytes itself and fails on anything not an image."""

    def __init__(self, scale: float = 1.0, device: str = "cpu") -> None:
        self.scale = scale
        self.device = device
        self.calls = 0

    def __call__(self, batch: list[bytes]) -> np.ndarray:
        from PIL import Image

        self.calls += 1
        rows = []
        for data in batch:
            with Image.open(io.BytesIO(data)) as im:  # raises on a corrupt file
                im = im.convert("RGB")
                rows.append([im.width * self.scale, im.height * self.scale, float(np.asarray(im).mean())])
        return np.asarray(rows, dtype=np.float32)


class DeclaredDim:
    """Declares its dimension, so loading it must not need a probe call."""

    dim = 4

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: list[str]) -> np.ndarray:
        self.calls += 1
        return np.ones((len(batch), self.dim))
