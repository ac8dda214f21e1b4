"""What a compiled UNet needs from the WebUI around each call: LoRA weights applied in place, torch's own layer
forwards while tracing or running a graph (:mod:`.lora_forwards`), and what a precompiled graph bakes in from
the WebUI beyond the UNet (the attention optimization, ``upcast_attn``, Accel auto's per-shape decisions).

See :mod:`.glue` for why LoRA is bridged this way instead of traced.
"""

from __future__ import annotations

import contextlib
import sys

import torch

from ...compile import CompileHooks
from ..patching import PatchOwner
from . import lora_forwards


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
