"""The WebUI's data behind Accel's routes and the Accel tab: the attention choice and why, the runtime settings and
flags, the timing cache, and clearing it. Each function takes the extension (``lib_accel.webui.extension.get()``)
and returns a plain JSON-ready dict; :mod:`.routes` serves them and ``ui_tab`` renders them as Markdown."""

import dataclasses
import os
import re
from typing import Any

from ... import features


def explain_choice(active: str | None, setting: str, titles: list[str], cmd_flag: str | None = None,
                   disabled_by_flag: bool = False) -> str:
    """Why the WebUI applied ``active`` (a title) given its setting, mirroring ``sd_hijack.apply_optimizations``."""
    if active is None:
        if setting == "None":
            return "disabled: Cross attention optimization is set to None"
        if setting == "Automatic" and disabled_by_flag:
            return "disabled by --disable-opt-split-attention"
        return "none applied yet (the WebUI applies it when a model loads)"
    if setting == "Automatic":
        if cmd_flag:
            return f"Automatic: chosen by the --{cmd_flag.replace('_', '-')} command-line flag"
        return "Automatic: the highest-priority available optimization"
    if setting == active:
        return "chosen by name in Settings > Optimizations > Cross attention optimization"
    if setting not in titles:
        return f"the setting {setting!r} names no available optimization, so the WebUI applied the first one"
    return f"the setting says {setting!r}; it takes effect when the optimization is next applied"


def _device_prefix() -> str:
    import torch
    from modules import devices
    return f"{features.device_label(devices.device)}|torch {torch.__version__}|"


def attention_state(ext: Any) -> dict:
    """The active optimization, why, and for Accel entries the kernel and its per-shape choices/fallbacks."""
    from modules import sd_hijack, shared
    current = sd_hijack.current_optimizer
    setting = str(getattr(shared.opts, "cross_attention_optimization", "Automatic"))
    titles = [o.title() for o in sd_hijack.optimizers]
    flag = getattr(current, "cmd_opt", None)
    flag = flag if flag and getattr(shared.cmd_opts, flag, False) else None
    active = current.title() if current is not None else None
    out = {"active": active, "setting": setting, "optimizations": titles,
           "reason": explain_choice(active, setting, titles, flag,
                                    bool(getattr(shared.cmd_opts, "disable_opt_split_attention", False))),
           "accel": current is not None and current is ext.applied_optimization, "kernel": None,
           "choices": [], "other_choices": 0, "fallbacks": {}}
    if not out["accel"]:
        return out
    out["kernel"] = getattr(getattr(current, "spec", None), "kernel", None)
    out["fallbacks"] = dict(getattr(getattr(current, "runner", None), "fallback_reasons", None) or {})
    if out["kernel"] == "auto":
        prefix = _device_prefix()
        for key, record in sorted(ext.timing_store().entries().items(), key=lambda kv: _natural(kv[0])):
            if not key.startswith(prefix):
                out["other_choices"] += 1
                continue
            out["choices"].append({"shape": key[len(prefix):], "kernel": record.get("kernel"),
                                   "ms": record.get("ms", {}), "rejected": record.get("rejected", {}),
                                   "measured_at": record.get("measured_at")})
    return out


def _natural(text: str) -> list:
    """Sort key that orders q16 before q256 before q1024."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def runtime_state(ext: Any) -> dict:
    """Settings as configured, the torch flags as they are now, the UNet's memory format and the NaN check."""
    import torch
    from modules import devices, shared

    from ...runtime.toggles import is_channels_last
    from ..compile.glue import unet_of
    from ..extension import loaded_model
    config = ext.config()
    unet = unet_of(loaded_model())
    return {
        "settings": dataclasses.asdict(config),
        "flags": {"cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
                  "cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                  "cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32)},
        "unet_channels_last": is_channels_last(unet) if unet is not None else None,
        "nan_check": {"mode": config.nan_check, "accel_patched": ext.patches.is_patched(devices, "test_for_nans"),
                      "webui_disabled": bool(getattr(shared.cmd_opts, "disable_nan_check", False))},
        "last_changes": list(ext.last_changes),
        "invalid_settings": _invalid_settings(),
        "precision": ext.precision.snapshot(),
        "dtypes": {"unet": str(devices.dtype_unet).replace("torch.", ""),
                   "vae": str(devices.dtype_vae).replace("torch.", "")},
    }


def _invalid_settings() -> list[str]:
    from .. import options
    return options.invalid_settings()


def cache_state(ext: Any) -> dict:
    from ..extension import TIMINGS_FILE
    path = os.path.join(ext.root, TIMINGS_FILE)
    exists = os.path.isfile(path)
    return {"path": path, "persist": ext.config().autotune_persist, "exists": exists,
            "bytes": os.path.getsize(path) if exists else 0, "entries": len(ext.timing_store().entries())}


def clear_timing_cache(ext: Any) -> dict:
    """Forget every measured choice (file and memory). When Accel auto is active and the WebUI is idle it is
    re-applied at once, so the next image re-measures each shape; during a job that waits for the next apply."""
    from modules import sd_hijack

    from ...attention import TimingStore
    from ..extension import TIMINGS_FILE
    store = ext.timing_store()
    cleared = len(store.entries())
    store.clear()
    TimingStore(os.path.join(ext.root, TIMINGS_FILE)).clear()
    current = sd_hijack.current_optimizer
    auto = current is not None and current is ext.applied_optimization and \
        getattr(getattr(current, "spec", None), "kernel", None) == "auto"
    result = {"cleared": cleared, "reapplied": False, "note": ""}
    try:
        from modules.call_queue import queue_lock  # held by the WebUI for the whole of every generation
    except ImportError:
        queue_lock = None
    if auto and queue_lock is None:
        result["note"] = "the WebUI's job lock was not found: Accel auto keeps its choices until it is re-applied"
    elif auto:
        if queue_lock.acquire(blocking=False):
            try:
                sd_hijack.apply_optimizations()
                result["reapplied"] = True
            finally:
                queue_lock.release()
        else:
            result["note"] = "a generation is running: Accel auto keeps its current choices until it is re-applied"
    return result


def compile_progress(ext: Any) -> str:
    """One line for the badge and the live section while sizes compile ("" when none is)."""
    from .. import extension
    loaded = ext.compiler.snapshot(extension.loaded_model()).get("loaded")
    shapes = (loaded or {}).get("shapes", [])
    compiling = [s["text"] for s in shapes if s["status"] == "compiling"]
    queued = sum(1 for s in shapes if s["status"] == "queued")
    return "; ".join(compiling + ([f"{queued} size(s) queued to compile"] if queued else []))
