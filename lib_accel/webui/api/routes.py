"""Accel's JSON API under ``/accel/v1/``, registered on the WebUI's FastAPI app in ``on_app_started``.

Routes read their data through :class:`ApiSources` (plain callables), so they can be served and tested on a
bare FastAPI app; :func:`webui_sources` builds the real ones from the WebUI. :func:`attention_state`,
:func:`runtime_state` and :func:`cache_state` are shared with the Accel tab, which renders the same dicts.

Access (:mod:`.access`): ``GET stats`` is open, like the WebUI's own ``/internal/progress`` that its pages
poll; the other GETs and every POST need the WebUI's credentials when it has authentication (``--api-auth``
Basic, as ``/sdapi/v1/*``, or a ``--gradio-auth`` login cookie); every POST also needs a JSON content type and
``X-Accel-Request: 1``, which a cross-site page cannot send. Blocking work runs in the thread pool, never on the
server's event loop.

Not ``from __future__ import annotations``: FastAPI must see the real ``Request`` class on the endpoints,
which are built inside :func:`register_routes` (fastapi is imported only when routes are registered).
"""

import dataclasses
import os
import re
from collections.abc import Callable
from typing import Any

from ... import __version__, features
from .access import (  # noqa: F401  (REQUEST_HEADER, basic_credentials, parse_api_auth: re-exported)
    REQUEST_HEADER,
    BodyError,
    basic_credentials,
    check_access,
    parse_api_auth,
    post_refusal,
    read_json_object,
)

PREFIX = "/accel/v1"
GETS = ("stats", "backends", "info", "compile")
OPEN_GETS = ("stats",)  # what the live badge polls: as open as /internal/progress
POSTS = ("cache/clear", "compile/warm", "compile/cache/clear")
NOT_AVAILABLE = "not available in this version"


def compile_state_placeholder() -> dict:
    """``GET compile`` without per-checkpoint compilation: the structure, explicitly marked unavailable."""
    return {"implemented": False, "status": NOT_AVAILABLE, "accel": __version__,
            "torch_compile": features.compile_support().as_dict(), "checkpoints": {}}


def compile_state(ext: Any) -> dict:
    """Hook point for ``GET compile`` and the tab: the owner's ``compiler.snapshot(sd_model)`` when this build
    has one (``lib_accel.webui.compile.glue.CompileController``), else :func:`compile_state_placeholder`."""
    snapshot = getattr(getattr(ext, "compiler", None), "snapshot", None)
    if snapshot is None:
        return compile_state_placeholder()
    from ..extension import loaded_model
    state = snapshot(loaded_model())
    return {"implemented": True, "status": "available", "accel": __version__,
            "torch_compile": state.get("support", features.compile_support().as_dict()), **state}


@dataclasses.dataclass
class ApiSources:
    stats: Callable[[], dict]
    backends: Callable[[], dict]
    info: Callable[[], dict]
    clear_cache: Callable[[], dict]
    compile: Callable[[], dict] = compile_state_placeholder
    credentials: Callable[[], dict] = dict  # --api-auth users -> passwords; {}: none; ValueError: malformed
    compile_warm: Callable[[dict], dict] | None = None  # body {"sizes": "512x512x1, ..."}
    compile_clear: Callable[[], dict] | None = None


