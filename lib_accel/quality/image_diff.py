"""Pixel difference between two images: max abs difference and PSNR, on 8-bit values (torch + stdlib only).

Accepted images (see :func:`to_hwc_uint8`):

* torch tensors ``HxWxC`` (or ``HxW``) of dtype uint8 - the canonical form;
* float tensors with values in [0, 1], ``HxWxC`` or ``CxHxW`` (C in 1, 3, 4), scaled by 255 and rounded;
* PIL images (duck-typed: ``mode``/``size``/``tobytes``/``convert``; PIL is never imported here),
  converted to RGB unless they are already L/RGB/RGBA.

Both images must end up with the same shape. PSNR is ``10 * log10(255^2 / MSE)`` in dB, ``inf`` when
the images are identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

_CHANNELS = (1, 3, 4)


def _pil_to_tensor(image: Any) -> torch.Tensor:
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    width, height = image.size
    channels = len(image.mode)
    data = bytearray(image.tobytes())
    if not data:
        return torch.zeros((height, width, channels), dtype=torch.uint8)
    return torch.frombuffer(data, dtype=torch.uint8).reshape(height, width, channels).clone()


def to_hwc_uint8(image: Any) -> torch.Tensor:
    """``image`` as an ``HxWxC`` uint8 CPU tensor (see the module docstring for what is accepted).

    Raises TypeError for anything else and ValueError for tensors of the wrong rank.
    """
    if not isinstance(image, torch.Tensor):
        if all(hasattr(image, a) for a in ("mode", "size", "tobytes", "convert")):
            return _pil_to_tensor(image)
        raise TypeError(f"expected a torch tensor or a PIL image, got {type(image).__name__}")
    t = image.detach().cpu()
    if t.ndim == 2:
        t = t.unsqueeze(-1)
    if t.ndim != 3:
        raise ValueError(f"expected an HxWxC image tensor, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.bool or not (t.is_floating_point()):
        raise TypeError(f"expected uint8 or float image values, got {t.dtype}")
    if t.shape[0] in _CHANNELS and t.shape[-1] not in _CHANNELS:
        t = t.permute(1, 2, 0)  # CxHxW (what the WebUI's samples are before conversion)
    return (t.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


@dataclass(frozen=True)
class ImageDiff:
    """Difference of two same-sized 8-bit images."""

    max_abs: int  # 0..255
    mean_abs: float
    psnr_db: float  # math.inf when identical
    shape: tuple[int, int, int]

    @property
    def identical(self) -> bool:
        return self.max_abs == 0

    def describe(self) -> str:
        """One line: "identical" or the max abs pixel difference, mean and PSNR."""
        if self.identical:
            return "identical (max abs pixel difference 0, PSNR inf)"
        return (f"max abs pixel difference {self.max_abs}/255, mean {self.mean_abs:.3f}, "
                f"PSNR {self.psnr_db:.2f} dB")


def psnr(mse: float, peak: float = 255.0) -> float:
    """PSNR in dB for a mean squared error on values with the given peak; ``inf`` for ``mse == 0``."""
    if mse < 0:
        raise ValueError("mse must be >= 0")
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def compare_images(a: Any, b: Any) -> ImageDiff:
    """Max abs difference, mean abs difference and PSNR between ``a`` and ``b`` on 0..255 values.

    Raises ValueError when the shapes differ (after conversion by :func:`to_hwc_uint8`).
    """
    ta, tb = to_hwc_uint8(a), to_hwc_uint8(b)
    if ta.shape != tb.shape:
        raise ValueError(f"image shapes differ: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    diff = ta.to(torch.float64) - tb.to(torch.float64)
    if diff.numel() == 0:
        return ImageDiff(0, 0.0, math.inf, tuple(ta.shape))
    absdiff = diff.abs()
    mse = float((diff * diff).mean())
    return ImageDiff(max_abs=int(absdiff.max()), mean_abs=float(absdiff.mean()), psnr_db=psnr(mse),
                     shape=tuple(ta.shape))
