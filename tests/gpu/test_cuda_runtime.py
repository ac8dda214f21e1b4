"""CUDA tier: NVML readings against torch's memory stats, fp16 NaN detection and the VAE's fallback chain, the UNet
precision wrapper under CUDA autocast, and the TF32 / cuDNN-benchmark / channels-last toggles applied and undone.

Skipped as a whole, with the reason, where torch sees no CUDA device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib_accel import features

if not torch.cuda.is_available():
    pytest.skip(f"CUDA tier: no CUDA device ({features.cuda().reason}); run it on a GPU machine "
                "(python benchmarks/gpu_check.py OUTDIR)", allow_module_level=True)

from lib_accel.attention import get_kernel
from lib_accel.bench.unet_model import UNetConfig, build_unet
from lib_accel.config import AccelConfig
from lib_accel.monitoring.gpu import GpuMonitor, torch_memory
from lib_accel.runtime import precision as P
from lib_accel.runtime.toggles import RuntimeToggles, is_channels_last, make_nan_check

pytestmark = pytest.mark.gpu
DEVICE = torch.device("cuda")
GIB, MIB = 2**30, 2**20


def _nvml_reading() -> dict:
    reading = GpuMonitor(max_age=0.0).read(DEVICE)["nvml"]
    if not reading.get("available") and not features.pynvml().available:
        pytest.skip(f"NVML: {features.pynvml().reason}")
    assert reading.get("available"), reading
    return reading


def test_nvml_names_the_device_torch_uses_and_its_memory():
    torch.zeros(1, device=DEVICE)  # initialise CUDA: the monitor then follows torch's device by UUID
    reading = _nvml_reading()
    assert reading["found_by"].startswith("torch cuda:"), reading
    assert reading["name"] == torch.cuda.get_device_name(DEVICE), reading
    total = torch.cuda.get_device_properties(DEVICE).total_memory
    assert abs(reading["memory_total"] - total) <= 0.03 * total, (reading["memory_total"], total)
    free, _ = torch.cuda.mem_get_info(DEVICE)
    assert abs(reading["memory_free"] - free) <= GIB, (reading["memory_free"], free)


def test_nvml_used_memory_follows_torch_allocations():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before_nvml, before_torch = _nvml_reading()["memory_used"], torch_memory(DEVICE)
    block = torch.empty(2 * GIB, dtype=torch.uint8, device=DEVICE)
    block.fill_(1)
    torch.cuda.synchronize()
    after_nvml, after_torch = _nvml_reading()["memory_used"], torch_memory(DEVICE)
    assert after_torch["available"] and after_torch["allocated"] - before_torch["allocated"] == 2 * GIB
    assert after_torch["reserved"] >= after_torch["allocated"] and after_torch["peak_allocated"] >= 2 * GIB
    grew = after_nvml - before_nvml
    assert 2 * GIB - 64 * MIB <= grew <= 2 * GIB + 256 * MIB, f"NVML used grew {grew / MIB:.0f} MiB for 2048 MiB"
    del block
    torch.cuda.empty_cache()
    assert _nvml_reading()["memory_used"] <= before_nvml + 256 * MIB


def test_torch_memory_matches_the_allocator():
    x = torch.ones(256, 1024, 1024, device=DEVICE)  # 1 GiB
    reading = torch_memory(DEVICE)
    assert reading["allocated"] == torch.cuda.memory_allocated(DEVICE) >= x.numel() * 4
    assert reading["reserved"] == torch.cuda.memory_reserved(DEVICE)
    assert reading["device"] == f"cuda:{torch.cuda.current_device()}"


class Decoder(nn.Module):
    """A VAE-decoder-like tail: a 3x3 conv whose activations exceed fp16's range, then a GroupNorm (in the
    module's dtype, as the WebUI's VAE runs it): in fp16 the overflow becomes inf, then NaN."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 32, 3, padding=1)
        self.norm = nn.GroupNorm(8, 32)
        self.out = nn.Conv2d(32, 3, 1)
        with torch.no_grad():
            self.conv.weight.mul_(20000.0)

    def forward(self, z):
        return self.out(F.silu(self.norm(self.conv(z))))


