"""Shape buckets ("512x768x1": width x height x batch) that users pre-warm, and call signatures.

A *call signature* is what a compiled graph is specialised on when shapes are static: every tensor
argument's name, shape, dtype and device, the other arguments' values, and the grad/autocast state that
dynamo guards on. Two calls with one signature reuse one graph; a new signature means a new graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_BUCKET = re.compile(r"^\s*(\d{1,6})\s*[x×]\s*(\d{1,6})\s*(?:[x×]\s*(\d{1,6}))?\s*$", re.I)

# What the WebUI v1.10.1 can generate (modules/ui.py): Width/Height sliders 64..2048 in steps of 8, and hires
# fix's "Upscale by" up to 4, so a second pass reaches 4 x 2048; the Batch size slider stops at 8.
MIN_SIDE, MAX_SIDE, MAX_BATCH = 64, 4 * 2048, 8
MAX_BUCKETS = 64  # the most sizes one model keeps (accel_compile_cache_limit's maximum)


@dataclass(frozen=True)
class ShapeBucket:
    width: int
    height: int
    batch: int = 1

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.batch}"


def _quoted(part: str) -> str:
    part = part.strip()
    return repr(part if len(part) <= 40 else part[:40] + "...")


def parse_buckets(text: str, max_count: int = MAX_BUCKETS) -> list[ShapeBucket]:
    """Parse ``"512x512x1, 512x768, 1024x1024x2"`` (batch defaults to 1), duplicates dropped. Sides are
    multiples of 8 in 64..8192, batch 1..8, at most ``max_count`` sizes; ValueError names the bad entry."""
    parts = [part for part in re.split(r"[,;\n]+", text or "") if part.strip()]
    if len(parts) > max_count:
        raise ValueError(f"{len(parts)} sizes given; at most {max_count} at once")
    buckets: list[ShapeBucket] = []
    for part in parts:
        match = _BUCKET.match(part)
        if not match:
            raise ValueError(f"bad shape bucket {_quoted(part)}: expected WIDTHxHEIGHT or WIDTHxHEIGHTxBATCH")
        width, height, batch = int(match[1]), int(match[2]), int(match[3] or 1)
        if width % 8 or height % 8 or not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise ValueError(f"bad shape bucket {_quoted(part)}: sides must be multiples of 8 in "
                             f"{MIN_SIDE}..{MAX_SIDE} (the WebUI's 2048 limit, x4 for hires fix)")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"bad shape bucket {_quoted(part)}: batch must be 1..{MAX_BATCH} (the WebUI's batch size)")
        bucket = ShapeBucket(width, height, batch)
        if bucket not in buckets:
            buckets.append(bucket)
    return buckets


def _autocast_state() -> tuple:
    state = []
    for device_type in ("cuda", "cpu"):
        try:
            enabled = torch.is_autocast_enabled(device_type)
            dtype = torch.get_autocast_dtype(device_type) if enabled else None
        except TypeError:  # torch < 2.4: device-specific functions
            if device_type == "cuda":
                enabled = torch.is_autocast_enabled()
                dtype = torch.get_autocast_gpu_dtype() if enabled else None
            else:
                enabled = torch.is_autocast_cpu_enabled()
                dtype = torch.get_autocast_cpu_dtype() if enabled else None
        state.append((device_type, enabled, dtype))
    return tuple(state)


def grad_state() -> tuple:
    """(grad enabled, inference mode, autocast per device): the global state dynamo guards on."""
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled(), _autocast_state()


def _describe(value) -> object:
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype, value.device.type, value.device.index)
    if isinstance(value, (int, float, bool, str, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_describe(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _describe(v)) for k, v in value.items()))
    return type(value).__name__


def call_key(args: tuple, kwargs: dict) -> tuple:
    """The signature a static-shape graph is specialised on (cheap: no tensor data is read)."""
    return (tuple(_describe(a) for a in args), tuple(sorted((k, _describe(v)) for k, v in kwargs.items())),
            grad_state())


_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a call on ``x`` computes in: the autocast dtype while autocast is on for ``x``'s device
    (Accel's precision, the WebUI's own autocast), else ``x``'s own."""
    device_type = x.device.type
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError, RuntimeError):  # torch < 2.4: device-specific functions only
        for dt, enabled, dtype in _autocast_state():
            if dt == device_type and enabled:
                return dtype
    return x.dtype


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def call_label(args: tuple, kwargs: dict) -> str:
    """Human label: image size, batch and compute dtype for an SD UNet call (latent x is 4-D, 8x smaller), else
    shapes and dtype; two graphs of one size in two precisions get two labels (``64x64, UNet batch 2, bf16``)."""
    x = args[0] if args else kwargs.get("x")
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        n, _, h, w = x.shape
        label = f"{w * 8}x{h * 8}, UNet batch {n}"
        context = kwargs.get("context", args[2] if len(args) > 2 else None)
        if isinstance(context, torch.Tensor) and context.dim() == 3 and context.shape[1] != 77:
            label += f", {context.shape[1]} prompt tokens"
        return f"{label}, {dtype_name(compute_dtype(x))}"
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    label = "shapes " + ", ".join("x".join(map(str, t.shape)) for t in tensors)
    floating = next((t for t in tensors if t.is_floating_point()), None)
    return label + (f", {dtype_name(compute_dtype(floating))}" if floating is not None else "")
