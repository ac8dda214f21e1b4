"""Fake of extensions-builtin/Lora/network.py (v1.10.1): a loaded network and its per-layer modules.

A network is built in memory (no files): ``layers`` maps a layer's ``network_layer_name`` to ``("lora", up,
down)`` (a low-rank change of a Linear or 1x1 Conv2d weight) or ``("full", diff)`` (a change of any weight,
norms included, like network_full/network_norm). ``multiplier()`` picks te/unet as the real does (by
"transformer" near the start of the layer's name)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NetworkModule:
    def __init__(self, net: Network, layer_name: str, spec: tuple):
        self.network = net
        self.sd_key = layer_name
        self.kind = spec[0]
        self.tensors = spec[1:]

    def multiplier(self) -> float:
        return self.network.te_multiplier if "transformer" in self.sd_key[:20] else self.network.unet_multiplier

    def calc_updown(self, orig_weight: torch.Tensor):
        """(the weight change, an extra bias or None), in the weight's shape, device and dtype."""
        if self.kind == "lora":
            up, down = self.tensors
            updown = (up.float() @ down.float()).reshape(orig_weight.shape)
        else:
            updown = self.tensors[0].float().reshape(orig_weight.shape)
        updown = updown * self.multiplier()
        return updown.to(orig_weight.device, orig_weight.dtype), None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The functional ("old method") path: the layer's output plus this module's contribution."""
        if self.kind != "lora":
            raise NotImplementedError(f"{self.kind} modules have no functional forward in this fake")
        up, down = self.tensors
        return y + self.multiplier() * F.linear(F.linear(x, down.to(x.dtype)), up.to(x.dtype))


class Network:
    def __init__(self, name: str, layers: dict[str, tuple]):
        self.name = name
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules = {key: NetworkModule(self, key, spec) for key, spec in layers.items()}
        self.bundle_embeddings = {}
