"""The "Compile" section of the Accel tab: state per checkpoint, progress, warm sizes, clear the cache.

Every text that comes from outside Accel (checkpoint titles, paths, torch's error messages) is escaped for
Markdown with the slim panel's helper, so a title cannot inject markup or break a table.
"""

from __future__ import annotations

from ...checkpoint.slim_plan import format_bytes
from ..slim.panel import _md as md
from .glue import CompileController


def compile_md(snapshot: dict) -> str:
    """Markdown for :meth:`CompileController.snapshot` (pure: testable without gradio)."""
    support = snapshot.get("support") or {}
    lines = []
    if support and not support.get("available"):
        lines.append(f"**torch.compile is not available here:** {md(support.get('reason'))}\n")
    loaded = snapshot.get("loaded")
    checkpoints = snapshot.get("checkpoints") or {}
    if loaded:
        if loaded["installed"]:
            state = f"compiled ({loaded['mode']}, {md(loaded['backend'])}, {loaded['dynamic']} shapes, " \
                    f"at most {loaded['cache_limit']} sizes)"
        else:
            state = f"{loaded.get('status') or 'eager'} ({md(loaded.get('reason') or 'not installed')})"
            if loaded.get("kept"):
                state += f"; {loaded['kept']} compiled size(s) kept for a switch back"
        lines.append(f"**Loaded UNet:** {md(loaded['name'])}: {state}")
        busy = [s for s in loaded["shapes"] if s["status"] in ("queued", "compiling")]
        if busy:
            lines.append(f"\n⏳ {'; '.join(md(s['text']) for s in busy)}")
        if loaded["shapes"]:
            lines.append("\n| size | state | compile s | calls | cache / reason |\n| --- | --- | --- | --- | --- |")
            for s in loaded["shapes"]:
                seconds = f"{s['seconds']:.1f}" if s.get("seconds") is not None else "-"
                lines.append(f"| {md(s['label'])} | {s['status']} | {seconds} | {s['calls']} | "
                             f"{md(s.get('reason') or s.get('cache') or '-')} |")
        if loaded["recompiles"]:
            lines.append("\nUnexpected recompiles: " + "; ".join(md(r) for r in loaded["recompiles"][-5:]))
    else:
        now = next(((title, st) for title, st in checkpoints.items() if st.get("loaded")), None)
        if now:
            lines.append(f"**Loaded UNet:** {md(now[0])}: {now[1]['status']} ({md(now[1].get('reason') or '-')})")
    if checkpoints:
        lines.append("\n| checkpoint | compile | why |\n| --- | --- | --- |")
        lines += [f"| {md(title)}{' (loaded)' if st.get('loaded') else ''} | {st['status']} | "
                  f"{md(st.get('reason') or '-')} |" for title, st in checkpoints.items()]
    elif not loaded:
        lines.append("No checkpoint has been considered for compile yet (Settings > Accel > compile).")
    cache = snapshot.get("cache") or {}
    if cache:
        lines.append(f"\n{cache_md(cache)}")
    return "\n".join(lines)


def cache_md(cache: dict) -> str:
    """One line for :meth:`CompileController.cache_info` (size as last measured; Refresh measures again)."""
    if cache.get("refused"):
        return f"Compile cache {md(cache['dir'])}: **not used or cleared:** {md(cache['refused'])}"
    text = f"Compile cache: {md(cache['dir'])}, {format_bytes(cache['bytes'])}"
    if cache.get("measured_at"):
        text += f" (measured {cache['measured_at']})"
    if cache.get("in_use"):
        text += f"; this session's compiles still use {md(cache['in_use'])} until the next model load"
    return text


def cleared_md(done: dict) -> str:
    """What a clear did: freed bytes, entries kept because Accel did not write them, files it could not delete."""
    text = f"Freed {format_bytes(done['freed_bytes'])} in {md(done['dir'])}"
    if done.get("kept"):
        text += f"; kept {len(done['kept'])} item(s) Accel did not write: {md(', '.join(done['kept'][:10]))}"
    if done.get("errors"):
        text += f"; could not delete: {md('; '.join(done['errors'][:5]))}"
    if done.get("note"):
        text += f"; {md(done['note'])}"
    return text


def build_compile_panel(controller: CompileController, loaded_model) -> None:
    """Components inside the caller's open gradio block; ``loaded_model()`` returns the model or None."""
    import gradio as gr

    def render() -> str:
        return compile_md(controller.snapshot(loaded_model()))

    def refresh_md() -> str:  # the explicit "measure": the cache size is otherwise kept between compiles
        controller.cache_info(measure=True)
        return render()

    def warm(text: str) -> str:
        try:
            labels = controller.warm(loaded_model(), text)
            return f"Queued: {md(', '.join(labels))}\n\n" + render()
        except (ValueError, RuntimeError) as e:
            return f"**Not queued:** {md(e)}\n\n" + render()

    def clear() -> str:
        try:
            return cleared_md(controller.clear_cache(loaded_model())) + "\n\n" + render()
        except RuntimeError as e:
            return f"**Not cleared:** {md(e)}\n\n" + render()

    status = gr.Markdown(render, elem_id="accel-compile-status")  # a callable value is re-read on each page load
    with gr.Row():
        sizes = gr.Textbox(label="Sizes to compile now (WIDTHxHEIGHTxBATCH, comma separated)", value="512x512x1",
                           elem_id="accel-compile-warm-sizes")
        warm_button = gr.Button("Compile these sizes", elem_id="accel-compile-warm")
    with gr.Row():
        refresh = gr.Button("Refresh", elem_id="accel-compile-refresh")
        clear_button = gr.Button("Clear compile cache", elem_id="accel-compile-clear")
    refresh.click(fn=refresh_md, outputs=[status])
    warm_button.click(fn=warm, inputs=[sizes], outputs=[status])
    clear_button.click(fn=clear, outputs=[status])