def register_routes(app: Any, sources: ApiSources) -> bool:
    """Add the routes to ``app`` (a FastAPI app); False when this app already has them (Reload UI)."""
    from fastapi import HTTPException, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    existing = {getattr(route, "path", None) for route in getattr(app, "routes", [])}
    if f"{PREFIX}/stats" in existing:
        return False

    def serve(source: Callable[[], dict]) -> Any:
        try:
            data = source()
        except Exception as e:  # a broken reading must not take the UI's polling down with a traceback page
            return JSONResponse({"error": f"{type(e).__name__}: {e}"}, status_code=500)
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    def require_access(request: Any) -> None:
        allowed, why = check_access(request.headers, request.cookies, sources.credentials, app)
        if not allowed:  # ask for Basic unless only a UI login could help (no browser prompt that cannot succeed)
            gradio_only = getattr(app, "auth", None) and not _api_auth_set(sources)
            raise HTTPException(status_code=401, detail=why,
                                headers=None if gradio_only else {"WWW-Authenticate": "Basic"})

    def get_route(source_name: str) -> Callable:
        guarded = source_name not in OPEN_GETS

        def endpoint(request: Request):  # sync: FastAPI runs it in its thread pool
            if guarded:
                require_access(request)
            return serve(getattr(sources, source_name))
        endpoint.__name__ = f"accel_{source_name}"
        return endpoint

    for name in GETS:
        app.add_api_route(f"{PREFIX}/{name}", get_route(name), methods=["GET"], tags=["accel"],
                          summary=f"Accel: {name}")

    def post_route(path: str, action: Callable[[dict], dict], summary: str) -> None:
        async def endpoint(request: Request):
            require_access(request)
            refusal = post_refusal(request.headers)
            if refusal:
                return JSONResponse({"error": refusal}, status_code=403)
            try:
                body = await read_json_object(request)
            except BodyError as e:
                return JSONResponse({"error": e.message}, status_code=e.status)
            try:  # clearing thousands of files or queueing compiles must not stall every other request
                result = await run_in_threadpool(action, body)
            except (ValueError, RuntimeError) as e:  # bad sizes, nothing compiled, compile running: say why
                return JSONResponse({"error": str(e)}, status_code=409)
            except Exception as e:
                return JSONResponse({"error": f"{type(e).__name__}: {e}"}, status_code=500)
            return JSONResponse(result, headers={"Cache-Control": "no-store"})
        endpoint.__name__ = "accel_" + path.replace("/", "_")
        app.add_api_route(f"{PREFIX}/{path}", endpoint, methods=["POST"], tags=["accel"], summary=summary)

    def unavailable(body: dict) -> dict:
        raise RuntimeError("compile is not available in this build")

    post_route("cache/clear", lambda body: sources.clear_cache(), "Accel: clear the attention timing cache")
    post_route("compile/warm", sources.compile_warm or unavailable,
               "Accel: compile sizes of the loaded UNet in the background")
    post_route("compile/cache/clear", (lambda body: sources.compile_clear()) if sources.compile_clear else unavailable,
               "Accel: clear the compile cache")
    return True


def _api_auth_set(sources: ApiSources) -> bool:
    try:
        return bool(sources.credentials())
    except ValueError:  # malformed --api-auth: it is set
        return True


# -- the WebUI's data (shared with the Accel tab) ---------------------------------------------------------------
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


def webui_sources(ext: Any = None, stats: Any = None) -> ApiSources:
    from .. import extension, live_stats
    ext = ext or extension.get()
    stats = stats or live_stats.get()

    def backends() -> dict:
        from ... import info as info_module
        from ...attention import describe_kernels
        from ..optimizations import SPECS, spec_reasons
        return {"attention": attention_state(ext), "kernels": describe_kernels(),
                "notes": info_module.notes(live_stats.webui_device()),
                "optimizations": [{"title": s.name, "kernel": s.kernel, "reasons": spec_reasons(s)} for s in SPECS],
                "features": [f.as_dict() for f in features.all_features()]}

    def info() -> dict:
        from ... import info as info_module
        return {**info_module.collect(), "webui_device": str(live_stats.webui_device()),
                "runtime": runtime_state(ext), "timing_cache": cache_state(ext)}

    def credentials() -> dict:
        from modules import shared
        return parse_api_auth(getattr(shared.cmd_opts, "api_auth", None))

    def compile_warm(body: dict) -> dict:
        sizes = body.get("sizes")
        if not isinstance(sizes, str) or not sizes.strip():
            raise ValueError('send {"sizes": "WIDTHxHEIGHTxBATCH, ..."}')
        return {"queued": ext.compiler.warm(extension.loaded_model(), sizes)}

    return ApiSources(stats=lambda: {**stats.snapshot(live_stats.webui_device()), "compile": compile_progress(ext)},
                      backends=backends, info=info,
                      clear_cache=lambda: clear_timing_cache(ext), compile=lambda: compile_state(ext),
                      credentials=credentials, compile_warm=compile_warm,
                      compile_clear=lambda: ext.compiler.clear_cache(extension.loaded_model()))


def on_app_started(demo: Any, app: Any) -> None:
    """``script_callbacks.on_app_started`` entry: serve the routes on ``app``."""
    if app is not None and hasattr(app, "add_api_route"):
        register_routes(app, webui_sources())
