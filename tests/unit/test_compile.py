"""The compile manager on small modules: in place, per-shape graphs, background, fallback, bounds, LoRA."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from lib_accel.compile import (
    FAILED,
    OVER_LIMIT,
    READY,
    CompiledModule,
    CompileOptions,
    CompileWorker,
    ShapeBucket,
    parse_buckets,
)
from lib_accel.compile.cache import cache_size, clear_cache, use_cache_dir
from lib_accel.compile.neutralise import disable_checkpoint_flags, plain_checkpoint, restore_checkpoint_flags


class TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(4, 8, 3, padding=1)
        self.proj = nn.Linear(8, 8)
        self.conv_out = nn.Conv2d(8, 4, 1)
        self.use_checkpoint = True

    def forward(self, x, timesteps=None, context=None):
        h = self.conv_in(x).permute(0, 2, 3, 1)
        h = self.proj(h).permute(0, 3, 1, 2)
        return self.conv_out(torch.nn.functional.silu(h)) + timesteps[:, None, None, None]


@torch._dynamo.register_backend(name="accel_test_compile_fails")
def _fails_to_compile(gm, example_inputs):
    raise RuntimeError("injected compile failure")


@torch._dynamo.register_backend(name="accel_test_run_fails")
def _fails_to_run(gm, example_inputs):
    def run(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)") if hasattr(torch.cuda, "OutOfMemoryError") \
            else RuntimeError("out of memory (injected)")
    return run


def inputs(batch=2, side=8):
    g = torch.Generator().manual_seed(batch * 100 + side)
    return torch.randn(batch, 4, side, side, generator=g), torch.full((batch,), 0.5)


def make(options, logs=None, worker=None):
    torch.manual_seed(0)
    net = TinyUNet().eval()
    compiled = CompiledModule(net, "tiny", options, log=(logs.append if logs is not None else lambda m: None),
                              worker=worker or CompileWorker("test-compile"))
    return net, compiled


def test_compiled_in_place_keeps_state_dict_keys_and_matches_eager():
    net, compiled = make(CompileOptions(backend="inductor", background=False))
    keys = list(net.state_dict())
    compiled.install()
    assert list(net.state_dict()) == keys, "no _orig_mod. prefix: WebUI weight loads keep working"
    x, t = inputs()
    with torch.no_grad():
        expected = compiled._eager(x, t)
        out = net(x, t)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        # a LoRA-like in-place weight change is visible in the compiled graph, with no recompile
        net.proj.weight.add_(0.25)
        changed = net(x, t)
    assert not torch.allclose(changed, out)
    torch.testing.assert_close(changed, compiled._eager(x, t).detach(), atol=1e-5, rtol=1e-5)
    snap = compiled.snapshot()
    assert snap["shapes"][0]["status"] == READY and snap["shapes"][0]["calls"] == 1
    assert snap["recompiles"] == []
    compiled.uninstall()
    assert not compiled.installed and list(net.state_dict()) == keys


def test_background_compiles_while_calls_run_eager():
    worker = CompileWorker("test-bg")
    net, compiled = make(CompileOptions(backend="eager", background=True), worker=worker)
    compiled.install()
    x, t = inputs()
    with torch.no_grad():
        first = net(x, t)  # eager now, compile queued
        assert worker.join(120) and compiled.wait_idle(5)
        state = compiled.snapshot()["shapes"][0]
        assert state["status"] == READY and state["calls"] == 0
        second = net(x, t)
    torch.testing.assert_close(first, second)
    assert compiled.snapshot()["shapes"][0]["calls"] == 1


def test_compile_failure_falls_back_to_eager_with_one_message():
    logs = []
    net, compiled = make(CompileOptions(backend="accel_test_compile_fails", background=False), logs)
    compiled.install()
    x, t = inputs()
    with torch.no_grad():
        expected = compiled._eager(x, t)
        for _ in range(3):
            torch.testing.assert_close(net(x, t), expected)
    state = compiled.snapshot()["shapes"][0]
    assert state["status"] == FAILED and "injected compile failure" in state["reason"]
    assert sum("runs eager from now on" in line for line in logs) == 1


def test_run_failure_after_compile_falls_back_and_sticks():
    logs = []
    net, compiled = make(CompileOptions(backend="accel_test_run_fails", background=False), logs)
    compiled.install()
    x, t = inputs()
    with torch.no_grad():
        expected = compiled._eager(x, t)
        outs = [net(x, t) for _ in range(3)]
    for out in outs:
        torch.testing.assert_close(out, expected)
    state = compiled.snapshot()["shapes"][0]
    assert state["status"] == FAILED and "memory" in state["reason"].lower()


def test_recompiles_are_bounded_with_a_clear_message():
    logs = []
    net, compiled = make(CompileOptions(backend="eager", background=False, cache_limit=2), logs)
    compiled.install()
    with torch.no_grad():
        for batch, side in ((1, 8), (2, 8), (3, 16)):
            x, t = inputs(batch, side)
            torch.testing.assert_close(net(x, t), compiled._eager(x, t))
    statuses = [s["status"] for s in compiled.snapshot()["shapes"]]
    assert statuses == [READY, READY, OVER_LIMIT]
    assert any("limit" in line and "128x128, UNet batch 3" in line for line in logs)


def test_options_validate_and_map_to_torch_compile():
    assert CompileOptions().torch_compile_kwargs() == {"backend": "inductor", "dynamic": False}
    assert CompileOptions(mode="max-autotune", dynamic="auto").torch_compile_kwargs()["mode"] == "max-autotune"
    for bad in ({"mode": "fastest"}, {"dynamic": "maybe"}, {"cache_limit": 0}):
        with pytest.raises(ValueError):
            CompileOptions(**bad)


def test_parse_buckets():
    assert parse_buckets("512x512x1, 512x768; 1024×1024x2\n") == [
        ShapeBucket(512, 512, 1), ShapeBucket(512, 768, 1), ShapeBucket(1024, 1024, 2)]
    assert parse_buckets("") == []
    for bad in ("512", "513x512", "512x512x0", "axb"):
        with pytest.raises(ValueError, match="bad shape bucket"):
            parse_buckets(bad)


def test_checkpoint_flags_neutralised_and_restored():
    net = TinyUNet()
    inner = nn.Module()
    inner.checkpoint = True
    net.add_module("block", inner)
    changed = disable_checkpoint_flags(net)
    assert net.use_checkpoint is False and inner.checkpoint is False and len(changed) == 2
    restore_checkpoint_flags(changed)
    assert net.use_checkpoint is True and inner.checkpoint is True
    assert plain_checkpoint(lambda a, b: a + b, (1, 2), [], True) == 3


def test_cache_dir_size_and_clear(tmp_path, monkeypatch):
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    folder = tmp_path / "cache"
    enabled = use_cache_dir(str(folder))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder) and "inductor cache dir" in enabled
    (folder / "fxgraph").mkdir()  # what inductor writes; clearing deletes only such entries
    (folder / "fxgraph" / "a.bin").write_bytes(b"x" * 1000)
    assert cache_size(str(folder)) == 1000
    assert clear_cache(str(folder))["freed_bytes"] == 1000 and cache_size(str(folder)) == 0 and folder.is_dir()


def test_labels_name_the_compute_dtype():
    """Two graphs of one size in two precisions (a precision switch keeps both) must not share a label."""
    from lib_accel.compile import call_label
    x = torch.zeros(2, 4, 8, 8)
    assert call_label((x,), {}) == "64x64, UNet batch 2, fp32"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # Accel's bf16: fp32 latents, bf16 compute
        assert call_label((x,), {}) == "64x64, UNet batch 2, bf16"
    long_prompt = {"context": torch.zeros(2, 154, 8)}
    assert call_label((x.half(),), long_prompt) == "64x64, UNet batch 2, 154 prompt tokens, fp16"
