"""Where the live stats come from in the WebUI v1.10.1: the denoiser callbacks, two stage wrappers and the
per-image script hooks; and the Accel facts added to the infotext.

- Steps: ``on_cfg_denoiser`` marks the start of each denoiser call and ``on_cfg_after_cfg`` its end (the
  last thing ``CFGDenoiser.forward`` does). ``params.denoiser.step`` is the exact call index (the params'
  ``sampling_step`` lags by one); ``denoiser.total_steps``/``denoiser.steps`` give calls per sampler step.
- Text encoder: ``modules.prompt_parser.get_learned_conditioning`` (``setup_conds`` looks it up on the
  module for the negative prompt, and ``get_multicond_learned_conditioning`` calls it through the module's
  globals for the prompt), so one wrapper times every text-encoder run; cached conds cost nothing and count 0.
- VAE: ``modules.processing.decode_latent_batch`` (``process_images_inner`` and the hires pass call it by
  its module-global name), not the live previews.
- Image boundaries: the AlwaysVisible script ``scripts/accel_infotext.py`` calls :meth:`LiveStats.begin_image`
  from ``process_batch`` (just before ``setup_conds``) and :meth:`LiveStats.end_image` from
  ``postprocess_batch`` (after the decode, before the infotexts are written).
- Failed generations: v1.10.1 calls no script or callback when a generation raises (``process_images`` only
  restores options in its ``finally``), so ``postprocess_batch`` never closes the image and the stats would say
  ``running`` for good. ``modules.processing.process_images_inner`` (called through the module's globals by
  ``process_images``, which ``/sdapi/v1/txt2img`` imported by value) is wrapped: when it raises, the open image
  is closed as incomplete (:meth:`~lib_accel.monitoring.stats.StatsCollector.abort_image`).

Cost: the two step callbacks take a few microseconds (measured in tests/unit/test_stats.py); the stage
wrappers synchronise CUDA before and after the text encoder and the VAE decode (four waits per image, at points
where the GPU is about to be idle anyway) so their times are GPU times. ``accel_live_stats`` off makes all of
it a no-op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..monitoring.gpu import GpuMonitor, vram_summary
from ..monitoring.stats import StatsCollector, format_rate
from ..singleton import process_singleton

STAGE_TARGETS = (
    ("text_encoder", "modules.prompt_parser", "get_learned_conditioning"),
    ("vae_decode", "modules.processing", "decode_latent_batch"),
)
GENERATION_TARGET = ("modules.processing", "process_images_inner")


def _device_sync() -> Callable[[], None] | None:
    """``synchronize`` of the accelerator in use (CUDA once initialised, else MPS), None on CPU: stage times
    must include the queued GPU work, and CPU needs no wait."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.synchronize
    mps = getattr(torch, "mps", None)
    if mps is not None and hasattr(mps, "synchronize") and torch.backends.mps.is_available():
        return mps.synchronize
    return None


