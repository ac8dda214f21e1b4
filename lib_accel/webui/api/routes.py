"""Accel's JSON API under ``/accel/v1/``, registered on the WebUI's FastAPI app in ``on_app_started``.

Routes read their data through :class:`ApiSources` (plain callables), so they can be served and tested on a
bare FastAPI app; :func:`webui_sources` builds the real ones from the WebUI out of :mod:`.state` (shared with
the Accel tab, which renders the same dicts; re-exported here).

Access (:mod:`.access`): ``GET stats`` is open, like the WebUI's own ``/internal/progress`` that its pages
poll; the other GETs and every POST need the WebUI's credentials when it has authentication (``--api-auth``
Basic, as ``/sdapi/v1/*``, or a ``--gradio-auth`` login cookie); every POST also needs a JSON content type and
``X-Accel-Request: 1``, which a cross-site page cannot send. Blocking work runs in the thread pool, never on the
server's event loop. Errors are JSON ``{"error": ...}``: 400 for a body or a value that is wrong (bad JSON,
nesting too deep, a malformed size), 413 for a body over 64 KiB, 409 when the state refuses (nothing compiled, a
compile running, a cache folder Accel did not create), 500 for anything unexpected.

Not ``from __future__ import annotations``: FastAPI must see the real ``Request`` class on the endpoints,
which are built inside :func:`register_routes` (fastapi is imported only when routes are registered).
"""

import dataclasses
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
from .state import (  # noqa: F401  (re-exported: the Accel tab and scripts use them from here)
    attention_state,
    cache_state,
    clear_timing_cache,
    compile_progress,
    explain_choice,
    runtime_state,
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
            except ValueError as e:  # the request is wrong (a malformed size, no "sizes"): say which part
                return JSONResponse({"error": str(e)}, status_code=400)
            except RuntimeError as e:  # the state refuses (nothing compiled, a compile running): say why
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
