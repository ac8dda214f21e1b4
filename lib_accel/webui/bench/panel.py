"""The "Benchmark" panel of the Accel tab: gradio 3.41 wiring only (the behaviour is
:class:`lib_accel.webui.bench.session.BenchSession`)."""

from __future__ import annotations

import time
from typing import Any

from ...bench.matrix import COMPILE_CHOICES, PRECISION_CHOICES, SIZE_PRESETS, MatrixError
from ...bench.results import COLUMNS, DISPLAY_HEADERS
from .session import BenchSession

POLL_S = 1.0
SORTS = ["run order", "sampler_its", "e2e_its", "speedup", "first_run_s", "peak_torch_mb", "psnr_db"]
_session: BenchSession | None = None
# gradio 3.41 turns an empty list into [[]] and then cuts the headers to zero columns: one blank row instead
_EMPTY_ROWS = [[""] * len(DISPLAY_HEADERS)]


def session(owner: Any) -> BenchSession:
    global _session
    if _session is None or _session.owner is not owner:
        _session = BenchSession(owner)
    return _session


def _attention_titles() -> list[str]:
    """The WebUI's own "Automatic" (the natural baseline, shown with what it resolves to) and every optimizer."""
    from modules import sd_hijack

    from ...bench.matrix import AUTOMATIC
    return [AUTOMATIC] + [o.title() for o in sd_hijack.optimizers]


def _chart_value(rows: list[dict]) -> Any:
    try:
        import pandas as pd
    except ImportError:
        return None
    return pd.DataFrame(rows or [{"cell": "(no results yet)", "it/s": 0.0}])


def build_bench_panel(owner: Any) -> None:
    import gradio as gr

    titles = _attention_titles()
    default_attention = [t for t in titles if t in ("Automatic", "Accel auto")]
    gr.Markdown("Runs real txt2img generations (fixed prompt and seed) for every combination you tick. The first "
                "value of each group is the baseline: images are compared with it, speedups are relative to it. "
                "Other generations wait while it runs; your settings are restored afterwards.")
    with gr.Row():
        attention = gr.CheckboxGroup(titles, value=default_attention, label="Attention",
                                     elem_id="accel-bench-attention")
        compile_modes = gr.CheckboxGroup(list(COMPILE_CHOICES), value=["off"], label="Compile",
                                         elem_id="accel-bench-compile")
    with gr.Row():
        channels_last = gr.CheckboxGroup(["off", "on"], value=["off"], label="Channels-last",
                                         elem_id="accel-bench-channels-last")
        precision = gr.CheckboxGroup(list(PRECISION_CHOICES), value=["default"], label="UNet precision",
                                     elem_id="accel-bench-precision")
        vae = gr.CheckboxGroup(list(PRECISION_CHOICES), value=["default"], label="VAE precision",
                               elem_id="accel-bench-vae")
        sizes = gr.CheckboxGroup(list(SIZE_PRESETS), value=["512x512"], label="Sizes", elem_id="accel-bench-sizes")
    with gr.Row():
        custom_sizes = gr.Textbox("", label="More sizes (WIDTHxHEIGHT, comma-separated)", elem_id="accel-bench-custom")
        batches = gr.Textbox("1", label="Batch sizes", elem_id="accel-bench-batches")
        steps = gr.Textbox("20", label="Steps", elem_id="accel-bench-steps")
        repeats = gr.Slider(1, 10, value=2, step=1, label="Timed runs per cell", elem_id="accel-bench-repeats")
        warmup = gr.Slider(0, 3, value=1, step=1, label="Warm-up runs (excluded)", elem_id="accel-bench-warmup")
    prompt = gr.Textbox("", label="Prompt (blank: a fixed default)", elem_id="accel-bench-prompt")
    with gr.Row():
        run = gr.Button("Run benchmark", variant="primary", elem_id="accel-bench-run")
        cancel = gr.Button("Cancel", elem_id="accel-bench-cancel")
        apply_best = gr.Button("Apply best", elem_id="accel-bench-apply")
        sort_by = gr.Dropdown(SORTS, value="run order", label="Sort by", elem_id="accel-bench-sort")
    status = gr.Markdown("Not run yet.", elem_id="accel-bench-status")
    table = gr.Dataframe(headers=session(owner).headers(), value=_EMPTY_ROWS, interactive=False, wrap=True,
                         elem_id="accel-bench-table")
    chart = gr.BarPlot(_chart_value([]), x="cell", y="it/s", vertical=False, title="it/s per cell",
                       tooltip=["cell", "it/s"], width=700, elem_id="accel-bench-chart")
    files = gr.File(label="Results (CSV, JSON)", file_count="multiple", interactive=False,
                    elem_id="accel-bench-files")
    applied = gr.Markdown(elem_id="accel-bench-applied")

    def views(s: BenchSession, sort: str) -> list[Any]:
        key = sort if sort in COLUMNS else None
        # a plot value, not gr.BarPlot.update(): gradio 3.41's update() insists on x and y
        return [s.status_markdown(), s.rows(key) or _EMPTY_ROWS, _chart_value(s.chart_rows()), s.files or None]

    def start(att, comp, cl, prec, vae_prec, sz, custom, bat, st, rep, warm, text, sort):
        s = session(owner)
        try:
            matrix = BenchSession.build_matrix(att, comp, cl, prec, sz, custom, bat, st, vae=vae_prec)
        except MatrixError as e:
            yield [f"**Cannot run:** {e}", gr.update(), gr.update(), gr.update()]
            return
        message = s.start(matrix, repeats=int(rep), warmup=int(warm), prompt=text.strip() or None)
        yield [message, _EMPTY_ROWS, _chart_value([]), None]
        while s.running:
            time.sleep(POLL_S)
            yield views(s, sort)
        yield views(s, sort)

    outputs = [status, table, chart, files]
    run.click(start, inputs=[attention, compile_modes, channels_last, precision, vae, sizes, custom_sizes, batches,
                             steps, repeats, warmup, prompt, sort_by], outputs=outputs)
    cancel.click(lambda: session(owner).cancel(), inputs=[], outputs=[applied], queue=False)
    apply_best.click(lambda: session(owner).apply_best(), inputs=[], outputs=[applied])
    sort_by.change(lambda sort: views(session(owner), sort), inputs=[sort_by], outputs=outputs)
