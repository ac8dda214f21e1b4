"""CUDA tier: torch.compile of a tiny UNet through Accel's CompiledModule matches eager (default and
reduce-overhead, whose CUDA graphs must replay new inputs), and CUDA-graph modes are refused below the free-VRAM
margin (the WebUI's compile controller, on the fake WebUI). Cold compiles take tens of seconds each.

Skipped as a whole, with the reason, where torch sees no CUDA device.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from lib_accel import features

if not torch.cuda.is_available():
    pytest.skip(f"CUDA tier: no CUDA device ({features.cuda().reason}); run it on a GPU machine "
                "(python benchmarks/gpu_check.py OUTDIR)", allow_module_level=True)

from lib_accel.attention import get_kernel
from lib_accel.bench.unet_model import UNetConfig, build_unet
from lib_accel.compile import READY, CompiledModule, CompileOptions, CompileWorker

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
DEVICE = torch.device("cuda")
CFG = UNetConfig.tiny()


def _inputs(seed: int, batch: int = 2, side: int = 32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, side, side, generator=g).to(DEVICE, torch.float16)
    t = torch.tensor([900.0, 20.0][:batch], device=DEVICE)
    ctx = torch.randn(batch, CFG.context_tokens, CFG.context_dim, generator=g).to(DEVICE, torch.float16)
    return x, t, ctx


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_tiny_unet_matches_eager(mode):
    support = features.compile_support()
    assert support.available, support.reason  # torch + triton are part of the GPU machine's setup
    unet = build_unet(CFG, 0, DEVICE, torch.float16)
    unet.attention = get_kernel("sdpa")
    logs = []
    compiled = CompiledModule(unet, "tiny-unet", CompileOptions(mode=mode, background=False), log=logs.append,
                              worker=CompileWorker(f"gpu-tier-{mode}"))
    first, second = _inputs(1), _inputs(2)
    with torch.inference_mode():
        eager = [unet(*first).clone(), unet(*second).clone()]
        compiled.install()
        try:
            got = []
            for _ in range(2):  # the second round replays the graph (CUDA graphs in reduce-overhead)
                if mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()
                got = [unet(*first).clone(), unet(*second).clone()]
        finally:
            compiled.uninstall()
    [state] = compiled.shapes.values()
    assert state.status == READY, f"{state.describe()}; log: {logs}"
    assert state.calls >= 3 and compiled.recompiles == [], compiled.snapshot()
    assert (eager[0] - eager[1]).abs().max() > 0.2, "the inputs must differ enough to catch a stale replay"
    for a, b in zip(got, eager, strict=True):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@pytest.fixture
def webui(fake_webui, tmp_path):
    fake_webui.add_checkpoint("sd15.safetensors", kind="sd1")
    fake_webui.load_extension(ROOT)
    fake_webui.start()
    sys.modules["lib_accel.webui.extension"].get().root = str(tmp_path)
    fake_webui.load_model("sd15.safetensors")
    return fake_webui


def compile_state(webui, title: str) -> dict:
    compiler = sys.modules["lib_accel.webui.extension"].get().compiler
    if hasattr(compiler, "checkpoint_states"):
        return compiler.snapshot(webui.load_model())["checkpoints"][title]
    return compiler.states[title]


def test_cuda_graph_modes_are_refused_below_the_free_vram_margin(webui):
    ext = sys.modules["lib_accel.webui.extension"].get()
    sd_model = webui.load_model()
    free_gb = torch.cuda.mem_get_info()[0] / 2**30
    base = dataclasses.replace(ext.config(), compile_enabled=True, compile_mode="reduce-overhead")
    refused = ext.compiler.refusals(sd_model, dataclasses.replace(base, compile_cudagraph_min_free_gb=free_gb + 4))
    assert any("CUDA graphs" in r and "free VRAM" in r for r in refused), refused
    allowed = ext.compiler.refusals(sd_model, dataclasses.replace(base, compile_cudagraph_min_free_gb=free_gb - 4))
    assert not any("free VRAM" in r for r in allowed), allowed
    default_mode = dataclasses.replace(base, compile_mode="default", compile_cudagraph_min_free_gb=free_gb + 4)
    assert not any("free VRAM" in r for r in ext.compiler.refusals(sd_model, default_mode))


def test_settings_refuse_reduce_overhead_when_the_gpu_is_nearly_full(webui):
    """End to end through the settings: fill the GPU until less than the margin is free, then enabling compile in
    reduce-overhead leaves the checkpoint eager with the reason in its state."""
    margin_gb = 8.0
    free = torch.cuda.mem_get_info()[0]
    hog = torch.empty(max(0, free - int((margin_gb / 2) * 2**30)), dtype=torch.uint8, device=DEVICE)
    try:
        assert torch.cuda.mem_get_info()[0] < margin_gb * 2**30
        title = webui.module("sd_models").get_closet_checkpoint_match("sd15.safetensors").title
        webui.set_option("accel_compile_backend", "inductor")
        webui.set_option("accel_compile_mode", "reduce-overhead")
        webui.set_option("accel_compile_cudagraph_min_free_gb", margin_gb)
        webui.set_option("accel_compile_background", False)
        webui.set_option("accel_compile_checkpoints", [title])
        webui.set_option("accel_compile_enabled", True)
        state = compile_state(webui, title)  # read while the GPU is full: states may be derived when read
    finally:
        del hog
        torch.cuda.empty_cache()
    assert state["status"] == "refused" and "CUDA graphs" in state["reason"], state
    unet = webui.load_model().model.diffusion_model
    compiled = getattr(unet, "_accel_compiled", None)
    assert compiled is None or not compiled.installed