class LiveStats:
    def __init__(self, collector: StatsCollector | None = None, monitor: GpuMonitor | None = None):
        self.collector = collector or StatsCollector()
        self.monitor = monitor or GpuMonitor()
        self.enabled = True
        self.installed: list[str] = []
        self.not_installed: dict[str, str] = {}
        self.failure_hook = ""  # why a failed generation cannot be noticed ("" when the wrapper is installed)
        self._cuda = False

    # -- denoiser callbacks (sampler hot path) ---------------------------------------------------------------
    def on_cfg_denoiser(self, params: Any) -> None:
        if not self.enabled:
            return
        denoiser = params.denoiser
        try:
            index, calls, steps = denoiser.step, denoiser.total_steps, denoiser.steps
        except AttributeError:  # another denoiser: whatever counters it has (index None: count the calls)
            index = getattr(denoiser, "step", None)
            steps = getattr(denoiser, "steps", None) or params.total_sampling_steps
            calls = getattr(denoiser, "total_steps", None) or steps
        self._cuda = cuda = params.x.is_cuda
        self.collector.step_started(index, calls, steps, cuda)

    def on_cfg_after_cfg(self, params: Any) -> None:
        if self.enabled:
            self.collector.step_finished(self._cuda)

    # -- stage wrappers ------------------------------------------------------------------------------------
    def on_app_started(self, demo: Any = None, app: Any = None) -> None:
        """Install the stage wrappers (again after Reload UI: Accel's unload undoes every Accel patch)."""
        from . import extension
        self.install(extension.get().patches)

    def install(self, patches: Any) -> list[str]:
        """Wrap each stage target through ``patches`` (a PatchOwner); a target missing from this WebUI is
        skipped with the reason in ``not_installed``."""
        import importlib
        self.installed, self.not_installed = [], {}
        for stage, module_name, attr in STAGE_TARGETS:
            try:
                module = importlib.import_module(module_name)
                original = patches.original(module, attr)
            except (ImportError, AttributeError) as e:
                self.not_installed[stage] = f"{module_name}.{attr} not found: {e}"
                continue
            patches.patch(module, attr, self.timed(stage, original))
            self.installed.append(stage)
        module_name, attr = GENERATION_TARGET
        try:
            module = importlib.import_module(module_name)
            patches.patch(module, attr, self.ends_on_failure(patches.original(module, attr)))
            self.failure_hook = ""
        except (ImportError, AttributeError) as e:
            self.failure_hook = f"{module_name}.{attr} not found: {e}"
        return self.installed

    def ends_on_failure(self, original: Callable) -> Callable:
        collector = self.collector

        @functools.wraps(original)
        def accel_generation(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            except BaseException:  # an error, an OOM, or a KeyboardInterrupt: the image will not be finished
                collector.abort_image()
                raise

        accel_generation.accel_generation = True
        return accel_generation

    def timed(self, stage: str, original: Callable) -> Callable:
        collector = self.collector

        @functools.wraps(original)
        def accel_timed(*args, **kwargs):
            if not self.enabled or not collector.image_open():
                return original(*args, **kwargs)
            with collector.stage(stage, _device_sync()):
                return original(*args, **kwargs)

        accel_timed.accel_stage = stage
        return accel_timed

    # -- per image (scripts/accel_infotext.py) -----------------------------------------------------------------
    def begin_image(self, p: Any = None) -> None:
        config = _config()
        self.enabled = bool(getattr(config, "live_stats", True)) if config is not None else True
        if self.enabled:
            self.collector.begin_image()

    def end_image(self, p: Any = None) -> dict | None:
        summary = self.collector.end_image() if self.enabled else None
        config = _config()
        if p is not None and config is not None and getattr(config, "infotext", False):
            params = getattr(p, "extra_generation_params", None)
            if isinstance(params, dict):
                params.update(infotext_fields(summary, _applied_config(), _attention_name()))
        return summary

    # -- readers --------------------------------------------------------------------------------------------
    def snapshot(self, device: Any = None) -> dict:
        """What ``GET /accel/v1/stats`` returns (see README "JSON API")."""
        memory = self.monitor.read(device)
        return {"enabled": self.enabled, "generation": self.collector.snapshot(), "memory": memory,
                "vram": vram_summary(memory), "webui": _webui_job(),
                "stages_hooked": list(self.installed), "stages_missing": dict(self.not_installed)}


def infotext_fields(summary: dict | None, config: Any, attention: str | None) -> dict[str, str]:
    """``Accel attention``, ``Accel toggles`` (the non-default runtime settings) and ``Accel speed``."""
    toggles = [f"{name} {getattr(config, name)}" for name in ("channels_last", "cudnn_benchmark", "tf32", "nan_check")
               if getattr(config, name, "default") != "default"]
    fields = {"Accel attention": attention or "none", "Accel toggles": " ".join(toggles) if toggles else "default"}
    if summary and summary.get("passes"):
        fields["Accel speed"] = " + ".join(format_rate(p.get("its")) for p in summary["passes"])
    return fields


def _config() -> Any:
    try:
        from . import options
        return options.read_config()
    except Exception:
        return None


def _applied_config() -> Any:
    """The toggles as Accel last applied them, not as ``shared.opts`` says: ``override_settings`` put values in
    the options for one job without applying them (AccelExtension.note_overrides). None: nothing applied."""
    try:
        from . import extension
        return extension.get().applied_config()
    except Exception:
        return None


def _attention_name() -> str | None:
    try:
        from modules import sd_hijack
        current = sd_hijack.current_optimizer
        return current.name if current is not None else None
    except Exception:
        return None


def _webui_job() -> dict:
    try:
        from modules import shared
        state = shared.state
        return {"busy": state.job_count != 0, "job": state.job, "job_no": state.job_no, "job_count": state.job_count,
                "sampling_step": state.sampling_step, "sampling_steps": state.sampling_steps}
    except Exception as e:
        return {"busy": None, "reason": f"shared.state unavailable: {e}"}


def webui_device() -> Any:
    try:
        from modules import devices
        return devices.device
    except Exception:
        return None


get = process_singleton(LiveStats)  # kept across Reload UI, like the extension owner
