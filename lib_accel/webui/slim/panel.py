"""The "Slim checkpoint" panel: gradio 3.41 wiring only; the work lives in lib_accel.checkpoint.

:func:`plan_markdown` and :func:`slim_markdown` take plain values and return Markdown, so they can be
tested without gradio. One slim runs at a time per process (a second click is told to wait).
"Compare a test image" (after a successful slim) is :mod:`lib_accel.webui.slim.compare`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

NO_VAE = "None"
_RUNNING = threading.Lock()
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|"})


def _md(text: object) -> str:
    return str(text).translate(_MD_SPECIAL)


def _plan(checkpoint: str, drop_ema: bool, dtype: str, vae: str | None, overwrite: bool = False):
    from lib_accel.checkpoint import slim_plan as slim
    if not checkpoint:
        raise slim.SlimError("choose a checkpoint first")
    vae = None if not vae or vae == NO_VAE else vae
    return slim.plan_slim(checkpoint, dtype=dtype, drop_ema=drop_ema, vae=vae, overwrite=overwrite)


def _error_md(e: BaseException) -> str:
    return f"**Error:** {_md(' '.join(str(e).split()))}"


def _expected_errors() -> tuple[type[BaseException], ...]:
    from lib_accel.checkpoint import slim_plan as slim
    from lib_accel.checkpoint.loading import CheckpointFormatError, UnsafeCheckpointError
    return (slim.SlimError, UnsafeCheckpointError, CheckpointFormatError, OSError)


def plan_markdown(checkpoint: str, drop_ema: bool, dtype: str, vae: str | None = None,
                  overwrite: bool = False) -> str:
    """The plan (sizes, kept/dropped, problems) as Markdown; errors become a one-line message."""
    try:
        plan = _plan(checkpoint, drop_ema, dtype, vae, overwrite)
    except _expected_errors() as e:
        return _error_md(e)
    lines = ["**Plan** (nothing written yet)", *(f"- {_md(line)}" for line in plan.describe())]
    lines += [f"- ⚠ {_md(problem)}" for problem in plan.problems()]
    return "\n".join(lines)


def slim_markdown(checkpoint: str, drop_ema: bool, dtype: str, vae: str | None = None,
                  overwrite: bool = False, verify: bool = True) -> str:
    """Plan, write and (optionally) verify; Markdown with sizes before/after and the verification result."""
    from lib_accel.checkpoint import slim_verify, slim_write
    if not _RUNNING.acquire(blocking=False):
        return "**Busy:** another slim is running; try again when it has finished."
    try:
        plan = _plan(checkpoint, drop_ema, dtype, vae, overwrite)
        result = slim_write.run_slim(plan)
        lines = [f"**Done:** {_md(result.describe())}"]
        if verify:
            report = slim_verify.verify_slim(plan)
            lines += [f"- {_md(line)}" for line in report.describe()]
        lines.append(f"- New file `{os.path.basename(plan.output)}`: refresh the checkpoint list to use it.")
        return "\n".join(lines)
    except _expected_errors() as e:
        return _error_md(e)
    finally:
        _RUNNING.release()


def slim_and_remember(checkpoint: str, drop_ema: bool, dtype: str, vae: str | None = None,
                      overwrite: bool = False, verify: bool = True) -> tuple[str, tuple[str, str] | None]:
    """:func:`slim_markdown` plus the (original, output) pair for "Compare a test image" (None on failure)."""
    from lib_accel.checkpoint import slim_plan as slim
    md = slim_markdown(checkpoint, drop_ema, dtype, vae, overwrite, verify)
    if not md.startswith("**Done:**"):
        return md, None
    vae = None if not vae or vae == NO_VAE else vae
    return md, (os.path.abspath(checkpoint), slim.derive_output_path(checkpoint, dtype, vae))


def build_slim_panel(list_checkpoints: Callable[[], list[str]],
                     list_vaes: Callable[[], list[str]] | None = None) -> None:
    """Create the panel inside the caller's open ``gr.Blocks``/``gr.Tab`` context.

    ``list_checkpoints`` (and ``list_vaes``, if given) return file paths. Without ``list_vaes`` the VAE is
    a free-text path. Element ids start with ``accel-slim-``.
    """
    import gradio as gr
    try:
        from modules.ui_components import ToolButton as RefreshButton
    except Exception:  # outside the WebUI, or a WebUI without it
        RefreshButton = gr.Button

    with gr.Column(elem_id="accel-slim"):
        gr.Markdown("Writes a smaller `.safetensors` copy next to the checkpoint: drops EMA and training "
                    "state, stores weights as fp16/bf16. The original file is never modified.")
        with gr.Row():
            checkpoint = gr.Dropdown(label="Checkpoint", choices=list_checkpoints(),
                                     elem_id="accel-slim-checkpoint")
            refresh = RefreshButton(value="\U0001f504", elem_id="accel-slim-refresh")
        with gr.Row():
            drop_ema = gr.Checkbox(value=True, elem_id="accel-slim-drop-ema",
                                   label="Drop EMA weights (model_ema.*; the WebUI does not use them)")
            dtype = gr.Radio(choices=["fp16", "bf16", "keep"], value="fp16", label="Store float weights as",
                             elem_id="accel-slim-dtype")
        with gr.Row():
            if list_vaes is not None:
                vae = gr.Dropdown(label="Bake VAE (optional)", choices=[NO_VAE, *list_vaes()], value=NO_VAE,
                                  elem_id="accel-slim-vae")
            else:
                vae = gr.Textbox(label="Bake VAE (optional path)", elem_id="accel-slim-vae")
            overwrite = gr.Checkbox(value=False, label="Overwrite an existing output",
                                    elem_id="accel-slim-overwrite")
            verify = gr.Checkbox(value=True, label="Verify after writing", elem_id="accel-slim-verify")
        with gr.Row():
            plan_button = gr.Button("Plan", elem_id="accel-slim-plan")
            slim_button = gr.Button("Slim", variant="primary", elem_id="accel-slim-run")
        result = gr.Markdown(elem_id="accel-slim-result")
        last_pair = gr.State(None)
        compare_button = gr.Button("Compare a test image (original vs slim, 64x64, 4 steps)",
                                   elem_id="accel-slim-compare")
        compare_result = gr.Markdown(elem_id="accel-slim-compare-result")
        with gr.Row():
            original_image = gr.Image(label="Original checkpoint", interactive=False,
                                      elem_id="accel-slim-compare-original")
            slim_image = gr.Image(label="Slim output", interactive=False, elem_id="accel-slim-compare-slim")

    dropdowns = [(checkpoint, list_checkpoints)]
    if list_vaes is not None:
        dropdowns.append((vae, lambda: [NO_VAE, *list_vaes()]))

    def refresh_lists():
        updates = []
        for component, lister in dropdowns:
            component.choices = lister()  # so a page reload shows the new list too, as the WebUI does
            updates.append(gr.update(choices=component.choices))
        return updates

    refresh.click(fn=refresh_lists, inputs=[], outputs=[c for c, _ in dropdowns])
    plan_button.click(fn=plan_markdown, inputs=[checkpoint, drop_ema, dtype, vae, overwrite],
                      outputs=[result])
    slim_button.click(fn=slim_and_remember, inputs=[checkpoint, drop_ema, dtype, vae, overwrite, verify],
                      outputs=[result, last_pair])

    def compare(pair):
        from .compare import compare_outputs
        return compare_outputs(pair)

    compare_button.click(fn=compare, inputs=[last_pair], outputs=[compare_result, original_image, slim_image])
