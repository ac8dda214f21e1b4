"""Replacement ``forward`` methods for ldm/sgm ``CrossAttention`` and the VAE's ``AttnBlock``.

They compute exactly what the originals compute, with the attention itself delegated to ``runner``
(a kernel, :class:`~lib_accel.attention.dispatch.PinnedKernel` or
:class:`~lib_accel.attention.dispatch.FastestKernel`). WebUI behaviour that the built-in optimizations
honour comes in through :class:`ForwardHooks`, so this module needs no WebUI import:

* ``upcast()`` - the ``upcast_attn`` option: attention runs in float32 with autocast off, the result is
  cast back to the input dtype (stops black images with some fp16 SD2 models).
* ``hypernetworks(context)`` - returns the ``(context_k, context_v)`` pair after the loaded
  hypernetworks, which transform keys and values separately.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

Runner = Callable[..., torch.Tensor]


def _no_hypernetwork(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return context, context


@dataclass
class ForwardHooks:
    upcast: Callable[[], bool] = lambda: False
    hypernetworks: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = _no_hypernetwork


def _autocast_off(device_type: str, upcast: bool):
    return torch.autocast(device_type, enabled=False) if upcast else contextlib.nullcontext()


def keep_mask(mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """ldm's ``(batch, ...)`` key keep-mask as a ``(batch, 1, 1, kv_tokens)`` bool mask for the kernels."""
    if mask is None:
        return None
    return mask.reshape(batch, -1)[:, None, None, :].bool()


# Plain helpers rather than generator unpacking: dynamo in torch 2.1 breaks the graph on
# ``a, b, c = (f(t) for t in ...)`` (UNPACK_SEQUENCE of a generator), once per attention layer.
def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, n, heads*d) -> (b, heads, n, d), a view."""
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def _pixels_as_tokens(t: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) -> (b, 1, h*w, c); zero-copy for channels-last activations."""
    return t.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()


def make_cross_attention_forward(runner: Runner, hooks: ForwardHooks) -> Callable:
    """A ``CrossAttention.forward(self, x, context=None, mask=None, **kwargs)`` running ``runner``."""

    def accel_cross_attention_forward(self, x, context=None, mask=None, **kwargs):
        heads = self.heads
        q_in = self.to_q(x)
        context = x if context is None else context
        context_k, context_v = hooks.hypernetworks(context)
        k_in = self.to_k(context_k)
        v_in = self.to_v(context_v)
        batch = q_in.shape[0]
        q, k, v = _split_heads(q_in, heads), _split_heads(k_in, heads), _split_heads(v_in, heads)
        del q_in, k_in, v_in
        dtype = q.dtype
        upcast = hooks.upcast()
        if upcast:
            q, k, v = q.float(), k.float(), v.float()
        with _autocast_off(q.device.type, upcast):
            out = runner(q, k, v, keep_mask(mask, batch), getattr(self, "scale", None))
        out = out.transpose(1, 2).reshape(batch, -1, heads * out.shape[-1]).to(dtype)
        return self.to_out(out)

    return accel_cross_attention_forward


def make_attnblock_forward(runner: Runner, hooks: ForwardHooks) -> Callable:
    """A VAE ``AttnBlock.forward(self, x)``: single-head attention over all pixels, plus the residual."""

    def accel_attnblock_forward(self, x):
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q, k, v = _pixels_as_tokens(q), _pixels_as_tokens(k), _pixels_as_tokens(v)
        dtype = q.dtype
        upcast = hooks.upcast()
        if upcast:
            q, k, v = q.float(), k.float(), v.float()
        with _autocast_off(q.device.type, upcast):
            out = runner(q, k, v, None, c ** -0.5)
        out = out.to(dtype).squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)

    return accel_attnblock_forward
