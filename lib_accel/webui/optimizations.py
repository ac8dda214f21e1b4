"""Accel's attention kernels as the WebUI's ``SdOptimization`` entries (Settings > Optimizations).

Each entry is a thin ``SdOptimization`` subclass: ``is_available`` asks the kernel, ``apply`` installs the
forwards built by :mod:`lib_accel.attention.forwards` on ldm's and sgm's ``CrossAttention`` and
``AttnBlock`` (as the built-ins do), and the WebUI's base ``undo`` restores the originals. Priorities are
low on purpose: "Automatic" keeps choosing the WebUI's own default; users opt in by title.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..attention import (
    FastestKernel,
    ForwardHooks,
    PinnedKernel,
    all_kernels,
    default_kernel,
    get_kernel,
    make_attnblock_forward,
    make_cross_attention_forward,
)
from ..attention.chunked import ChunkedAttention

PRIORITY = 5  # below every built-in except none; never wins "Automatic"


@dataclass(frozen=True)
class OptimizationSpec:
    name: str
    kernel: str  # a registry kernel name, or "auto"
    cmd_opt: str | None = None


SPECS: tuple[OptimizationSpec, ...] = (
    OptimizationSpec("Accel auto", "auto"),
    OptimizationSpec("Accel SDPA flash", "sdpa-flash"),
    OptimizationSpec("Accel SDPA mem-efficient", "sdpa-efficient"),
    OptimizationSpec("Accel SDPA cuDNN", "sdpa-cudnn"),
    OptimizationSpec("Accel SDPA math", "sdpa-math"),
    OptimizationSpec("Accel xformers", "xformers"),
    OptimizationSpec("Accel chunked (low memory)", "chunked"),
)


def spec_reasons(spec: OptimizationSpec) -> list[str]:
    """Why ``spec`` cannot run on this machine (empty when it can)."""
    if spec.kernel == "auto":
        return []
    return get_kernel(spec.kernel).unavailable_reasons()


def targets() -> list[tuple[object, object]]:
    """(CrossAttention class, AttnBlock class) pairs of ldm and, when importable, sgm."""
    import ldm.modules.attention
    import ldm.modules.diffusionmodules.model
    pairs = [(ldm.modules.attention.CrossAttention, ldm.modules.diffusionmodules.model.AttnBlock)]
    try:
        import sgm.modules.attention
        import sgm.modules.diffusionmodules.model
        pairs.append((sgm.modules.attention.CrossAttention, sgm.modules.diffusionmodules.model.AttnBlock))
    except ImportError:
        pass
    return pairs


def webui_hooks() -> ForwardHooks:
    from modules import shared
    from modules.hypernetworks import hypernetwork

    def hypernetworks(context):
        return hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context)

    return ForwardHooks(upcast=lambda: bool(shared.opts.upcast_attn), hypernetworks=hypernetworks)


def make_runner(spec: OptimizationSpec, context) -> Callable:
    """The callable that runs attention for ``spec``; ``context`` supplies config, store and log."""
    config = context.config()
    fallback = default_kernel()
    if spec.kernel == "auto":
        candidates = [k for k in all_kernels() if k.is_available() and k.name != "chunked"]
        candidates.append(ChunkedAttention(config.chunk_memory_fraction))
        return FastestKernel(candidates, fallback, context.timing_store(), context.log, config.autotune_repeats)
    if spec.kernel == "chunked":
        return ChunkedAttention(config.chunk_memory_fraction)
    return PinnedKernel(get_kernel(spec.kernel), fallback, context.log)


def build_optimizations(context) -> list:
    """Fresh ``SdOptimization`` instances for every spec (the WebUI filters by ``is_available``)."""
    from modules import sd_hijack_optimizations

    class AccelOptimization(sd_hijack_optimizations.SdOptimization):
        priority = PRIORITY

        def __init__(self, spec: OptimizationSpec):
            self.spec = spec
            self.name = spec.name
            self.cmd_opt = spec.cmd_opt
            self.runner = None

        def is_available(self) -> bool:
            return not spec_reasons(self.spec)

        def apply(self) -> None:
            self.runner = make_runner(self.spec, context)
            hooks = webui_hooks()
            cross = make_cross_attention_forward(self.runner, hooks)
            block = make_attnblock_forward(self.runner, hooks)
            for cross_cls, block_cls in targets():
                cross_cls.forward = cross
                block_cls.forward = block
            context.on_applied(self)

    return [AccelOptimization(spec) for spec in SPECS]
