"""The benchmark target inside the WebUI: cells applied through ``shared.opts`` (as the Settings page does),
generations through ``processing.process_images`` with a fixed prompt and seed.

The caller holds the WebUI's queue lock for the whole run (no other job interleaves) and marks it with
``AccelExtension.holding_queue_lock``; the attention setting's own onchange would take that lock again, so
it is set without callbacks and the hijack is redone here. Settings changed by the run are restored by
:meth:`WebUITarget.restore` unless "apply best" keeps the winner.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

from ...bench.engine import CellSkipped, Generation
from ...bench.matrix import ATTENTION_OPTION, AUTOMATIC, Cell, cell_settings, check_applied
from ...bench.peak import PeakPoller
from ...features import device_label
from .. import live_stats

DEFAULT_PROMPT = "a photograph of a lighthouse on a cliff at sunset, detailed, 35mm"


def write_settings(settings: dict) -> None:
    """``shared.opts.set`` each; the attention setting without its onchange (which takes the queue lock the
    caller holds) and with the hijack redone here instead."""
    from modules import sd_hijack, shared
    for key, value in settings.items():
        if key == ATTENTION_OPTION:
            current = sd_hijack.current_optimizer
            if shared.opts.set(key, value, run_callbacks=False) or current is None or current.title() != value:
                sd_hijack.model_hijack.redo_hijack(shared.sd_model)
        else:
            shared.opts.set(key, value)


class WebUITarget:
    def __init__(self, owner: Any, prompt: str = DEFAULT_PROMPT, negative_prompt: str = "",
                 sampler_name: str = "Euler a", cfg_scale: float = 7.0):
        from modules import shared
        self.owner, self.prompt, self.negative_prompt = owner, prompt, negative_prompt
        self.sampler_name, self.cfg_scale = sampler_name, cfg_scale
        self.saved: dict[str, Any] = {}
        self.opts = shared.opts

    def checkpoint_title(self) -> str | None:
        model = self.owner_model()
        info = getattr(model, "sd_checkpoint_info", None)
        return getattr(info, "title", None)

    @staticmethod
    def owner_model() -> Any:
        from ..extension import loaded_model
        return loaded_model()

    def describe(self) -> dict:
        from modules import devices
        return {"machine": device_label(devices.device), "torch": torch.__version__,
                "checkpoint": self.checkpoint_title() or "none loaded", "sampler": self.sampler_name,
                "prompt": self.prompt, "target": "WebUI (in process)"}

    # -- cells -----------------------------------------------------------------------------------------------
    def apply(self, cell: Cell) -> str | None:
        """Switch to ``cell``; returns what "Automatic" resolved to (None for a named optimizer)."""
        from modules import sd_hijack
        titles = [AUTOMATIC] + [o.title() for o in sd_hijack.optimizers]
        if cell.attention not in titles:
            raise CellSkipped(f"{cell.attention!r} is not an available attention optimization ({', '.join(titles)})")
        if self.owner_model() is None:
            raise CellSkipped("no checkpoint is loaded")
        settings = cell_settings(cell, self.checkpoint_title())
        for key in settings:
            if key not in self.opts.data_labels:
                raise CellSkipped(f"this WebUI has no setting {key}")
            self.saved.setdefault(key, self.opts.data.get(key, self.opts.data_labels[key].default))
        write_settings(settings)
        active = sd_hijack.current_optimizer.title() if sd_hijack.current_optimizer is not None else None
        try:
            resolved = check_applied(cell, active)
        except ValueError as e:
            raise CellSkipped(str(e)) from None
        refused = [m for m in self.owner.precision.messages.values() if "refused" in m]
        if (cell.precision != "default" or cell.vae != "default") and refused:
            raise CellSkipped(refused[-1])
        if cell.compile != "off":
            refusals = self.owner.compiler.refusals(self.owner_model(), self.owner.config())
            if refusals:
                raise CellSkipped("compile refused: " + "; ".join(refusals))
        return resolved

    def generate(self, cell: Cell, seed: int) -> Generation:
        from modules import devices, processing, shared
        stats = live_stats.get()
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model, prompt=self.prompt, negative_prompt=self.negative_prompt, seed=seed,
            sampler_name=self.sampler_name, steps=cell.steps, width=cell.width, height=cell.height,
            batch_size=cell.batch, cfg_scale=self.cfg_scale, do_not_save_samples=True, do_not_save_grid=True)
        cuda = torch.cuda.is_available() and getattr(devices.device, "type", "") == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        shared.state.begin(job="accel-bench")
        start = time.perf_counter()
        try:
            def nvml_used() -> int | None:
                return stats.monitor.read(devices.device).get("nvml", {}).get("memory_used")
            with PeakPoller(nvml_used) if cuda else contextlib.nullcontext() as nvml:
                stats.begin_image(p)
                processed = processing.process_images(p)
                summary = stats.end_image(p)
                if cuda:
                    torch.cuda.synchronize()
        finally:
            shared.state.end()
            close = getattr(p, "close", None)
            if close is not None:
                close()
        total = time.perf_counter() - start
        if shared.state.interrupted:
            raise RuntimeError("interrupted")
        sampler = (summary or {}).get("stages", {}).get("unet") or None
        return Generation(images=list(processed.images), total_s=total, sampler_s=sampler,
                          peak_torch_bytes=torch.cuda.max_memory_allocated() if cuda else None,
                          peak_nvml_bytes=nvml.peak if nvml is not None else None)

    def interrupt(self) -> None:
        from modules import shared
        shared.state.interrupt()

    # -- after the run ---------------------------------------------------------------------------------------
    def restore(self, keep: dict | None = None) -> None:
        """Put back every setting the run changed, except those in ``keep`` (the applied best cell)."""
        from modules import shared
        keep = keep or {}
        write_settings({**self.saved, **keep})
        self.saved.clear()
        if keep:
            self.opts.save(shared.config_filename)

