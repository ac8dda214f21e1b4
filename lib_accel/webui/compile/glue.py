"""Compile the UNet of whitelisted checkpoints inside the WebUI: the decisions, the LoRA bridge, prewarm.

On every model load (and settings change) :meth:`CompileController.sync` decides for the loaded
checkpoint: compile (whitelisted, enabled, nothing refuses) or eager. The same UNet object is reused when
the WebUI switches between checkpoints of one architecture, so a :class:`CompiledModule` lives on the
UNet (``_accel_compiled``) and is installed or uninstalled, keeping its graphs for a switch back.

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

import contextlib
import sys
import weakref

import torch

from ... import features
from ...compile import CompiledModule, CompileHooks, CompileOptions, parse_buckets
from ...compile.compiled_module import CUDA_GRAPH_MODES
from ...compile.neutralise import disable_checkpoint_flags, plain_checkpoint
from ...config import AccelConfig
from ..patching import PatchOwner
from . import lora_forwards
from .cache_folder import CompileCache, compile_activity
from .warm_queue import MAX_WARM_SIZES, WarmQueue

_CHECKPOINT_HOLDERS = ("ldm.modules.diffusionmodules.util", "ldm.modules.attention",
                       "ldm.modules.diffusionmodules.openaimodel", "sgm.modules.diffusionmodules.util",
                       "sgm.modules.attention", "sgm.modules.diffusionmodules.openaimodel")


class LoraBridge(CompileHooks):
    def __init__(self, unet: torch.nn.Module, patches: PatchOwner | None = None):
        self.unet = unet
        self.patches = patches or PatchOwner()
        self._layers: list[torch.nn.Module] | None = None
        self._applied: tuple | None = None

    @staticmethod
    def networks():
        return sys.modules.get("networks")  # extensions-builtin/Lora/networks.py, when the Lora extension is on

    def before_call(self) -> None:
        networks = self.networks()
        if networks is None:
            return
        wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in networks.loaded_networks)
        if wanted == self._applied:
            return
        if self._layers is None:  # the layer types Lora patches; it names container modules too
            types = tuple(getattr(torch.nn, name) for name in lora_forwards.LAYERS)
            self._layers = [m for m in self.unet.modules()
                            if isinstance(m, types) and getattr(m, "network_layer_name", None)]
        for layer in self._layers:
            networks.network_apply_weights(layer)
        self._applied = wanted

    def compiled_call_context(self):
        networks = self.networks()
        originals = getattr(networks, "originals", None) if networks is not None else None
        if originals is None:
            return contextlib.nullcontext()
        return lora_forwards.torch_forwards(originals, self.patches)


class WebUIHooks(LoraBridge):
    def __init__(self, unet: torch.nn.Module, owner):
        super().__init__(unet, owner.patches)
        self.owner = owner  # AccelExtension: applied_optimization, timing_store()

    def precompile_refusal(self) -> str:
        from modules import shared
        return "hypernetworks are loaded" if getattr(shared, "loaded_hypernetworks", None) else ""

    def precompile_key(self) -> str:
        from modules import sd_hijack, shared
        optimizer = getattr(getattr(sd_hijack, "current_optimizer", None), "name", None)
        return f"attention {optimizer!r}; upcast_attn {bool(getattr(shared.opts, 'upcast_attn', False))}"

    def _runner(self):
        """The applied Accel attention runner, whose per-shape decisions a traced graph bakes in."""
        from modules import sd_hijack
        applied = getattr(self.owner, "applied_optimization", None)
        return getattr(applied, "runner", None) if applied is sd_hijack.current_optimizer else None

    def precompile_state(self) -> dict:
        runner = self._runner()
        return {"attention": runner.settled_state()} if hasattr(runner, "settled_state") else {}

    def precompile_prepare(self, state: dict) -> str:
        if state.get("attention") is None:
            return ""
        runner = self._runner()
        return runner.settle(state["attention"]) if hasattr(runner, "settle") else "the attention runner changed"


def unet_of(sd_model) -> torch.nn.Module | None:
    """The UNet (``sd_model.model.diffusion_model``) of an ldm or sgm model, or None."""
    return getattr(getattr(sd_model, "model", None), "diffusion_model", None)


def compiled_of(sd_model) -> CompiledModule | None:
    """The :class:`CompiledModule` living on ``sd_model``'s UNet, if Accel ever compiled it."""
    return getattr(unet_of(sd_model), "_accel_compiled", None)


