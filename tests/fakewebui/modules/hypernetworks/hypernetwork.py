"""Fake of modules/hypernetworks/hypernetwork.py: applying loaded hypernetworks to the attention context, and
``attention_CrossAttention_forward``, the WebUI's default CrossAttention forward (restored by undo)."""

import torch
from ldm.modules.attention import merge_heads, split_heads
from ldm.util import default
from modules import devices, shared


class Hypernetwork:
    """Minimal: ``layers`` maps a context width to a (k module, v module) pair."""

    def __init__(self, name=None, layers=None):
        self.name = name
        self.layers = layers or {}


def apply_single_hypernetwork(hypernetwork, context_k, context_v, layer=None):
    hypernetwork_layers = (hypernetwork.layers if hypernetwork is not None else {}).get(
        context_k.shape[2], None
    )
    if hypernetwork_layers is None:
        return context_k, context_v
    if layer is not None:
        layer.hyper_k = hypernetwork_layers[0]
        layer.hyper_v = hypernetwork_layers[1]
    context_k = devices.cond_cast_unet(hypernetwork_layers[0](devices.cond_cast_float(context_k)))
    context_v = devices.cond_cast_unet(hypernetwork_layers[1](devices.cond_cast_float(context_v)))
    return context_k, context_v


def apply_hypernetworks(hypernetworks, context, layer=None):
    context_k = context
    context_v = context
    for hypernetwork in hypernetworks:
        context_k, context_v = apply_single_hypernetwork(hypernetwork, context_k, context_v, layer)
    return context_k, context_v


def attention_CrossAttention_forward(self, x, context=None, mask=None, **kwargs):
    h = self.heads
    q = self.to_q(x)
    context = default(context, x)
    context_k, context_v = apply_hypernetworks(shared.loaded_hypernetworks, context, self)
    k, v = self.to_k(context_k), self.to_v(context_v)
    q, k, v = (split_heads(t, h) for t in (q, k, v))
    sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
    if mask is not None:
        mask = mask.reshape(mask.shape[0], -1).repeat_interleave(h, dim=0)[:, None, :]
        sim.masked_fill_(~mask, -torch.finfo(sim.dtype).max)
    attn = sim.softmax(dim=-1)
    out = torch.einsum("b i j, b j d -> b i d", attn, v)
    return self.to_out(merge_heads(out, h))
