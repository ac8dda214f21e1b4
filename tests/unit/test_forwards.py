"""The replacement forwards compute what ldm's CrossAttention and AttnBlock compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lib_accel.attention import ForwardHooks, get_kernel, make_attnblock_forward, make_cross_attention_forward


class CrossAttention(nn.Module):
    """Same attributes and math as ldm.modules.attention.CrossAttention (the default forward)."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=16):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None, mask=None, context_k=None, context_v=None):
        h = self.heads
        context = x if context is None else context
        q = self.to_q(x)
        k = self.to_k(context if context_k is None else context_k)
        v = self.to_v(context if context_v is None else context_v)
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).permute(0, 2, 1, 3).reshape(-1, t.shape[1],
                                                                                         t.shape[2] // h)
                   for t in (q, k, v))
        sim = torch.einsum("b i d, b j d -> b i j", q.double(), k.double()) * self.scale
        if mask is not None:
            m = mask.reshape(mask.shape[0], -1).repeat_interleave(h, dim=0)[:, None, :]
            sim.masked_fill_(~m, -torch.finfo(sim.dtype).max)
        out = torch.einsum("b i j, b j d -> b i d", sim.softmax(-1), v.double()).to(x.dtype)
        b = x.shape[0]
        out = out.reshape(b, h, -1, out.shape[-1]).permute(0, 2, 1, 3).reshape(b, -1, h * out.shape[-1])
        return self.to_out(out)


class AttnBlock(nn.Module):
    """Same attributes and math as ldm.modules.diffusionmodules.model.AttnBlock."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.GroupNorm(8, c, eps=1e-6, affine=True)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)
        w_ = torch.bmm(q.double(), k.reshape(b, c, h * w).double()) * (int(c) ** -0.5)
        w_ = w_.softmax(dim=2)
        h_ = torch.bmm(v.reshape(b, c, h * w).double(), w_.permute(0, 2, 1)).reshape(b, c, h, w).to(x.dtype)
        return x + self.proj_out(h_)


KERNELS = ["sdpa", "sdpa-math", "chunked"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("with_context", [False, True])
def test_cross_attention_forward_matches(kernel, with_context):
    torch.manual_seed(0)
    attn = CrossAttention(64, context_dim=48 if with_context else None, heads=4, dim_head=16).eval()
    x = torch.randn(2, 100, 64)
    ctx = torch.randn(2, 77, 48) if with_context else None
    fwd = make_cross_attention_forward(get_kernel(kernel), ForwardHooks())
    with torch.no_grad():
        torch.testing.assert_close(fwd(attn, x, ctx), attn(x, ctx), atol=2e-5, rtol=1e-4)


def test_cross_attention_mask_and_hypernetwork_hooks():
    torch.manual_seed(0)
    attn = CrossAttention(32, context_dim=24, heads=2, dim_head=16).eval()
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 77, 24)
    mask = torch.rand(2, 77) > 0.5
    mask[:, 0] = True
    seen = []

    def hypernetworks(context):
        seen.append(context.shape)
        return context * 2, context - 1

    fwd = make_cross_attention_forward(get_kernel("sdpa"), ForwardHooks(hypernetworks=hypernetworks))
    with torch.no_grad():
        expected = attn(x, ctx, mask, context_k=ctx * 2, context_v=ctx - 1)
        torch.testing.assert_close(fwd(attn, x, ctx, mask), expected, atol=2e-5, rtol=1e-4)
    assert seen == [ctx.shape]


def test_upcast_runs_attention_in_float32_and_returns_input_dtype():
    torch.manual_seed(0)
    attn = CrossAttention(32, heads=2, dim_head=16).eval().to(torch.bfloat16)
    x = torch.randn(1, 16, 32, dtype=torch.bfloat16)
    dtypes = []

    def spy(q, k, v, mask, scale):
        dtypes.append(q.dtype)
        return get_kernel("sdpa")(q, k, v, mask, scale)

    for upcast in (False, True):
        fwd = make_cross_attention_forward(spy, ForwardHooks(upcast=lambda u=upcast: u))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = fwd(attn, x)
        assert out.dtype == torch.bfloat16
    assert dtypes == [torch.bfloat16, torch.float32]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_attnblock_forward_matches(kernel, channels_last):
    torch.manual_seed(0)
    block = AttnBlock(64).eval()
    x = torch.randn(2, 64, 12, 10)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    fwd = make_attnblock_forward(get_kernel(kernel), ForwardHooks())
    with torch.no_grad():
        torch.testing.assert_close(fwd(block, x), block(x), atol=2e-5, rtol=1e-4)
