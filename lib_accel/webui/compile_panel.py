"""The "Compile" section of the Accel tab: state per checkpoint, progress, warm sizes, clear the cache."""

from __future__ import annotations

from ..slim import format_bytes
from .compile_glue import CompileController


def compile_md(snapshot: dict) -> str:
    """Markdown for :meth:`CompileController.snapshot` (pure: testable without gradio)."""
    support = snapshot.get("support") or {}
    lines = []
    if support and not support.get("available"):
        lines.append(f"**torch.compile is not available here:** {support.get('reason')}\n")
    loaded = snapshot.get("loaded")
    if loaded:
        state = "compiled" if loaded["installed"] else "eager"
        lines.append(f"**Loaded UNet:** {loaded['name']}: {state} ({loaded['mode']}, {loaded['backend']}, "
                     f"{loaded['dynamic']} shapes, at most {loaded['cache_limit']} sizes)")
        busy = [s for s in loaded["shapes"] if s["status"] in ("queued", "compiling")]
        if busy:
            lines.append(f"\n⏳ {'; '.join(s['text'] for s in busy)}")
        if loaded["shapes"]:
            lines.append("\n| size | state | compile s | calls | cache / reason |\n| --- | --- | --- | --- | --- |")
            for s in loaded["shapes"]:
                seconds = f"{s['seconds']:.1f}" if s.get("seconds") is not None else "-"
                lines.append(f"| {s['label']} | {s['status']} | {seconds} | {s['calls']} | "
                             f"{s.get('reason') or s.get('cache') or '-'} |")
        if loaded["recompiles"]:
            lines.append("\nUnexpected recompiles: " + "; ".join(loaded["recompiles"][-5:]))
    checkpoints = snapshot.get("checkpoints") or {}
    if checkpoints:
        lines.append("\n| checkpoint | compile | why |\n| --- | --- | --- |")
        lines += [f"| {title} | {st['status']} | {st.get('reason') or '-'} |" for title, st in checkpoints.items()]
    elif not loaded:
        lines.append("No checkpoint has been considered for compile yet (Settings > Accel > compile).")
    cache = snapshot.get("cache") or {}
    if cache:
        lines.append(f"\nCompile cache: `{cache['dir']}`, {format_bytes(cache['bytes'])}")
    return "\n".join(lines)


def build_compile_panel(controller: CompileController, loaded_model) -> None:
    """Components inside the caller's open gradio block; ``loaded_model()`` returns the model or None."""
    import gradio as gr

    def render() -> str:
        return compile_md(controller.snapshot(loaded_model()))

    def warm(text: str) -> str:
        try:
            labels = controller.warm(loaded_model(), text)
            return f"Queued: {', '.join(labels)}\n\n" + render()
        except (ValueError, RuntimeError) as e:
            return f"**Not queued:** {e}\n\n" + render()

    def clear() -> str:
        try:
            done = controller.clear_cache(loaded_model())
            return f"Freed {format_bytes(done['freed_bytes'])} in `{done['dir']}`\n\n" + render()
        except RuntimeError as e:
            return f"**Not cleared:** {e}\n\n" + render()

    status = gr.Markdown(render, elem_id="accel-compile-status")  # a callable value is re-read on each page load
    with gr.Row():
        sizes = gr.Textbox(label="Sizes to compile now (WIDTHxHEIGHTxBATCH, comma separated)", value="512x512x1",
                           elem_id="accel-compile-warm-sizes")
        warm_button = gr.Button("Compile these sizes", elem_id="accel-compile-warm")
    with gr.Row():
        refresh = gr.Button("Refresh", elem_id="accel-compile-refresh")
        clear_button = gr.Button("Clear compile cache", elem_id="accel-compile-clear")
    refresh.click(fn=render, outputs=[status])
    warm_button.click(fn=warm, inputs=[sizes], outputs=[status])
    clear_button.click(fn=clear, outputs=[status])
