"""Numerical contract: every kernel that can run here matches a float64 reference on SD attention shapes.

Tolerances (max |kernel - float64 reference| with q, k, v ~ N(0, 1), outputs of order 1):
fp32 5e-5, bf16 4e-2, fp16 5e-3. Kernels that cannot run here must say why.

The inputs are CPU tensors. RUNNABLE holds the available kernels that declare no constraint against a CPU call
(CUDA-only backends of a CUDA build decline it up front, tested below); every one of them must compute every
case: a refusal, declared or raised, fails the test instead of skipping it.
"""

from __future__ import annotations

import pytest
import torch

from lib_accel.attention import ChunkedAttention, KernelUnsupported, all_kernels, get_kernel, reference_attention
from lib_accel.attention.base import AttentionCall

TOLERANCE = {torch.float32: 5e-5, torch.bfloat16: 4e-2, torch.float16: 5e-3}
REFERENCE_ROWS = 96

# (batch, heads, q tokens, kv tokens, head dim): SD1.5 / SD2 / SDXL attention shapes
SHAPES = [
    pytest.param(2, 8, 4096, 4096, 40, id="sd15-512-self-4096"),
    pytest.param(2, 8, 4096, 77, 40, id="sd15-512-cross-77"),
    pytest.param(2, 8, 1024, 1024, 80, id="sd15-512-self-1024-d80"),
    pytest.param(2, 8, 64, 77, 160, id="sd15-mid-cross-d160"),
    pytest.param(2, 5, 1024, 1024, 64, id="sd2-heads5-self"),
    pytest.param(2, 10, 1024, 154, 64, id="sdxl-heads10-cross-154"),
    pytest.param(1, 20, 256, 154, 64, id="sdxl-heads20-cross-154"),
    pytest.param(1, 20, 64, 64, 64, id="sdxl-heads20-self-64"),
]

_CPU_CALL = AttentionCall("cpu", None, torch.float32, 1, 1, 16, 16, 8, 8, False)
AVAILABLE = [k for k in all_kernels() if k.is_available()]
RUNNABLE = [k for k in AVAILABLE if not k.call_reasons(_CPU_CALL)]
UNAVAILABLE = [k for k in all_kernels() if not k.is_available()]


