"""The "Accel" tab (``on_ui_tabs``): active attention and why, every backend, runtime toggles, the timing cache,
live stats, and hook points for the compile and checkpoint-slimming panels.

The sections render the same dictionaries the JSON API serves (:mod:`lib_accel.webui.api.routes`) as Markdown, with
pure ``*_md`` functions that need no gradio. Values are computed on each page load and on "Refresh"; the live
section is filled by ``javascript/accel.js`` from ``GET /accel/v1/stats`` once a second while the tab is open,
so the tab adds no traffic to Gradio's queue.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from .. import features
from .api.routes import NOT_AVAILABLE, attention_state, cache_state, clear_timing_cache, compile_state, runtime_state

# Hook point for the per-checkpoint compile feature: a module exposing
# ``build_compile_panel(controller, loaded_model)``, called inside the "Compile" accordion with
# ``AccelExtension.compiler``. Without it the accordion shows :func:`compile_md` of
# :func:`lib_accel.webui.api.routes.compile_state` ("not available in this version" without a controller).
COMPILE_PANEL_MODULE = "lib_accel.webui.compile.panel"
TAB_ID = "accel"
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|"})


def md(text: object) -> str:
    return str(text).translate(_MD_SPECIAL)


def _table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(md(c) if c not in (None, "") else "-" for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _timings(ms: dict) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in sorted(ms.items(), key=lambda kv: kv[1]))


def attention_md(state: dict) -> str:
    active = state.get("active")
    lines = [f"**Active:** {md(active) if active else 'none'}  ",
             f"**Why:** {md(state.get('reason', ''))}  ",
             f"**Setting:** {md(state.get('setting', ''))}"]
    if state.get("kernel") == "auto":
        choices = state.get("choices") or []
        lines.append("")
        if choices:
            lines.append("Accel auto measured these choices on this device (fastest kernel per attention shape):")
            lines.append("")
            rows = [[c["shape"], c["kernel"], _timings(c.get("ms") or {}),
                     "; ".join(f"{k}: {v}" for k, v in (c.get("rejected") or {}).items()), c.get("measured_at")]
                    for c in choices]
            lines.append(_table(["shape", "kernel", "timings (ms)", "rejected", "measured"], rows))
        else:
            lines.append("Accel auto has not measured any shape on this device yet: it does so on the first image "
                         "at each resolution.")
        if state.get("other_choices"):
            lines.append(f"\n{state['other_choices']} saved choice(s) belong to other devices or torch versions.")
    elif state.get("kernel"):
        lines.append(f"\nAccel kernel: `{state['kernel']}`")
    for shape, reasons in (state.get("fallbacks") or {}).items():
        lines.append(f"- {md(shape)}: fell back ({md('; '.join(reasons))})")
    return "\n".join(lines)


def backends_md(report: dict) -> str:
    kernels = _table(["kernel", "what", "available", "why not"], [
        [k["name"], k["label"], "yes" if k["available"] else "no", "; ".join(k["reasons"])]
        for k in report.get("kernels", [])])
    feats = _table(["piece", "available", "version", "why not"], [
        [f["name"], "yes" if f["available"] else "no", f["version"], f["reason"]] for f in report.get("features", [])])
    notes = "".join(f"**Note:** {md(n)}\n\n" for n in report.get("notes", []))
    return f"{notes}**Attention kernels**\n\n{kernels}\n\n**Optional pieces**\n\n{feats}"


def runtime_md(state: dict) -> str:
    settings = state.get("settings", {})
    rows = [[f"accel_{key}", value] for key, value in settings.items() if not key.startswith("compile_")]
    flags = ", ".join(f"`{k}` = {v}" for k, v in state.get("flags", {}).items())  # no escapes in code spans
    unet = state.get("unet_channels_last")
    nan = state.get("nan_check", {})
    nan_text = f"{md(nan.get('mode'))}" + (" (Accel's check installed)" if nan.get("accel_patched") else "") + \
        (" — the WebUI runs with --disable-nan-check" if nan.get("webui_disabled") else "")
    memory_format = "no model loaded" if unet is None else "channels-last" if unet else "contiguous"
    lines = [_table(["setting", "value"], rows), "", f"**torch flags now:** {flags}  ",
             f"**UNet memory format:** {memory_format}  ",
             f"**NaN check:** {nan_text}  "]
    dtypes = state.get("dtypes") or {}
    if dtypes:
        lines.append(f"**Precision now:** UNet {md(dtypes.get('unet'))}, VAE {md(dtypes.get('vae'))}  ")
    for message in (state.get("precision") or {}).get("messages", {}).values():
        lines.append(f"**Precision:** {md(message)}  ")
    for message in state.get("invalid_settings") or []:
        lines.append(f"**Invalid setting:** {md(message.removeprefix('[Accel] '))}  ")
    if state.get("last_changes"):
        lines.append(f"**Last applied:** {md('; '.join(state['last_changes']))}")
    lines.append("\nChange them in Settings > Accel; they apply at once.")
    return "\n".join(lines)


def cache_md(state: dict) -> str:
    where = f"`{state['path']}`" if state.get("exists") else "no file yet"
    persist = "saved across restarts" if state.get("persist") else "kept in memory only (accel_autotune_persist off)"
    return (f"**Timing cache:** {state.get('entries', 0)} measured shape(s), {state.get('bytes', 0)} bytes, {where}; "
            f"{persist}.")


def cleared_md(result: dict) -> str:
    text = f"Cleared {result.get('cleared', 0)} measured shape(s)."
    if result.get("reapplied"):
        text += " Accel auto was re-applied: the next image measures each shape again."
    if result.get("note"):
        text += " " + md(result["note"])
    return text


def compile_md(state: dict) -> str:
    """The ``GET compile`` dict: the placeholder's one line, or each checkpoint's compile status."""
    support = state.get("torch_compile") or {}
    here = "usable here" if support.get("available") else f"not usable here ({support.get('reason', '')})"
    if not state.get("implemented"):
        return f"Per-checkpoint torch.compile: **{NOT_AVAILABLE}**. torch.compile itself is {md(here)}."
    checkpoints = state.get("checkpoints") or {}
    rows = [[title, entry.get("status"), entry.get("reason")] for title, entry in checkpoints.items()]
    lines = [f"torch.compile is {md(here)}. Choose checkpoints and modes in Settings > Accel (accel\\_compile\\_\\*).",
             "", _table(["checkpoint", "status", "why"], rows) if rows else "No checkpoint loaded since start."]
    loaded = state.get("loaded") or {}
    shapes = loaded.get("shapes") or []
    if shapes:
        lines += ["", f"**Loaded model** ({md(loaded.get('mode'))}, {md(loaded.get('backend'))}):", "",
                  _table(["size", "status", "seconds", "calls", "why"],
                         [[s.get("label"), s.get("status"), s.get("seconds"), s.get("calls"), s.get("reason")]
                          for s in shapes])]
    return "\n".join(lines)


def live_placeholder_html() -> str:
    return ('<div id="accel-live-body" class="accel-live">Live stats appear here once a second while this tab '
            'is open (they need JavaScript; the same data is at <code>/accel/v1/stats</code>).</div>')


# -- gradio wiring -------------------------------------------------------------------------------------------------
def _builders(ext: Any) -> list[Callable[[], str]]:
    """One Markdown builder per section (attention, backends, runtime, cache); an error becomes its text."""
    from ..attention import describe_kernels

    def safe(build: Callable[[], str]) -> Callable[[], str]:
        def run() -> str:
            try:
                return build()
            except Exception as e:  # one broken section must not blank the tab
                return f"**Error:** {md(type(e).__name__)}: {md(e)}"
        return run

    return [safe(lambda: attention_md(attention_state(ext))),
            safe(lambda: backends_md({"kernels": describe_kernels(),
                                      "features": [f.as_dict() for f in features.all_features()]})),
            safe(lambda: runtime_md(runtime_state(ext))),
            safe(lambda: cache_md(cache_state(ext))),
            safe(lambda: compile_md(compile_state(ext)))]


def _list_checkpoints() -> list[str]:
    from modules import sd_models
    return sorted({info.filename for info in sd_models.checkpoints_list.values()})


def _list_vaes() -> list[str]:
    try:
        from modules import sd_vae
    except ImportError:
        return []
    return list(sd_vae.vae_dict.values())


def _slim_section(gr: Any) -> bool:
    try:
        from .slim import panel as slim_panel
    except ImportError:
        return False
    with gr.Accordion("Checkpoint slimming", open=False, elem_id="accel-slim-section"):
        build = slim_panel.build_slim_panel
        if len(inspect.signature(build).parameters) >= 2:
            build(_list_checkpoints, _list_vaes)
        else:
            build(_list_checkpoints)
    return True


def _compile_section(gr: Any, ext: Any, status: str) -> Any:
    """The compile accordion: the hook module's ``build_compile_panel(controller, loaded_model)`` when it and the
    owner's compile controller exist, else the status Markdown (returned, so Refresh updates it)."""
    with gr.Accordion("Compile (torch.compile per checkpoint)", open=False, elem_id="accel-compile-section"):
        try:
            module = importlib.import_module(COMPILE_PANEL_MODULE)
        except ImportError:
            module = None
        build = getattr(module, "build_compile_panel", None)
        controller = getattr(ext, "compiler", None)
        if build is not None and len(inspect.signature(build).parameters) >= 2 and controller is not None:
            from .extension import loaded_model
            build(controller, loaded_model)
            return None
        if build is not None and not inspect.signature(build).parameters:
            build()
            return None
        return gr.Markdown(status, elem_id="accel-compile-status")


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    """``script_callbacks.on_ui_tabs`` entry: one tab, "Accel"."""
    import gradio as gr

    from . import extension
    ext = extension.get()
    builders = _builders(ext)

    def render() -> list[str]:
        return [build() for build in builders]

    initial = render()  # shown until the page-load event below brings each section up to date

    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row(elem_id="accel-toolbar"):
            gr.Markdown("Accel: what runs and how fast. Settings live in Settings > Accel.")
            refresh = gr.Button("Refresh", elem_id="accel-refresh", scale=0)
        with gr.Accordion("Live stats", open=True, elem_id="accel-live-section"):
            gr.HTML(live_placeholder_html(), elem_id="accel-live-stats")
        with gr.Accordion("Attention", open=True, elem_id="accel-attention-section"):
            attention = gr.Markdown(initial[0], elem_id="accel-attention")
        with gr.Accordion("Backends", open=False, elem_id="accel-backends-section"):
            backends = gr.Markdown(initial[1], elem_id="accel-backends")
        with gr.Accordion("Runtime toggles and NaN check", open=False, elem_id="accel-runtime-section"):
            runtime = gr.Markdown(initial[2], elem_id="accel-runtime")
        with gr.Accordion("Timing cache", open=False, elem_id="accel-cache-section"):
            cache = gr.Markdown(initial[3], elem_id="accel-cache")
            with gr.Row():
                clear = gr.Button("Clear timing cache", elem_id="accel-cache-clear", scale=0)
                cleared = gr.Markdown(elem_id="accel-cache-result")
        compiled = _compile_section(gr, ext, initial[4])
        with gr.Accordion("Benchmark (A/B every option on this machine)", open=False, elem_id="accel-bench-section"):
            from .bench.panel import build_bench_panel
            build_bench_panel(ext)
        _slim_section(gr)

        outputs = [attention, backends, runtime, cache]
        if compiled is not None:
            outputs.append(compiled)
        else:
            builders.pop()

        def clear_and_render() -> list[str]:
            try:
                message = cleared_md(clear_timing_cache(ext))
            except Exception as e:
                message = f"**Error:** {md(type(e).__name__)}: {md(e)}"
            return [message, *render()]

        # gradio wires events only inside the Blocks context. One load event for the tab, not callable values:
        # gradio 3.41 attaches a callable value's load event twice for a tab built outside the main Blocks.
        if hasattr(tab, "load"):
            tab.load(fn=render, inputs=[], outputs=outputs, queue=False)
        refresh.click(fn=render, inputs=[], outputs=outputs)
        clear.click(fn=clear_and_render, inputs=[], outputs=[cleared, *outputs])
    return [(tab, "Accel", TAB_ID)]
