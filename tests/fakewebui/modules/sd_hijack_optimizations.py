"""Fake of modules/sd_hijack_optimizations.py: ``SdOptimization`` (same fields, title(), base undo()) and
the seven built-ins with their real names, labels, cmd_opts, priorities, availability rules and the
attributes each apply() replaces. Their forwards are distinct functions with the real names, but all compute
plain attention (einsum or SDPA, honouring ``upcast_attn`` and hypernetworks) instead of the real
sliced/xformers kernels."""

from __future__ import annotations

import ldm.modules.attention
import ldm.modules.diffusionmodules.model
import sgm.modules.attention
import sgm.modules.diffusionmodules.model
import torch
import torch.nn.functional as F
from ldm.modules.attention import merge_heads, split_heads
from ldm.util import default
from modules import devices, shared
from modules.hypernetworks import hypernetwork

diffusionmodules_model_AttnBlock_forward = ldm.modules.diffusionmodules.model.AttnBlock.forward
sgm_diffusionmodules_model_AttnBlock_forward = sgm.modules.diffusionmodules.model.AttnBlock.forward


class SdOptimization:
    name: str = None
    label: str | None = None
    cmd_opt: str | None = None
    priority: int = 0

    def title(self):
        if self.label is None:
            return self.name
        return f"{self.name} - {self.label}"

    def is_available(self):
        return True

    def apply(self):
        pass

    def undo(self):
        ldm.modules.attention.CrossAttention.forward = hypernetwork.attention_CrossAttention_forward
        ldm.modules.diffusionmodules.model.AttnBlock.forward = diffusionmodules_model_AttnBlock_forward
        sgm.modules.attention.CrossAttention.forward = hypernetwork.attention_CrossAttention_forward
        sgm.modules.diffusionmodules.model.AttnBlock.forward = sgm_diffusionmodules_model_AttnBlock_forward


def _set(cross=None, attnblock=None):
    for mod_attention, mod_model in (
        (ldm.modules.attention, ldm.modules.diffusionmodules.model),
        (sgm.modules.attention, sgm.modules.diffusionmodules.model),
    ):
        if cross is not None:
            mod_attention.CrossAttention.forward = cross
        if attnblock is not None:
            mod_model.AttnBlock.forward = attnblock


class SdOptimizationXformers(SdOptimization):
    name = "xformers"
    cmd_opt = "xformers"
    priority = 100

    def is_available(self):
        return shared.cmd_opts.force_enable_xformers or (
            shared.xformers_available
            and torch.cuda.is_available()
            and (6, 0) <= torch.cuda.get_device_capability(shared.device) <= (9, 0)
        )

    def apply(self):
        _set(xformers_attention_forward, xformers_attnblock_forward)


class SdOptimizationSdpNoMem(SdOptimization):
    name = "sdp-no-mem"
    label = "scaled dot product without memory efficient attention"
    cmd_opt = "opt_sdp_no_mem_attention"
    priority = 80

    def is_available(self):
        return hasattr(torch.nn.functional, "scaled_dot_product_attention") and callable(
            torch.nn.functional.scaled_dot_product_attention
        )

    def apply(self):
        _set(scaled_dot_product_no_mem_attention_forward, sdp_no_mem_attnblock_forward)


class SdOptimizationSdp(SdOptimizationSdpNoMem):
    name = "sdp"
    label = "scaled dot product"
    cmd_opt = "opt_sdp_attention"
    priority = 70

    def apply(self):
        _set(scaled_dot_product_attention_forward, sdp_attnblock_forward)


class SdOptimizationSubQuad(SdOptimization):
    name = "sub-quadratic"
    cmd_opt = "opt_sub_quad_attention"

    @property
    def priority(self):
        return 1000 if shared.device.type == "mps" else 10

    def apply(self):
        _set(sub_quad_attention_forward, sub_quad_attnblock_forward)


class SdOptimizationV1(SdOptimization):
    name = "V1"
    label = "original v1"
    cmd_opt = "opt_split_attention_v1"
    priority = 10

    def apply(self):
        _set(split_cross_attention_forward_v1)


class SdOptimizationInvokeAI(SdOptimization):
    name = "InvokeAI"
    cmd_opt = "opt_split_attention_invokeai"

    @property
    def priority(self):
        return 1000 if shared.device.type != "mps" and not torch.cuda.is_available() else 10

    def apply(self):
        _set(split_cross_attention_forward_invokeAI)


class SdOptimizationDoggettx(SdOptimization):
    name = "Doggettx"
    cmd_opt = "opt_split_attention"
    priority = 90

    def apply(self):
        _set(split_cross_attention_forward, cross_attention_attnblock_forward)


def list_optimizers(res):
    res.extend(
        [
            SdOptimizationXformers(),
            SdOptimizationSdpNoMem(),
            SdOptimizationSdp(),
            SdOptimizationSubQuad(),
            SdOptimizationV1(),
            SdOptimizationInvokeAI(),
            SdOptimizationDoggettx(),
        ]
    )


def _cross_attention(self, x, context, mask, use_sdp):
    h = self.heads
    q_in = self.to_q(x)
    context = default(context, x)
    context_k, context_v = hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context)
    k_in, v_in = self.to_k(context_k), self.to_v(context_v)
    dtype = q_in.dtype
    if shared.opts.upcast_attn:
        q_in, k_in, v_in = q_in.float(), k_in.float(), v_in.float()
    q, k, v = (split_heads(t, h) for t in (q_in, k_in, v_in))
    with devices.without_autocast(disable=not shared.opts.upcast_attn):
        if use_sdp:
            if mask is not None:
                mask = mask.reshape(mask.shape[0], -1).repeat_interleave(h, dim=0)[:, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
            out = torch.einsum("b i j, b j d -> b i d", sim.softmax(dim=-1), v)
    return self.to_out(merge_heads(out.to(dtype), h))


def split_cross_attention_forward_v1(self, x, context=None, mask=None, **kwargs):
    return _cross_attention(self, x, context, None, False)


def split_cross_attention_forward(self, x, context=None, mask=None, **kwargs):
    return _cross_attention(self, x, context, None, False)


def split_cross_attention_forward_invokeAI(self, x, context=None, mask=None, **kwargs):
    return _cross_attention(self, x, context, None, False)


def sub_quad_attention_forward(self, x, context=None, mask=None, **kwargs):
    assert mask is None, "attention-mask not currently implemented for SubQuadraticCrossAttnProcessor."
    return _cross_attention(self, x, context, None, False)


def xformers_attention_forward(self, x, context=None, mask=None, **kwargs):
    return _cross_attention(self, x, context, None, True)


def scaled_dot_product_attention_forward(self, x, context=None, mask=None, **kwargs):
    return _cross_attention(self, x, context, mask, True)


def scaled_dot_product_no_mem_attention_forward(self, x, context=None, mask=None, **kwargs):
    return _cross_attention(self, x, context, mask, True)


def _attnblock(self, x):
    h_ = self.norm(x)
    q, k, v = self.q(h_), self.k(h_), self.v(h_)
    b, c, h, w = q.shape
    q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3).contiguous() for t in (q, k, v))
    dtype = q.dtype
    if shared.opts.upcast_attn:
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(q, k, v).to(dtype)
    return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


def cross_attention_attnblock_forward(self, x):
    return _attnblock(self, x)


def xformers_attnblock_forward(self, x):
    return _attnblock(self, x)


def sdp_attnblock_forward(self, x):
    return _attnblock(self, x)


def sdp_no_mem_attnblock_forward(self, x):
    return _attnblock(self, x)


def sub_quad_attnblock_forward(self, x):
    return _attnblock(self, x)
