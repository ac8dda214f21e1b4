"""Compile the UNet of whitelisted checkpoints inside the WebUI: the decisions, the LoRA bridge, prewarm.

On every model load (and settings change) :meth:`CompileController.sync` decides for the loaded
checkpoint: compile (whitelisted, enabled, nothing refuses) or eager. The same UNet object is reused when
the WebUI switches between checkpoints of one architecture, so a :class:`CompiledModule` lives on the
UNet (``_accel_compiled``) and is installed or uninstalled, keeping its graphs for a switch back. What is
shown and logged about it is derived from what is installed now (:mod:`.states`).

LoRA: the built-in Lora extension patches ``torch.nn.Linear/Conv2d/...forward`` and applies weights in
place lazily inside those forwards. Traced, that Python would be frozen into the graph or recompile on
every LoRA change. Instead :class:`LoraBridge` applies pending LoRA weights in place before each UNet
call and lets compiles and compiled calls see torch's own forwards on their thread only
(:mod:`.lora_forwards`: a background compile never changes what an image generating meanwhile runs);
in-place weight changes reach compiled graphs because inductor reads parameters at run time (no freezing).

Precompiled graphs (torch with ahead-of-time compile): :class:`WebUIHooks` names what a graph bakes in
from the WebUI beyond the UNet itself: the attention optimization and ``upcast_attn`` (in the file name),
and the Accel attention runner's per-shape decisions (saved with the graph; at load they are re-adopted
when the timing store still agrees, instead of an eager priming call). While hypernetworks are loaded
nothing is precompiled.
"""

from __future__ import annotations

import sys
import types
import weakref

import torch

from ... import features
from ...compile import CompiledModule, CompileOptions, parse_buckets
from ...compile.compiled_module import CUDA_GRAPH_MODES
from ...compile.neutralise import disable_checkpoint_flags, plain_checkpoint
from ...config import AccelConfig
from . import lora_forwards
from .cache_folder import CompileCache, compile_activity
from .hooks import WebUIHooks
from .states import COMPILED, EAGER, REFUSED, CompileStates, config_reason
from .warm_queue import MAX_WARM_SIZES, WarmQueue, generation_reserve

_CHECKPOINT_HOLDERS = ("ldm.modules.diffusionmodules.util", "ldm.modules.attention",
                       "ldm.modules.diffusionmodules.openaimodel", "sgm.modules.diffusionmodules.util",
                       "sgm.modules.attention", "sgm.modules.diffusionmodules.openaimodel")


def unet_of(sd_model) -> torch.nn.Module | None:
    """The UNet (``sd_model.model.diffusion_model``) of an ldm or sgm model, or None."""
    return getattr(getattr(sd_model, "model", None), "diffusion_model", None)


def compiled_of(sd_model) -> CompiledModule | None:
    """The :class:`CompiledModule` living on ``sd_model``'s UNet, if Accel ever compiled it."""
    return getattr(unet_of(sd_model), "_accel_compiled", None)


def compile_options(config: AccelConfig, precompile_dir: str = "") -> CompileOptions:
    return CompileOptions(mode=config.compile_mode, backend=config.compile_backend, dynamic=config.compile_dynamic,
                          cache_limit=config.compile_cache_limit, background=config.compile_background,
                          precompile_dir=precompile_dir)


