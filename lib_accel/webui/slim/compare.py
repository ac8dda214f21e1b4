"""WebUI adapter: render one small test image with the original checkpoint and with its slim copy, and compare.

Contract of :func:`compare_checkpoints`:

* Runs holding ``modules.call_queue.queue_lock`` (the lock every WebUI generation holds), so it never runs
  at the same time as a user's generation; it waits for one in progress.
* Re-lists the checkpoints (``sd_models.list_models()``) so a just-written slim file is found; both files
  must be in the WebUI's checkpoint folders (models/Stable-diffusion, --ckpt-dir). Otherwise
  :class:`CompareError` is raised and nothing is loaded.
* Renders :data:`TEST_RENDER` (64x64, 4 steps, Euler, fixed seed and prompt, batch 1, nothing saved) with each
  checkpoint through ``processing.process_images``, checking that the intended checkpoint was the one loaded.
* Always (try/finally) switches back to the checkpoint that was loaded before (or, if none was loaded, to the
  one the WebUI would load), also when a render fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lib_accel.quality.image_diff import ImageDiff, compare_images

TEST_RENDER: dict[str, Any] = {
    "prompt": "a red apple on a wooden table, photograph",
    "negative_prompt": "",
    "seed": 12345,
    "width": 64,
    "height": 64,
    "steps": 4,
    "sampler_name": "Euler",
    "cfg_scale": 7.0,
    "batch_size": 1,
    "n_iter": 1,
}


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|"})


class CompareError(Exception):
    """A comparison that cannot be run (file missing or outside the checkpoint folders, wrong model loaded)."""


@dataclass
class CompareResult:
    original: str  # checkpoint titles
    slim: str
    restored: str
    original_image: Any  # what process_images returned (PIL image in the WebUI)
    slim_image: Any
    diff: ImageDiff

    def markdown(self) -> str:
        r = TEST_RENDER
        verdict = "**identical**" if self.diff.identical else self.diff.describe()
        return "\n".join([
            f"**Test image:** {verdict}",
            f"- {r['width']}x{r['height']}, {r['steps']} steps, {r['sampler_name']}, seed {r['seed']}, "
            f"prompt \"{r['prompt']}\"",
            f"- Original: `{self.original}`; slim: `{self.slim}`",
            f"- Checkpoint restored: `{self.restored}`",
        ])


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def find_checkpoint(path: str) -> Any | None:
    """The WebUI's CheckpointInfo for the file ``path`` (from the current list), or None if it is not listed."""
    from modules import sd_models
    info = sd_models.get_closet_checkpoint_match(os.path.basename(path))
    if info is not None and _same_file(info.filename, path):
        return info
    for info in list(sd_models.checkpoints_list.values()):  # the fuzzy match can pick a sibling file
        if _same_file(info.filename, path):
            return info
    return None


def _loaded_file() -> str | None:
    from modules import sd_models
    model = sd_models.model_data.sd_model
    info = getattr(model, "sd_checkpoint_info", None) if model is not None else None
    return getattr(info, "filename", None)


def render_test_image(info: Any) -> Any:
    """Load ``info`` (reload_model_weights) and render :data:`TEST_RENDER` with it; the caller holds the lock."""
    from modules import processing, sd_models, shared
    sd_models.reload_model_weights(info=info)
    if not _same_file(_loaded_file() or "", info.filename):
        raise CompareError(f"the WebUI did not load {info.title}")
    p = processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, do_not_save_samples=True,
                                                    do_not_save_grid=True, **TEST_RENDER)
    shared.state.begin(job="accel-slim-compare")  # clears a stale Interrupt, as the WebUI's own jobs do
    try:
        processed = processing.process_images(p)
    finally:
        shared.state.end()
        close = getattr(p, "close", None)
        if close is not None:
            close()
    if not _same_file(_loaded_file() or "", info.filename):
        raise CompareError(f"the WebUI switched away from {info.title} while rendering")
    if not processed.images:
        raise CompareError(f"no image was rendered with {info.title}")
    return processed.images[0]


def _outside_message(path: str) -> str:
    from modules import sd_models, shared
    folders = [sd_models.model_path] + ([shared.cmd_opts.ckpt_dir] if shared.cmd_opts.ckpt_dir else [])
    return (f"{path} is not in the WebUI's checkpoint folders ({', '.join(folders)}), so it was not loaded; "
            "move it there (or write it there with --out) to compare")


def compare_checkpoints(original: str, slim_path: str,
                        render: Callable[[Any], Any] | None = None) -> CompareResult:
    """Render the test image with ``original`` and ``slim_path`` and compare (see the module docstring).

    ``render(checkpoint_info) -> image`` replaces :func:`render_test_image` (tests). Raises CompareError.
    """
    from modules import call_queue, sd_models

    from .. import extension
    render = render or render_test_image
    original, slim_path = os.path.abspath(original), os.path.abspath(slim_path)
    for path in (original, slim_path):
        if not os.path.isfile(path):
            raise CompareError(f"{path} does not exist")
    with call_queue.queue_lock, extension.get().holding_queue_lock():  # a reload inside must not wait on us
        sd_models.list_models()
        infos = [find_checkpoint(original), find_checkpoint(slim_path)]
        for path, info in zip((original, slim_path), infos, strict=True):
            if info is None:
                raise CompareError(_outside_message(path))
        previous = _loaded_file()
        if previous is None:
            previous = sd_models.select_checkpoint().filename
        images = []
        try:
            for info in infos:
                images.append(render(info))
        finally:
            back = find_checkpoint(previous)
            if back is None:
                raise CompareError(f"could not restore {previous}: it is no longer listed")
            sd_models.reload_model_weights(info=back)
        if not _same_file(_loaded_file() or "", previous):
            raise CompareError(f"could not restore {previous}")
    return CompareResult(original=infos[0].title, slim=infos[1].title, restored=back.title,
                         original_image=images[0], slim_image=images[1], diff=compare_images(*images))


def display_image(image: Any) -> Any:
    """Something gr.Image shows: PIL images as they are, tensors as HxWxC uint8 numpy arrays."""
    if hasattr(image, "tobytes") and hasattr(image, "mode"):
        return image
    from lib_accel.quality.image_diff import to_hwc_uint8
    return to_hwc_uint8(image).numpy()


def compare_outputs(pair: Any) -> tuple[str, Any, Any]:
    """Gradio handler: ``pair`` = (original, slim) paths from the last slim run, or None.

    Returns (Markdown, original image, slim image); errors become a one-line Markdown message.
    """
    if not pair:
        return "**Compare:** slim a checkpoint first.", None, None
    try:
        result = compare_checkpoints(pair[0], pair[1])
    except Exception as e:  # shown in the panel; the checkpoint was restored by compare_checkpoints
        kind = "" if isinstance(e, CompareError) else f"{type(e).__name__}: "
        text = " ".join(f"{kind}{e}".split()).translate(_MD_SPECIAL)
        return f"**Compare failed:** {text}", None, None
    return result.markdown(), display_image(result.original_image), display_image(result.slim_image)
