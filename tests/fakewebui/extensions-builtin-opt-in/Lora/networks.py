"""Fake of extensions-builtin/Lora/networks.py (v1.10.1): what the built-in Lora extension does to torch.nn
layers, with the real names and behaviour (own code).

* ``network_<Layer>_forward`` (Linear, Conv2d, GroupNorm, LayerNorm, MultiheadAttention) replace the layers'
  class forwards (lora_patches.py). Each applies the selected networks to the layer's weights in place, lazily
  (``network_apply_weights``: back the weights up to the CPU once, restore them and add every network's change
  when the selection differs from what the layer has), then calls ``originals.<Layer>_forward``. With the
  ``lora_functional`` option, Linear/Conv2d/GroupNorm/LayerNorm compute the change inside forward instead
  (``network_forward``).
* ``network_<Layer>_load_state_dict`` forget the backup and the applied selection before a weight load.
* ``assign_network_names_to_compvis_modules`` (on every model load) names each text-encoder and UNet module
  (``network_layer_name``: its dotted name with underscores); container modules are named too.

Fake-only: networks live in memory. ``register_network(name, layers)`` makes one available (see network.py
for ``layers``); ``load_networks`` selects networks by name as the prompt's ``<lora:name:te:unet>`` does."""

from __future__ import annotations

import network
import torch
from modules import devices, shared

originals = None  # lora_patches.LoraPatches, set by scripts/lora_script.py
available_networks: dict[str, dict[str, tuple]] = {}
loaded_networks: list[network.Network] = []
extra_network_lora = None


def register_network(name: str, layers: dict[str, tuple]) -> None:
    available_networks[name] = layers


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None) -> None:
    loaded_networks.clear()
    for i, name in enumerate(names):
        net = network.Network(name, available_networks[name])
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        net.dyn_dim = dyn_dims[i] if dyn_dims else 1.0
        loaded_networks.append(net)


def assign_network_names_to_compvis_modules(sd_model) -> None:
    mapping = {}
    if getattr(sd_model, "is_sdxl", False):
        roots = [(f"{i}_", getattr(e, "wrapped", e)) for i, e in enumerate(sd_model.conditioner.embedders)]
    else:
        encoder = sd_model.cond_stage_model
        roots = [("", getattr(encoder, "wrapped", encoder))]
    roots.append(("", sd_model.model))
    for prefix, root in roots:
        for name, module in root.named_modules():
            layer_name = prefix + name.replace(".", "_")
            mapping[layer_name] = module
            module.network_layer_name = layer_name
    sd_model.network_layer_mapping = mapping


def _weights(layer):
    if isinstance(layer, torch.nn.MultiheadAttention):
        return [(layer, "in_proj_weight"), (layer.out_proj, "weight")]
    return [(layer, "weight")]


def _bias_owner(layer):
    return layer.out_proj if isinstance(layer, torch.nn.MultiheadAttention) else layer


def store_weights_backup(weight):
    return None if weight is None else weight.to(devices.cpu, copy=True)


def restore_weights_backup(obj, field, weight) -> None:
    if weight is None:
        setattr(obj, field, None)
    else:
        getattr(obj, field).copy_(weight)


def network_restore_weights_from_backup(self) -> None:
    weights = getattr(self, "network_weights_backup", None)
    bias = getattr(self, "network_bias_backup", None)
    if weights is None and bias is None:
        return
    with torch.no_grad():
        if weights is not None:
            for (obj, field), saved in zip(_weights(self), weights if isinstance(weights, tuple) else (weights,),
                                           strict=True):
                restore_weights_backup(obj, field, saved)
        restore_weights_backup(_bias_owner(self), "bias", bias)


def allowed_layer_without_weight(layer) -> bool:
    return isinstance(layer, torch.nn.LayerNorm) and not layer.elementwise_affine


