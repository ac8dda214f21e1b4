"""xformers' ``memory_efficient_attention``, when xformers imports and a CUDA device is present.

xformers picks among its own operators (cutlass, flash, ...) and raises ``NotImplementedError`` listing,
for every operator, why it refused the inputs; those lines become the kernel's reasons.
"""

from __future__ import annotations

from .. import features
from .base import AttentionCall, AttentionKernel, KernelUnsupported, additive_mask


class XformersKernel(AttentionKernel):
    name = "xformers"
    label = "xformers memory-efficient attention"

    def unavailable_reasons(self) -> list[str]:
        feat = features.xformers()
        if not feat.available:
            return [feat.reason]
        if not features.cuda().available:
            return [f"xformers runs on CUDA only ({features.cuda().reason})"]
        return []

    def call_reasons(self, call: AttentionCall) -> list[str]:
        if call.device_type != "cuda":
            return [f"xformers runs on CUDA only, not {call.device_type}"]
        return []

    def run(self, q, k, v, mask, scale):
        ops = features.xformers_ops()
        if ops is None:
            raise KernelUnsupported(self.name, [features.xformers().reason])
        bias = additive_mask(mask, q.dtype)
        if bias is not None:
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        # (b, h, n, d) -> (b, n, h, d): a view, xformers only needs a stride-1 last dim
        qx, kx, vx = (t.transpose(1, 2) for t in (q, k, v))
        try:
            out = ops.memory_efficient_attention(qx, kx, vx, attn_bias=bias, scale=scale)
        except NotImplementedError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip().startswith("`")]
            raise KernelUnsupported(self.name, lines or [str(e).splitlines()[0]]) from None
        return out.transpose(1, 2)

