"""Accel's settings: one declarative list (keys, defaults, labels, cost explanations) and a typed config.

The WebUI adapter turns :data:`SETTINGS` into ``shared.OptionInfo`` entries in one "Accel" section and
builds :class:`AccelConfig` from ``shared.opts`` with :meth:`AccelConfig.from_options`. The core only ever
sees an :class:`AccelConfig`; it never reads ``shared.opts``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

TRISTATE = ("default", "on", "off")
NAN_CHECK_MODES = ("default", "off", "full")


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    label: str
    explanation: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("accel_channels_last", "default", "UNet memory format: channels-last",
            "on: convolutions read NHWC tensors; usually a few % faster on tensor-core GPUs (fp16/bf16), "
            "can be slower on CPU and old GPUs; no quality or memory cost. default: follow --opt-channelslast.",
            TRISTATE),
    Setting("accel_cudnn_benchmark", "default", "cuDNN benchmark (autotune convolutions)",
            "on: cuDNN times its algorithms per new shape and keeps the fastest; faster steps after a slower "
            "first image at each new size, a little extra VRAM for workspaces. default: leave torch as the "
            "WebUI set it.", TRISTATE),
    Setting("accel_tf32", "default", "TF32 for float32 matmul and convolutions (Ampere and newer)",
            "on: fp32 matmuls use TF32 tensor cores, several times faster with ~1e-3 relative error, invisible "
            "in images; only matters with --no-half. default: keep the WebUI's choice (it enables TF32).",
            TRISTATE),
    Setting("accel_nan_check", "default", "NaN check after the UNet and the VAE",
            "default: the WebUI's check of the first element only (cheap). off: no check and no sync, black "
            "images are not reported. full: every element is checked, catching partial NaNs at the cost of "
            "one reduction over the latents and image.", NAN_CHECK_MODES),
    Setting("accel_chunk_memory_fraction", 0.25, "Chunked attention: share of free memory one chunk may use",
            "Lower uses less VRAM at the cost of more, smaller chunks (slower); only the Accel chunked "
            "kernel reads it.", None, 0.05, 0.9, 0.05),
    Setting("accel_autotune_persist", True, "Accel auto: remember measured kernel choices across restarts",
            "Stores the measured winner per GPU, dtype and attention shape in accel-timings.json in the "
            "extension folder, so each new shape is timed once (a second or two on the first image).",
            None),
    Setting("accel_autotune_repeats", 3, "Accel auto: timed runs per kernel",
            "More runs give steadier choices and a longer first image at each new shape.", None, 1, 20, 1),
)


def setting(key: str) -> Setting:
    for s in SETTINGS:
        if s.key == key:
            return s
    raise KeyError(key)


@dataclass(frozen=True)
class AccelConfig:
    channels_last: str = "default"
    cudnn_benchmark: str = "default"
    tf32: str = "default"
    nan_check: str = "default"
    chunk_memory_fraction: float = 0.25
    autotune_persist: bool = True
    autotune_repeats: int = 3

    @classmethod
    def from_options(cls, get: Callable[[str], Any], warn: Callable[[str], None] = print) -> AccelConfig:
        """Build from a ``key -> value`` getter (``accel_`` keys); an invalid value falls back to its default
        with a warning rather than failing the load."""
        values = {}
        for f in fields(cls):
            spec = setting(f"accel_{f.name}")
            raw = get(spec.key)
            values[f.name] = _coerce(spec, raw, warn)
        return cls(**values)


def _coerce(spec: Setting, raw: Any, warn: Callable[[str], None]) -> Any:
    if raw is None:
        return spec.default
    try:
        if spec.choices is not None:
            value = str(raw)
            if value not in spec.choices:
                raise ValueError(f"not one of {', '.join(spec.choices)}")
            return value
        if isinstance(spec.default, bool):
            if isinstance(raw, str):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError("not a boolean")
                return raw.lower() in ("true", "1")
            return bool(raw)
        value = type(spec.default)(raw)
        if spec.minimum is not None and value < spec.minimum or spec.maximum is not None and value > spec.maximum:
            raise ValueError(f"outside {spec.minimum}..{spec.maximum}")
        return value
    except (TypeError, ValueError) as e:
        warn(f"[Accel] setting {spec.key}={raw!r} is invalid ({e}); using {spec.default!r}")
        return spec.default