def _inputs(b, h, m, n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, m, d, generator=g)
    k = torch.randn(b, h, n, d, generator=g)
    v = torch.randn(b, h, n, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _check(kernel, q, k, v, mask=None, scale=None):
    rows = torch.linspace(0, q.shape[2] - 1, min(REFERENCE_ROWS, q.shape[2])).long()
    call = AttentionCall.of(q, k, v, mask)
    if kernel.call_reasons(call):
        pytest.fail(f"{kernel.name} declines {call.describe()}: {kernel.call_reasons(call)}")
    try:
        out = kernel(q, k, v, mask, scale)
    except KernelUnsupported as e:
        pytest.fail(f"{kernel.name} is available but refused {call.describe()}: {e.reasons}")
    assert out.shape == (*q.shape[:-1], v.shape[-1]) and out.dtype == q.dtype
    sub_mask = None if mask is None else (mask[:, :, rows] if mask.shape[2] == q.shape[2] else mask)
    ref = reference_attention(q[:, :, rows], k, v, sub_mask, scale)
    err = (out[:, :, rows].double() - ref).abs().max().item()
    assert err <= TOLERANCE[q.dtype], f"{kernel.name} max abs error {err:.3g} > {TOLERANCE[q.dtype]}"


@pytest.mark.parametrize("kernel", RUNNABLE, ids=lambda k: k.name)
@pytest.mark.parametrize("b,h,m,n,d", SHAPES)
def test_kernel_matches_reference_fp32(kernel, b, h, m, n, d):
    _check(kernel, *_inputs(b, h, m, n, d, torch.float32))


@pytest.mark.parametrize("kernel", RUNNABLE, ids=lambda k: k.name)
@pytest.mark.parametrize("b,h,m,n,d", [SHAPES[1], SHAPES[3], SHAPES[6]])
def test_kernel_matches_reference_bf16(kernel, b, h, m, n, d):
    _check(kernel, *_inputs(b, h, m, n, d, torch.bfloat16))


@pytest.mark.parametrize("kernel", RUNNABLE, ids=lambda k: k.name)
def test_kernel_with_bool_mask_and_scale(kernel):
    q, k, v = _inputs(2, 8, 256, 77, 40, torch.float32, seed=3)
    mask = torch.rand(2, 1, 1, 77, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True  # every query keeps at least one key
    _check(kernel, q, k, v, mask=mask, scale=0.05)


@pytest.mark.parametrize("kernel", RUNNABLE, ids=lambda k: k.name)
def test_vae_head_dim_512(kernel):
    _check(kernel, *_inputs(1, 1, 1024, 1024, 512, torch.float32))


def test_every_available_kernel_is_checked_or_declines_cpu_with_reasons():
    assert {"sdpa", "sdpa-math", "chunked"} <= {k.name for k in RUNNABLE}
    for kernel in AVAILABLE:
        if kernel not in RUNNABLE:  # a CUDA-only backend on a CUDA build: declined before any work
            assert all("CUDA" in r for r in kernel.call_reasons(_CPU_CALL)), kernel.name


def test_chunked_splits_queries_within_budget_and_stays_exact():
    q, k, v = _inputs(2, 8, 1024, 1024, 40, torch.float32)
    kernel = ChunkedAttention(budget_bytes=2 << 20)
    step = kernel.chunk_size(q, k)
    per_row = 2 * 8 * 1024 * (2 * 4 + 4)
    assert step * per_row <= 2 << 20 and step < 1024
    _check(kernel, q, k, v)


def test_chunked_never_below_one_row():
    q, k, v = _inputs(1, 1, 8, 8, 8, torch.float32)
    assert ChunkedAttention(budget_bytes=1).chunk_size(q, k) == 1
    _check(ChunkedAttention(budget_bytes=1), q, k, v)


def test_chunked_rejects_bad_fraction():
    with pytest.raises(ValueError):
        ChunkedAttention(memory_fraction=0)


@pytest.mark.parametrize("kernel", UNAVAILABLE, ids=lambda k: k.name)
def test_unavailable_kernels_say_why(kernel):
    reasons = kernel.unavailable_reasons()
    assert reasons and all(isinstance(r, str) and len(r) > 10 for r in reasons)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU-only refusals")
def test_cuda_only_backend_refuses_cpu_call_with_reason():
    q, k, v = _inputs(1, 1, 16, 16, 8, torch.float32)
    kernel = get_kernel("sdpa-efficient")
    assert any("CUDA" in r for r in kernel.reasons(AttentionCall.of(q, k, v)))
    with pytest.raises(KernelUnsupported) as info:
        kernel(q, k, v)
    assert info.value.reasons


def test_unknown_kernel_name_lists_known():
    with pytest.raises(KeyError, match="sdpa"):
        get_kernel("nope")


class _Refuses(ChunkedAttention):
    def run(self, q, k, v, mask, scale):
        raise KernelUnsupported(self.name, ["no kernel for this shape"])


class _Declines(ChunkedAttention):
    def call_reasons(self, call):
        return ["needs something this call lacks"]


@pytest.mark.parametrize("kernel", [_Refuses(), _Declines()], ids=lambda k: type(k).__name__)
def test_a_refusal_fails_the_check_instead_of_skipping(kernel):
    try:
        _check(kernel, *_inputs(1, 1, 8, 8, 8, torch.float32))
    except pytest.fail.Exception as e:
        assert "no kernel for this shape" in str(e) or "needs something this call lacks" in str(e)
    except pytest.skip.Exception as e:
        pytest.fail(f"a refusal of an available kernel became a skip: {e}")
    else:
        pytest.fail("a refusal passed the check")
