"""Accel's settings: one declarative list (keys, defaults, labels, cost explanations) and a typed config.

The WebUI adapter turns :data:`SETTINGS` into ``shared.OptionInfo`` entries in one "Accel" section and
builds :class:`AccelConfig` from ``shared.opts`` with :meth:`AccelConfig.from_options`. The core only ever
sees an :class:`AccelConfig`; it never reads ``shared.opts``.
"""

from __future__ import annotations

import math
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
    #: choices known only at run time, filled by the adapter ("checkpoints", "compile_backends")
    choices_from: str | None = None


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
    Setting("accel_unet_dtype", "default", "UNet precision",
            "default: what the WebUI loaded (fp16, or fp32 with --no-half). bf16: fp16's speed and memory with "
            "fp32's range (no NaNs), on Ampere+ GPUs and on CPUs with AVX512-BF16/AMX, where it is many times faster "
            "than fp32. fp16: half the memory of fp32, fastest on older GPUs. fp32: slowest, twice the memory. "
            "Norm layers stay fp32; going back to a wider dtype after a narrower one reloads the weights.",
            ("default", "fp16", "bf16", "fp32")),
    Setting("accel_vae_dtype", "default", "VAE precision",
            "default: what the WebUI chose (--no-half-vae makes it fp32). fp16 can give black images (NaNs) with "
            "the SD1.x/SDXL VAEs; bf16 avoids that at fp16's speed where supported; fp32 is the safe, slow one.",
            ("default", "fp16", "bf16", "fp32")),
    Setting("accel_vae_nan_retry", True, "Retry a VAE decode that produced NaNs in a safer precision",
            "After NaNs in the decoded image, converts the VAE fp16 -> bf16 (if supported) -> fp32, decodes the "
            "image again and keeps the safer precision until the setting or the model changes. Costs one NaN "
            "reduction over each decoded image.", None),
    Setting("accel_chunk_memory_fraction", 0.25, "Chunked attention: share of free memory one chunk may use",
            "Lower uses less VRAM at the cost of more, smaller chunks (slower); only the Accel chunked "
            "kernel reads it.", None, 0.05, 0.9, 0.05),
    Setting("accel_autotune_persist", True, "Accel auto: remember measured kernel choices across restarts",
            "Stores the measured winner per GPU, dtype and attention shape in accel-timings.json in the "
            "extension folder, so each new shape is timed once (a second or two on the first image).",
            None),
    Setting("accel_autotune_repeats", 3, "Accel auto: timed runs per kernel",
            "More runs give steadier choices and a longer first image at each new shape.", None, 1, 20, 1),
    Setting("accel_live_stats", True, "Live stats: time sampler steps and stages while generating",
            "Feeds the it/s + VRAM badge and the Accel tab: a few microseconds per step, plus a CUDA sync before "
            "and after the text encoder and the VAE decode so their times are real GPU times. off: no timing at "
            "all; memory readings still work.", None),
    Setting("accel_infotext", False, "Add Accel facts to the infotext of each image",
            "Writes 'Accel attention', 'Accel toggles' and 'Accel speed' (it/s) into the generation parameters "
            "saved with each image. Off by default: the speed differs between runs, so otherwise identical "
            "images would get different infotexts.", None),
    Setting("accel_compile_enabled", False, "torch.compile the UNet of the checkpoints chosen below",
            "Compiled UNets run faster per step after a one-time compile per image size (minutes on first "
            "use, seconds with a warm cache); needs Linux, and triton on NVIDIA GPUs.", None),
    Setting("accel_compile_checkpoints", (), "Checkpoints to compile",
            "Only these checkpoints are compiled; any other loads eager (and a compiled one returns to eager "
            "when you switch away). Empty means none.", choices_from="checkpoints"),
    Setting("accel_compile_mode", "default", "Compile mode",
            "default: fast compile, no extra VRAM. reduce-overhead: CUDA graphs, less CPU overhead per step "
            "but several GB more VRAM. max-autotune: benchmarks kernels, very long compile, small gain.",
            ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")),
    Setting("accel_compile_backend", "inductor", "Compile backend",
            "inductor generates fused kernels (C++ on CPU, triton on GPU); the others are for debugging or "
            "special hardware and are usually slower.", choices_from="compile_backends"),
    Setting("accel_compile_dynamic", "static", "Shapes: one graph per size (static) or symbolic (dynamic)",
            "static: one graph per image size and batch, bounded by the cache limit; proven on SD UNets. "
            "dynamic/auto: one symbolic graph; fewer compiles, but inductor failed on SD's convolutions here.",
            ("static", "dynamic", "auto")),
    Setting("accel_compile_cache_limit", 8, "Compiled sizes kept per model",
            "Each image size and batch is its own graph (memory and compile time); past the limit new sizes "
            "run eager with a message instead of recompiling forever.", None, 1, 64, 1),
    Setting("accel_compile_prewarm", "512x512x1", "Sizes to compile in the background after loading",
            "Comma-separated WIDTHxHEIGHTxBATCH, e.g. 512x512x1, 512x768x1, 1024x1024x1 (add hires-fix "
            "targets); compiled while you work, so the first image at these sizes is already fast.", None),
    Setting("accel_compile_background", True, "Compile new sizes in the background (eager meanwhile)",
            "on: an image at a new size never waits for compile; it runs eager while the size compiles. off: "
            "the first image at each new size waits for its compile.", None),
    Setting("accel_compile_cache_dir", "", "Compile cache folder (blank: accel-cache in the extension)",
            "Inductor's on-disk caches live here, so a restart compiles the same model and size from cache "
            "in a fraction of the cold time.", None),
    Setting("accel_compile_cudagraph_min_free_gb", 7.5, "Refuse CUDA-graph modes below this free VRAM (GB)",
            "reduce-overhead reached 9.6 GB on a 12 GB card with SD1.5 (about 7.5 GB above the fp16 model) "
            "and ran out of memory on 8 GB; below this free VRAM those modes are refused with the reason.",
            None, 0.0, 80.0, 0.5),
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
    unet_dtype: str = "default"
    vae_dtype: str = "default"
    vae_nan_retry: bool = True
    chunk_memory_fraction: float = 0.25
    autotune_persist: bool = True
    autotune_repeats: int = 3
    compile_enabled: bool = False
    compile_checkpoints: tuple[str, ...] = ()
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    compile_dynamic: str = "static"
    compile_cache_limit: int = 8
    compile_prewarm: str = "512x512x1"
    compile_background: bool = True
    compile_cache_dir: str = ""
    compile_cudagraph_min_free_gb: float = 7.5
    live_stats: bool = True
    infotext: bool = False

    @classmethod
    def from_options(cls, get: Callable[[str], Any], warn: Callable[[str], None] = print) -> AccelConfig:
        """Build from a ``key -> value`` getter (``accel_`` keys). An invalid value falls back to its default and
        ``warn`` gets one line per invalid value read (callers that read often dedupe; see
        ``lib_accel.webui.options``)."""
        values = {}
        for f in fields(cls):
            spec = setting(f"accel_{f.name}")
            value, error = validate(spec, get(spec.key))
            if error is not None:
                warn(error)
            values[f.name] = value
        return cls(**values)


def validate(spec: Setting, raw: Any) -> tuple[Any, str | None]:
    """``(value, None)`` for a valid (or absent) ``raw``, ``(spec.default, message)`` for an invalid one.

    Strict on purpose: numbers must be finite and within range (``nan`` passes ``<``/``>`` checks), an int
    setting takes only integral values (the Settings page's sliders send ``3.0``; ``2.9`` is refused, not
    truncated), bools are neither numbers nor choices, and a choice must be one of ``spec.choices``.
    """
    if raw is None:
        return spec.default, None
    try:
        return _convert(spec, raw), None
    except (TypeError, ValueError, OverflowError) as e:
        shown = repr(raw) if len(repr(raw)) <= 60 else repr(raw)[:57] + "..."
        return spec.default, f"[Accel] setting {spec.key}={shown} is invalid ({e}); using the default {spec.default!r}"


def _convert(spec: Setting, raw: Any) -> Any:
    if spec.choices is not None:
        if not isinstance(raw, str) or raw not in spec.choices:
            raise ValueError(f"not one of {', '.join(spec.choices)}")
        return raw
    if isinstance(spec.default, tuple):
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise TypeError("not a list of names")
        return tuple(x.strip() for x in items if x.strip())
    if isinstance(spec.default, bool):
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[raw.strip().lower()]
        raise TypeError("not true or false")
    if isinstance(spec.default, str):
        if not isinstance(raw, str):
            raise TypeError(f"not text but {type(raw).__name__}")
        return raw
    return _number(spec, raw)


_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False}


def _number(spec: Setting, raw: Any) -> int | float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise TypeError(f"not a number but {type(raw).__name__}")
    value = float(raw)  # a str: "0.3", "5"; float("nan") and "inf" are refused just below
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    if isinstance(spec.default, int):
        if not value.is_integer():
            raise ValueError("not a whole number")
        value = int(value)
    if spec.minimum is not None and value < spec.minimum or spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"outside {spec.minimum}..{spec.maximum}")
    return value