def _decode(decoder: nn.Module, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    decoder.to(dtype)
    with torch.no_grad():
        return decoder(z.to(dtype))


def test_fp16_vae_nans_are_detected_and_the_fallback_chain_recovers():
    torch.manual_seed(0)
    decoder, z = Decoder().to(DEVICE), torch.randn(1, 4, 64, 64, device=DEVICE) * 8
    reference = _decode(decoder, z, torch.float32)
    assert torch.isfinite(reference).all()
    chain, dtype = [torch.float16], torch.float16
    result = _decode(decoder, z, dtype)
    assert P.has_nan(result), "fp16 should overflow here (activations beyond 65504)"
    while P.has_nan(result):
        dtype = P.safer_vae_dtype(dtype, DEVICE)
        assert dtype is not None, f"no safer dtype after {chain}"
        chain.append(dtype)
        result = _decode(decoder, z, dtype)
    expected = [torch.float16, torch.bfloat16] if torch.cuda.is_bf16_supported() else [torch.float16, torch.float32]
    assert chain == expected
    torch.testing.assert_close(result.float(), reference, atol=0.1, rtol=0.05)
    assert P.safer_vae_dtype(torch.bfloat16, DEVICE) == torch.float32
    assert P.safer_vae_dtype(torch.float32, DEVICE) is None


def test_full_nan_check_sees_a_nan_the_first_element_check_misses():
    raised = []

    def webui_check(x, where):  # the WebUI's devices.test_for_nans looks at the first element only
        if torch.isnan(x[(0,) * x.dim()]):
            raised.append(where)

    x = torch.zeros(2, 4, 64, 64, device=DEVICE, dtype=torch.float16)
    x[-1, -1, -1, -1] = float("nan")
    make_nan_check("default", webui_check)(x, "unet")
    assert raised == []
    make_nan_check("full", webui_check)(x, "unet")
    assert raised == ["unet"]
    make_nan_check("full", webui_check)(torch.zeros_like(x), "vae")
    assert raised == ["unet"]


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_unet_runs_in_low_precision_under_cuda_autocast(name):
    if name == "bf16" and not torch.cuda.is_bf16_supported():
        assert P.unsupported_reason(name, DEVICE)
        return
    assert P.unsupported_reason(name, DEVICE) is None
    cfg = UNetConfig.tiny()
    full = build_unet(cfg, 0, DEVICE, torch.float32)
    full.attention = get_kernel("sdpa")
    low = build_unet(cfg, 0, DEVICE, torch.float32)
    low.attention = get_kernel("sdpa")
    assert P.convert_module(low, P.DTYPES[name]) > 0
    assert P.weight_dtype(low) == P.DTYPES[name] and low.out_conv.weight.dtype == P.DTYPES[name]
    assert all(p.dtype == torch.float32 for m in low.modules() if isinstance(m, P.NORM_TYPES) for p in m.parameters())
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 16, 16, generator=g).to(DEVICE), torch.tensor([900.0, 20.0], device=DEVICE)
    ctx = torch.randn(2, cfg.context_tokens, cfg.context_dim, generator=g).to(DEVICE)
    with torch.no_grad():
        expected = full(x, t, ctx)
        got = P.call_in_precision(low.forward, P.DTYPES[name], "cuda", (x, t, ctx), {})
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    scale = expected.abs().max().item()
    err = (got - expected).abs().max().item()
    assert 0 < err <= (0.02 if name == "fp16" else 0.1) * scale, (err, scale)  # 0: the low dtype never ran


def _tf32_matmul() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2048, 2048, generator=g).to(DEVICE), torch.randn(2048, 2048, generator=g).to(DEVICE)
    return a, b


def test_tf32_and_cudnn_benchmark_toggles_take_effect_and_are_undone():
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    a, b = _tf32_matmul()
    exact = (a.double() @ b.double()).float()
    toggles = RuntimeToggles()
    try:
        toggles.apply(AccelConfig(tf32="off", cudnn_benchmark="off"))
        fp32 = a @ b
        toggles.apply(AccelConfig(tf32="on", cudnn_benchmark="on"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
        tf32 = a @ b
    finally:
        undone = toggles.undo()
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark) == flags, undone
    err_fp32, err_tf32 = ((fp32 - exact).abs().max().item(), (tf32 - exact).abs().max().item())
    assert err_tf32 > 10 * err_fp32, f"TF32 on did not change the matmul (fp32 err {err_fp32}, tf32 err {err_tf32})"


def test_channels_last_toggle_converts_the_cuda_unet_and_undo_restores_it():
    cfg = UNetConfig.tiny()
    unet = build_unet(cfg, 0, DEVICE, torch.float16)
    unet.attention = get_kernel("sdpa")
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(1, 4, 32, 32, generator=g).to(DEVICE, torch.float16), torch.tensor([500.0], device=DEVICE)
    ctx = torch.randn(1, cfg.context_tokens, cfg.context_dim, generator=g).to(DEVICE, torch.float16)
    with torch.no_grad():
        expected = unet(x, t, ctx)
    toggles = RuntimeToggles()
    changes = toggles.apply(AccelConfig(channels_last="on"), unet)
    assert "UNet converted to channels-last" in changes and is_channels_last(unet)
    assert unet.input_blocks[0].layers[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = unet(x.contiguous(memory_format=torch.channels_last), t, ctx)
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
    assert "UNet converted back to contiguous" in toggles.undo()
    assert not is_channels_last(unet) and unet.input_blocks[0].layers[0].weight.is_contiguous()
