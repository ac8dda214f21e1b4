"""UNet and VAE precision chosen at run time: dtype support probes, lossless-conversion rules, the UNet call
wrapper and the VAE's NaN fallback chain (torch + stdlib only).

How a UNet runs in another dtype than the WebUI loaded it in: its weights are converted, except the
normalisation layers (GroupNorm, LayerNorm), which stay float32 - ldm's ``GroupNorm32`` normalises in float32
anyway, CPU group_norm refuses a float32 input with low-precision weights, and fp32 statistics are what keeps
fp16 UNets from overflowing. The call then runs under ``torch.autocast(device, dtype)`` so that matmuls and
convolutions use the low precision whatever dtype their inputs arrive in (timestep embeddings are float32,
ldm casts ``h`` to its configured dtype). A float32 UNet instead disables autocast and casts floating inputs to
float32. The output goes back to the dtype of the input latents, so samplers never see the difference.

Conversions can lose information (fp32 -> fp16/bf16, fp16 <-> bf16), so going back to a wider dtype
after a lossy one needs the checkpoint's weights again (see :func:`needs_reload`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
PRECISION_CHOICES = ("default", "fp16", "bf16", "fp32")
NORM_TYPES = (torch.nn.GroupNorm, torch.nn.LayerNorm)
# (exponent bits, mantissa bits): a conversion is lossless only when neither shrinks
_FORMAT = {torch.float32: (8, 23), torch.float16: (5, 10), torch.bfloat16: (8, 7), torch.float64: (11, 52)}


def dtype_name(dtype: torch.dtype | None) -> str:
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    return str(dtype).replace("torch.", "")


def is_lossy(src: torch.dtype, dst: torch.dtype) -> bool:
    """True when converting ``src`` values to ``dst`` can round or overflow (fp16 <-> bf16 both can)."""
    if src == dst:
        return False
    se, sm = _FORMAT.get(src, (64, 64))
    de, dm = _FORMAT.get(dst, (0, 0))
    return de < se or dm < sm


def needs_reload(loaded: torch.dtype, current: torch.dtype, target: torch.dtype) -> bool:
    """Whether reaching ``target`` needs the checkpoint's weights again: the weights now held (``current``,
    converted from ``loaded``) were rounded, so converting them again would not give what converting the
    loaded weights gives (double rounding, or precision that is gone)."""
    return target != current and is_lossy(loaded, current)


@functools.cache
def _probe(dtype: torch.dtype, device_type: str) -> str | None:
    """Run the UNet's op mix (conv, linear, norms in fp32, attention) in ``dtype`` under the wrapper's
    autocast; the error text when it fails, None when it works."""
    try:
        device = torch.device(device_type)
        conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(device, dtype)
        lin = torch.nn.Linear(8, 8).to(device, dtype)
        norm = torch.nn.GroupNorm(2, 8).to(device, torch.float32)
        x = torch.randn(1, 8, 4, 4, device=device)
        with unet_autocast(device_type, dtype):
            h = conv(x)
            h = norm(h.float()).type(h.dtype)
            q = lin(h.flatten(2).transpose(1, 2))
            out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        if not torch.isfinite(out.float()).all():
            return "produced non-finite values"
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return None


def unsupported_reason(name: str, device: torch.device | str) -> str | None:
    """Why ``name`` (fp16/bf16/fp32) cannot run a UNet on ``device``; None when it can. Probed once per
    device type and dtype."""
    if name == "default":
        return None
    if name not in DTYPES:
        return f"unknown precision {name!r} (one of {', '.join(PRECISION_CHOICES)})"
    dtype, device_type = DTYPES[name], torch.device(device).type
    if device_type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 support (needs compute capability 8.0+, Ampere or newer)"
    error = _probe(dtype, device_type)
    return f"{name} does not run on {device_type} with this torch: {error}" if error else None


def cpu_bf16_note(cpuinfo: str | None = None) -> str | None:
    """On CPU, bf16 is fast only with AVX512-BF16 or AMX; a note when neither flag is in ``cpuinfo``
    (default: /proc/cpuinfo; None where it cannot be read, e.g. not Linux)."""
    flags = cpuinfo
    if flags is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                flags = f.read()
        except OSError:
            return None
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return None
    return "this CPU has neither AVX512-BF16 nor AMX: bf16 runs, but emulated and slower than fp32"


def unet_autocast(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The autocast the wrapper enters: ``dtype`` for fp16/bf16, autocast off for fp32."""
    if dtype == torch.float32:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)


def convert_module(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Convert parameters to ``dtype`` in place, norm layers' to float32; returns how many changed dtype.
    Buffers are left alone (autocast casts at use; a reload would not restore non-persistent ones). Memory
    format (channels-last) is kept."""
    changed = 0
    for sub in module.modules():
        want = torch.float32 if isinstance(sub, NORM_TYPES) else dtype
        for p in sub.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != want:
                p.data = p.data.to(want)
                changed += 1
    return changed


def weight_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the module's first non-norm floating parameter (what it "runs in")."""
    for sub in module.modules():
        if isinstance(sub, NORM_TYPES):
            continue
        for p in sub.parameters(recurse=False):
            if p.is_floating_point():
                return p.dtype
    return None


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _first_float_dtype(args: tuple) -> torch.dtype | None:
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.dtype
    return None


def call_in_precision(forward: Callable, dtype: torch.dtype, device_type: str, args: tuple, kwargs: dict) -> Any:
    """Run ``forward(*args, **kwargs)`` as the module docstring describes; the result is returned in the dtype
    of the first floating positional argument (the latents)."""
    out_dtype = _first_float_dtype(args)
    if dtype == torch.float32:
        args, kwargs = _cast(args, dtype), _cast(kwargs, dtype)
    with unet_autocast(device_type, dtype):
        result = forward(*args, **kwargs)
    if out_dtype is not None and isinstance(result, torch.Tensor) and result.dtype != out_dtype:
        result = result.to(out_dtype)
    return result


def safer_vae_dtype(current: torch.dtype, device: torch.device | str) -> torch.dtype | None:
    """The next dtype to retry a VAE decode in after NaNs: fp16 -> bf16 (when supported) -> fp32."""
    if current == torch.float16 and unsupported_reason("bf16", device) is None:
        return torch.bfloat16
    if current in (torch.float16, torch.bfloat16):
        return torch.float32
    return None


def has_nan(t: torch.Tensor) -> bool:
    return bool(torch.isnan(t).any()) if t.is_floating_point() else False