def network_apply_weights(self) -> None:
    """Give the layer the weights of the selected networks (nothing to do when it has them already)."""
    layer_name = getattr(self, "network_layer_name", None)
    if layer_name is None:
        return
    current = getattr(self, "network_current_names", ())
    wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in loaded_networks)
    if getattr(self, "network_weights_backup", None) is None and wanted != ():
        if current != () and not allowed_layer_without_weight(self):
            raise RuntimeError(f"{layer_name} - no backup weights found and current weights are not unchanged")
        saved = tuple(store_weights_backup(getattr(obj, field)) for obj, field in _weights(self))
        self.network_weights_backup = saved if len(saved) > 1 else saved[0]
    if getattr(self, "network_bias_backup", None) is None and wanted != ():
        bias_backup = store_weights_backup(getattr(_bias_owner(self), "bias", None))
        if bias_backup is not None and current != ():
            raise RuntimeError("no backup bias found and current bias are not unchanged")
        self.network_bias_backup = bias_backup
    if current == wanted:
        return
    network_restore_weights_from_backup(self)
    for net in loaded_networks:
        module = net.modules.get(layer_name)
        if module is None or not hasattr(self, "weight"):
            continue
        with torch.no_grad():
            weight, bias = self.weight, self.bias
            updown, ex_bias = module.calc_updown(weight)
            self.weight.copy_((weight.to(dtype=updown.dtype) + updown).to(dtype=self.weight.dtype))
            if ex_bias is not None and hasattr(self, "bias"):
                if self.bias is None:
                    self.bias = torch.nn.Parameter(ex_bias).to(self.weight.dtype)
                else:
                    self.bias.copy_((bias + ex_bias).to(dtype=self.bias.dtype))
    self.network_current_names = wanted


def network_forward(org_module, input, original_forward):
    """The functional ("old method") path: weights as loaded, each network's change added to the output."""
    if not loaded_networks:
        return original_forward(org_module, input)
    input = devices.cond_cast_unet(input)
    network_restore_weights_from_backup(org_module)
    network_reset_cached_weight(org_module)
    y = original_forward(org_module, input)
    layer_name = getattr(org_module, "network_layer_name", None)
    for net in loaded_networks:
        module = net.modules.get(layer_name)
        if module is not None:
            y = module.forward(input, y)
    return y


def network_reset_cached_weight(self) -> None:
    self.network_current_names = ()
    self.network_weights_backup = None
    self.network_bias_backup = None


def _forward(name: str, functional: bool):
    def forward(self, input):
        original = getattr(originals, f"{name}_forward")
        if functional and shared.opts.lora_functional:
            return network_forward(self, input, original)
        network_apply_weights(self)
        return original(self, input)
    forward.__name__ = forward.__qualname__ = f"network_{name}_forward"
    return forward


def _load_state_dict(name: str):
    def load_state_dict(self, *args, **kwargs):
        network_reset_cached_weight(self)
        return getattr(originals, f"{name}_load_state_dict")(self, *args, **kwargs)
    load_state_dict.__name__ = load_state_dict.__qualname__ = f"network_{name}_load_state_dict"
    return load_state_dict


network_Linear_forward = _forward("Linear", functional=True)
network_Conv2d_forward = _forward("Conv2d", functional=True)
network_GroupNorm_forward = _forward("GroupNorm", functional=True)
network_LayerNorm_forward = _forward("LayerNorm", functional=True)
network_Linear_load_state_dict = _load_state_dict("Linear")
network_Conv2d_load_state_dict = _load_state_dict("Conv2d")
network_GroupNorm_load_state_dict = _load_state_dict("GroupNorm")
network_LayerNorm_load_state_dict = _load_state_dict("LayerNorm")
network_MultiheadAttention_load_state_dict = _load_state_dict("MultiheadAttention")


def network_MultiheadAttention_forward(self, *args, **kwargs):
    network_apply_weights(self)
    return originals.MultiheadAttention_forward(self, *args, **kwargs)