class CompileController:
    def __init__(self, owner):
        self.owner = owner  # AccelExtension: config(), patches, root, log
        self.view = CompileStates(lambda message: self.owner.log(message))
        self._modules: weakref.WeakSet[CompiledModule] = weakref.WeakSet()  # every module compiled here
        self.cache = CompileCache(owner, self._modules)
        self.warmer = WarmQueue(lambda message: self.owner.log(message),
                                call_context=lambda device_type: self.owner.precision.call_context(device_type))

    def cache_dir(self, config: AccelConfig) -> str:
        return self.cache.folder(config)

    def refusals(self, sd_model, config: AccelConfig) -> list[str]:
        reasons = []
        support = features.compile_support()
        if not support.available:
            reasons.append(support.reason)
        if getattr(sd_model, "lowvram", False):
            reasons.append("--medvram/--lowvram move UNet parts between devices during a step; "
                           "compile needs the UNet resident")
        from modules import shared
        if getattr(shared.opts, "lora_functional", False):
            reasons.append("Lora's 'functional' mode computes LoRA inside forward, which a graph would freeze; "
                           "turn it off in Settings > Extra Networks to compile")
        if config.compile_mode in CUDA_GRAPH_MODES and torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            need = config.compile_cudagraph_min_free_gb * 2**30
            if free < need:
                reasons.append(f"{config.compile_mode} uses CUDA graphs and needs {need / 2**30:.1f} GB free VRAM "
                               f"(measured need), only {free / 2**30:.1f} GB is free; use mode 'default'")
        return reasons

    def sync(self, sd_model) -> None:
        """Make the loaded model's UNet compiled or eager according to the current settings (one log line
        when that changes what runs: :meth:`.states.CompileStates.settle`)."""
        unet = unet_of(sd_model)
        if unet is None:
            return
        info = getattr(sd_model, "sd_checkpoint_info", None)
        title = getattr(info, "title", "unknown checkpoint")
        config = self.owner.config()
        compiled = compiled_of(sd_model)
        why = config_reason(info, config)
        if why:
            if compiled is not None:
                compiled.uninstall()
            self.view.settle(info, EAGER, why)
            return
        reasons = self.refusals(sd_model, config)
        if reasons:
            self._refuse(info, compiled, "; ".join(reasons))
            return
        try:  # everything checked before anything is installed: a refusal leaves the UNet eager
            options = compile_options(config, self.cache.use(config))
            problem = options.backend_problem()
            if problem:
                raise ValueError(problem)
            buckets = parse_buckets(config.compile_prewarm)
        except ValueError as e:
            self._refuse(info, compiled, str(e))
            return
        self._prepare(config, unet)
        try:
            if compiled is None:
                compiled = CompiledModule(unet, title, options, WebUIHooks(unet, self.owner), self.owner.log)
                unet._accel_compiled = compiled
                self._modules.add(compiled)  # cache clear waits for its compiles; cache size re-measured after them
            else:  # weights reloaded: re-apply LoRA
                compiled.name, compiled.hooks = title, WebUIHooks(unet, self.owner)
                compiled.set_options(options)
            compiled.install()
        except Exception as e:  # torch refused the options; install() left nothing installed
            self._refuse(info, compiled, f"torch.compile refused the options: {type(e).__name__}: {e}")
            return
        self.view.settle(info, COMPILED, options=options)
        self.prewarm(sd_model, compiled, buckets)

    def _refuse(self, info, compiled: CompiledModule | None, reason: str) -> None:
        if compiled is not None:
            compiled.uninstall()
        self.view.settle(info, REFUSED, reason)

    def _prepare(self, config: AccelConfig, unet: torch.nn.Module) -> None:
        disable_checkpoint_flags(unet)
        for name in _CHECKPOINT_HOLDERS:
            module = sys.modules.get(name)
            if module is not None and callable(getattr(module, "checkpoint", None)) \
                    and not self.owner.patches.is_patched(module, "checkpoint"):
                self.owner.patches.patch(module, "checkpoint", plain_checkpoint)

    def prewarm(self, sd_model, compiled: CompiledModule, buckets, max_pending: int | None = None,
                reserve: int = 0) -> list[str]:
        """Queue ``buckets`` for background compiles of ``compiled`` (see :class:`.warm_queue.WarmQueue`)."""
        return self.warmer.queue(sd_model, compiled, buckets, max_pending, reserve)

    def warm(self, sd_model, buckets_text: str) -> list[str]:
        """Queue background compiles for ``buckets_text`` ("512x768x1, ...", at most :data:`MAX_WARM_SIZES`)
        on the loaded, compiled UNet; sizes are checked here, their inputs built on the worker."""
        buckets = parse_buckets(buckets_text, MAX_WARM_SIZES)  # ValueError names the bad entry
        compiled = compiled_of(sd_model)
        if compiled is None or not compiled.installed:
            info = getattr(sd_model, "sd_checkpoint_info", None)
            state = self.view.loaded_state(info, False, self.owner.config())
            raise RuntimeError(f"{getattr(info, 'title', 'the loaded checkpoint')} is not compiled ({state['reason']})")
        return self.prewarm(sd_model, compiled, buckets, max_pending=MAX_WARM_SIZES,
                            reserve=generation_reserve(compiled.options.cache_limit))

    def cache_info(self, measure: bool = False) -> dict:
        """The compile cache folder and its size (:meth:`.cache_folder.CompileCache.info`: measured again only after
        a compile or clear, or when ``measure`` asks)."""
        return self.cache.info(measure)

    def clear_cache(self, sd_model=None) -> dict:
        """Delete Accel's entries in the compile cache folder (graphs already in memory stay usable until restart).
        Refused (RuntimeError) while any compile of any checkpoint runs or waits, and for a folder Accel did not
        create."""
        busy = compile_activity(self._modules, self.warmer)
        if busy:
            raise RuntimeError(f"compiles are running or waiting ({busy}); the compile cache is cleared only when "
                               f"none is: try again when they have finished")
        return self.cache.clear()

    def uninstall_all(self, sd_model) -> None:
        """Back to eager (precision change, unload); also takes the per-thread layer forwards off (they are put
        back at the next compiled call)."""
        lora_forwards.remove(self.owner.patches)
        compiled = compiled_of(sd_model)
        if compiled is not None:
            compiled.uninstall()

    def unload(self, sd_model) -> None:
        """Accel is unloaded (Reload UI): back to eager, and the next sync's state is logged afresh."""
        self.uninstall_all(sd_model)
        self.view.forget_installed()

    def checkpoint_states(self, sd_model) -> dict[str, dict]:
        """Per checkpoint ``{"status", "reason", "loaded"}``, derived now (:mod:`.states`)."""
        config = self.owner.config()
        info = getattr(sd_model, "sd_checkpoint_info", None) if unet_of(sd_model) is not None else None
        compiled = compiled_of(sd_model)
        loaded = self.view.loaded_state(info, compiled is not None and compiled.installed, config) \
            if info is not None else None
        from modules import sd_models
        return self.view.checkpoints(info, loaded, config, list(sd_models.checkpoints_list.values()),
                                     lambda: self._general_refusal(config))

    def _general_refusal(self, config: AccelConfig) -> str:
        """Why no checkpoint would compile if loaded now ("" when one would); --medvram-sdxl is not foreseen."""
        from modules import shared
        cmd = shared.cmd_opts  # what lowvram.is_needed reads for every model
        not_loaded = types.SimpleNamespace(lowvram=bool(getattr(cmd, "lowvram", False) or getattr(cmd, "medvram", 0)))
        reasons = self.refusals(not_loaded, config)
        try:
            problem = compile_options(config).backend_problem()
            if problem:
                reasons.append(problem)
            parse_buckets(config.compile_prewarm)
        except ValueError as e:
            reasons.append(str(e))
        return "; ".join(reasons)

    def snapshot(self, sd_model) -> dict:
        """``checkpoints`` (:meth:`checkpoint_states`); ``loaded``: the graphs on the loaded UNet, named by the
        checkpoint loaded now, with its status and reason (None when Accel never compiled that UNet): its sizes
        are listed only while they run (installed), else only counted (``kept``, for a switch back)."""
        checkpoints = self.checkpoint_states(sd_model)
        compiled = compiled_of(sd_model)
        loaded = None
        if compiled is not None:
            loaded = compiled.snapshot()
            title = getattr(getattr(sd_model, "sd_checkpoint_info", None), "title", "unknown checkpoint")
            state = checkpoints.get(title, {"status": "eager", "reason": ""})
            loaded.update(name=title, status=state["status"], reason=state["reason"],
                          kept=sum(1 for s in loaded["shapes"] if s["status"] == "ready"))
            if not loaded["installed"]:
                loaded.update(shapes=[], recompiles=[])
        return {"checkpoints": checkpoints, "loaded": loaded, "cache": self.cache_info(),
                "support": features.compile_support().as_dict()}
