"""CUDA tier: every CUDA attention kernel against the float64 reference in fp16 and bf16, xformers when it imports,
and timings that wait for the GPU (perf_counter + synchronize agrees with CUDA events).

The tolerance contract and the shapes are the CPU tier's (tests/unit/test_attention_kernels.py, loaded from its
file). A kernel that is available must compute every SD shape here: a refusal fails the test, except where torch
documents the limit (cuDNN's head-dim limit: 256 on sm90 with cuDNN >= 9.10, else 128; masks, which some torch
versions' cuDNN SDPA refuses), which is then checked to come with reasons. Skipped as a whole, with the reason,
where torch sees no CUDA device.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lib_accel import features

if not torch.cuda.is_available():
    pytest.skip(f"CUDA tier: no CUDA device ({features.cuda().reason}); run it on a GPU machine "
                "(python benchmarks/gpu_check.py OUTDIR)", allow_module_level=True)

from lib_accel.attention import ChunkedAttention, KernelUnsupported, all_kernels, reference_attention
from lib_accel.attention.base import AttentionCall
from lib_accel.attention.timing import _time_once, time_candidates
from lib_accel.bench.attention import webui_default_kernel

pytestmark = pytest.mark.gpu
DEVICE = torch.device("cuda")


def _cpu_contract():
    path = Path(__file__).resolve().parents[1] / "unit" / "test_attention_kernels.py"
    spec = importlib.util.spec_from_file_location("_accel_cpu_attention_contract", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONTRACT = _cpu_contract()
TOLERANCE, SHAPES, REFERENCE_ROWS = CONTRACT.TOLERANCE, CONTRACT.SHAPES, CONTRACT.REFERENCE_ROWS
HALF = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]
KERNELS = [k for k in all_kernels() if k.is_available() and k.name != "xformers"] + [webui_default_kernel(DEVICE)]


def cudnn_head_dim_limit() -> int:
    """torch's rule (aten sdp_utils.cpp, check_cudnn_tensor_shapes): 256 on sm90 with cuDNN >= 9.10, else 128."""
    version = torch.backends.cudnn.version() or 0
    return 256 if torch.cuda.get_device_capability() == (9, 0) and version >= 91000 else 128


def documented_refusal(kernel, call: AttentionCall) -> bool:
    """cuDNN's head-dim limit, and masks (accepted by some torch versions' cuDNN SDPA only)."""
    return kernel.name == "sdpa-cudnn" and (call.head_dim > cudnn_head_dim_limit() or call.has_mask)


def _inputs(b, h, m, n, d, dtype, seed=0):
    return tuple(t.to(DEVICE) for t in CONTRACT._inputs(b, h, m, n, d, dtype, seed))


def check_cuda(kernel, q, k, v, mask=None, scale=None) -> float | None:
    """Max |kernel - float64 reference| on sampled rows, asserted within the contract; None for a documented
    refusal (which must name its reasons)."""
    call = AttentionCall.of(q, k, v, mask)
    try:
        declined = kernel.call_reasons(call)
        if declined:
            raise KernelUnsupported(kernel.name, declined)
        out = kernel(q, k, v, mask, scale)
    except KernelUnsupported as e:
        if documented_refusal(kernel, call):
            assert e.reasons and all(str(r).strip() for r in e.reasons)
            return None
        pytest.fail(f"{kernel.name} is available but refused {call.describe()}: {e.reasons}")
    torch.cuda.synchronize()
    assert out.device.type == "cuda" and out.dtype == q.dtype and out.shape == (*q.shape[:-1], v.shape[-1])
    rows = torch.linspace(0, q.shape[2] - 1, min(REFERENCE_ROWS, q.shape[2])).long()
    ref = reference_attention(q[:, :, rows.to(DEVICE)], k, v, mask, scale)
    err = (out[:, :, rows.to(DEVICE)].double().cpu() - ref).abs().max().item()
    assert err <= TOLERANCE[q.dtype], f"{kernel.name} {call.describe()}: max abs error {err:.3g} > {TOLERANCE[q.dtype]}"
    return err


def test_the_fused_cuda_kernels_are_available_here():
    names = {k.name for k in KERNELS}
    assert {"sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-math", "chunked", "webui-default"} <= names, names
    for kernel in all_kernels():
        if not kernel.is_available():
            assert kernel.unavailable_reasons(), kernel.name


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("b,h,m,n,d", SHAPES)
def test_cuda_kernel_matches_float64_reference(kernel, b, h, m, n, d, dtype):
    check_cuda(kernel, *_inputs(b, h, m, n, d, dtype))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