def matches_whitelist(info, whitelist: tuple[str, ...]) -> bool:
    """Whitelisted by title ("name [hash]") or by name alone, so a re-hashed file stays whitelisted."""
    if info is None:
        return False
    names = {getattr(info, "title", None), getattr(info, "name", None), getattr(info, "model_name", None)}
    return any(entry in names or entry.split(" [")[0] in names for entry in whitelist)


def compile_options(config: AccelConfig, precompile_dir: str = "") -> CompileOptions:
    return CompileOptions(mode=config.compile_mode, backend=config.compile_backend, dynamic=config.compile_dynamic,
                          cache_limit=config.compile_cache_limit, background=config.compile_background,
                          precompile_dir=precompile_dir)


class CompileController:
    def __init__(self, owner):
        self.owner = owner  # AccelExtension: config(), patches, root, log
        self.states: dict[str, dict] = {}
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
        """Make the loaded model's UNet compiled or eager according to the current settings."""
        unet = unet_of(sd_model)
        if unet is None:
            return
        info = getattr(sd_model, "sd_checkpoint_info", None)
        title = getattr(info, "title", "unknown checkpoint")
        config = self.owner.config()
        compiled = compiled_of(sd_model)
        if not config.compile_enabled or not matches_whitelist(info, config.compile_checkpoints):
            why = "compile is off" if not config.compile_enabled else "not in the compile whitelist"
            if compiled is not None and compiled.installed:
                compiled.uninstall()
                self.owner.log(f"[Accel] compile: {title} runs eager ({why})")
            self.states[title] = {"status": "eager", "reason": why}
            return
        reasons = self.refusals(sd_model, config)
        if reasons:
            if compiled is not None:
                compiled.uninstall()
            self.states[title] = {"status": "refused", "reason": "; ".join(reasons)}
            self.owner.log(f"[Accel] compile: {title} not compiled: {'; '.join(reasons)}")
            return
        try:  # everything checked before anything is installed: a refusal leaves the UNet eager
            options = compile_options(config, self.cache.use(config))
            problem = options.backend_problem()
            if problem:
                raise ValueError(problem)
            buckets = parse_buckets(config.compile_prewarm)
        except ValueError as e:
            self._refuse(title, compiled, str(e))
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
            self._refuse(title, compiled, f"torch.compile refused the options: {type(e).__name__}: {e}")
            return
        self.states[title] = {"status": "compiled", "reason": ""}
        self.prewarm(sd_model, compiled, buckets)

    def _refuse(self, title: str, compiled: CompiledModule | None, reason: str) -> None:
        if compiled is not None:
            compiled.uninstall()
        self.states[title] = {"status": "refused", "reason": reason}
        self.owner.log(f"[Accel] compile: {title} not compiled: {reason}")

    def _prepare(self, config: AccelConfig, unet: torch.nn.Module) -> None:
        disable_checkpoint_flags(unet)
        for name in _CHECKPOINT_HOLDERS:
            module = sys.modules.get(name)
            if module is not None and callable(getattr(module, "checkpoint", None)) \
                    and not self.owner.patches.is_patched(module, "checkpoint"):
                self.owner.patches.patch(module, "checkpoint", plain_checkpoint)

    def prewarm(self, sd_model, compiled: CompiledModule, buckets, max_pending: int | None = None) -> list[str]:
        """Queue ``buckets`` for background compiles of ``compiled`` (see :class:`.warm_queue.WarmQueue`)."""
        return self.warmer.queue(sd_model, compiled, buckets, max_pending)

    def warm(self, sd_model, buckets_text: str) -> list[str]:
        """Queue background compiles for ``buckets_text`` ("512x768x1, ...", at most :data:`MAX_WARM_SIZES`)
        on the loaded, compiled UNet; sizes are checked here, their inputs built on the worker."""
        buckets = parse_buckets(buckets_text, MAX_WARM_SIZES)  # ValueError names the bad entry
        compiled = compiled_of(sd_model)
        if compiled is None or not compiled.installed:
            title = getattr(getattr(sd_model, "sd_checkpoint_info", None), "title", "the loaded checkpoint")
            why = self.states.get(title, {}).get("reason") or "compile is off for it"
            raise RuntimeError(f"{title} is not compiled ({why})")
        return self.prewarm(sd_model, compiled, buckets, max_pending=MAX_WARM_SIZES)

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

    def snapshot(self, sd_model) -> dict:
        compiled = compiled_of(sd_model)
        return {"checkpoints": dict(self.states), "loaded": compiled.snapshot() if compiled is not None else None,
                "cache": self.cache_info(), "support": features.compile_support().as_dict()}