def test_vae_head_dim_512_computes_or_refuses_with_reasons(kernel, dtype):
    """The VAE's single 512-dim head: beyond flash's and cuDNN's limits. Those must refuse with reasons (the
    dispatcher then falls back); torch's own pick, math and the chunked kernels must compute it."""
    q, k, v = _inputs(1, 1, 1024, 1024, 512, dtype)
    call = AttentionCall.of(q, k, v)
    try:
        reasons = kernel.call_reasons(call)
        out = None if reasons else kernel(q, k, v)
    except KernelUnsupported as e:
        reasons = e.reasons
    if kernel.name in ("sdpa", "sdpa-math", "chunked", "webui-default"):
        assert not reasons, f"{kernel.name} refused the VAE's head dim: {reasons}"
    if reasons:
        assert kernel.name in ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient") and all(str(r) for r in reasons)
        return
    assert out is not None
    check_cuda(kernel, q, k, v)


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k.name != "sdpa-flash"], ids=lambda k: k.name)
def test_cuda_kernel_with_bool_mask_and_scale(kernel):
    q, k, v = _inputs(2, 8, 256, 77, 40, torch.float16, seed=3)
    mask = (torch.rand(2, 1, 1, 77, generator=torch.Generator().manual_seed(1)) > 0.3)
    mask[..., 0] = True
    check_cuda(kernel, q, k, v, mask=mask.to(DEVICE), scale=0.05)


def test_flash_declines_a_mask_on_cuda_with_a_reason():
    flash = next(k for k in KERNELS if k.name == "sdpa-flash")
    q, k, v = _inputs(1, 8, 64, 77, 40, torch.float16)
    mask = torch.ones(1, 1, 64, 77, dtype=torch.bool, device=DEVICE)
    assert any("mask" in r for r in flash.call_reasons(AttentionCall.of(q, k, v, mask)))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("b,h,m,n,d", SHAPES)
def test_xformers_matches_float64_reference(b, h, m, n, d, dtype):
    if not features.xformers().available:
        pytest.skip(f"xformers: {features.xformers().reason}")
    kernel = next(k for k in all_kernels() if k.name == "xformers")
    assert kernel.is_available(), kernel.unavailable_reasons()
    check_cuda(kernel, *_inputs(b, h, m, n, d, dtype))


def test_chunked_stays_exact_when_its_budget_forces_many_chunks():
    q, k, v = _inputs(2, 8, 4096, 4096, 40, torch.float16)
    kernel = ChunkedAttention(budget_bytes=8 << 20)
    assert kernel.chunk_size(q, k) < 4096 // 8
    check_cuda(kernel, q, k, v)


def test_kernel_timing_waits_for_the_gpu():
    """Accel's timings (perf_counter around a call, then synchronize) must measure the GPU's work: compared with
    CUDA events around the same call they may add launch overhead, never miss the kernel's run time."""
    kernel = next(k for k in KERNELS if k.name == "sdpa-math")
    q, k, v = _inputs(4, 8, 8192, 8192, 80, torch.float16)
    scale = q.shape[-1] ** -0.5
    kernel(q, k, v, None, scale)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    events, wall = [], []
    for _ in range(3):
        start.record()
        kernel(q, k, v, None, scale)
        end.record()
        end.synchronize()
        events.append(start.elapsed_time(end))
        wall.append(_time_once(kernel, q, k, v, None, scale))
    gpu_ms, accel_ms = min(events), min(wall)
    assert gpu_ms > 1.0, f"the timed call is too short to tell ({gpu_ms:.3f} ms)"
    assert 0.8 * gpu_ms <= accel_ms <= gpu_ms + 50.0, (accel_ms, gpu_ms)


def test_time_candidates_on_cuda_picks_a_kernel_that_agrees():
    q, k, v = _inputs(2, 8, 4096, 77, 40, torch.float16)
    result = time_candidates([kk for kk in KERNELS if kk.name != "webui-default"], q, k, v, None,
                             q.shape[-1] ** -0.5, repeats=3)
    assert result.best in {kk.name for kk in KERNELS}, result.rejected
    assert all(ms > 0 for ms in result.ms.values())
    unexpected = {n: r for n, r in result.rejected.items() if n != "sdpa-cudnn"}
    assert not unexpected, unexpected
    rows = torch.arange(0, 4096, 64)
    ref = reference_attention(q[:, :, rows.to(DEVICE)], k, v)
    assert (result.output[:, :, rows.to(DEVICE)].double().cpu() - ref).abs().max().item() <= TOLERANCE[torch.float16]

