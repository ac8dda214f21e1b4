"""Precompiled graphs: saved once, loaded by a fresh process without tracing, never used when stale."""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_accel.attention.dispatch import FastestKernel, PinnedKernel
from lib_accel.attention.timing import TimingStore
from lib_accel.compile import READY, CompiledModule, CompileHooks, CompileOptions, CompileWorker, artifact
from lib_accel.compile.cache import cache_size, claim, clear_cache
from lib_accel.compile.fingerprint import SUFFIX

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(bool(artifact.unsupported_reason()), reason=artifact.unsupported_reason() or "-")

NET = '''
import torch
from torch import nn


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.full((1,), 0.5))

    def forward(self, h):
        return h * self.k


class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(4, width, 3, padding=1)
        self.proj = nn.Linear(width, width)
        self.scale = Scale()
        self.out = nn.Conv2d(width, 4, 1)

    def forward(self, x, timesteps=None, context=None):
        h = self.conv(x).permute(0, 2, 3, 1)
        h = self.scale(self.proj(h)).permute(0, 3, 1, 2)
        return self.out(torch.nn.functional.silu(h)) + timesteps[:, None, None, None]


def make(width=8):
    torch.manual_seed(0)
    return Net(width).eval()


def inputs(batch=2, side=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(batch * 100 + side)
    return torch.randn(batch, 4, side, side, generator=g).to(dtype), torch.full((batch,), 0.5, dtype=dtype)
'''

FRESH_PROCESS = '''
import json, sys
import torch
from torch._dynamo.utils import counters
from lib_accel.compile import CompiledModule, CompileOptions, CompileWorker
import accel_pc_net as netmod

logs = []
net = netmod.make()
compiled = CompiledModule(net, "net", CompileOptions(background=False, precompile_dir=sys.argv[1]),
                          log=logs.append, worker=CompileWorker("fresh"))
compiled.install()
x, t = netmod.inputs()
with torch.no_grad():
    out = net(x, t)
    eager = compiled._eager(x, t)
    again = net(x, t)
state = next(iter(compiled.shapes.values()))
print(json.dumps({"logs": logs, "cache": state.cache, "status": state.status, "calls": state.calls,
                  "traced_graphs": counters["stats"]["unique_graphs"], "frames": counters["frames"]["total"],
                  "max_diff": float((out - eager).abs().max()), "again_diff": float((again - eager).abs().max())}))
'''


@pytest.fixture(scope="module")
def netmod(tmp_path_factory):
    folder = tmp_path_factory.mktemp("net")
    (folder / "accel_pc_net.py").write_text(NET, encoding="utf-8")
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("accel_pc_net")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("accel_pc_net", None)


@pytest.fixture(scope="module")
def saved(netmod, tmp_path_factory):
    """One graph compiled and saved in this process: (folder, logs, compiled module)."""
    folder = cache_folder(tmp_path_factory.mktemp("precompiled"))
    logs = []
    net = netmod.make()
    compiled = CompiledModule(net, "net", CompileOptions(background=False, precompile_dir=str(folder)),
                              log=logs.append, worker=CompileWorker("saved"))
    compiled.install()
    x, t = netmod.inputs()
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), compiled._eager(x, t), atol=1e-5, rtol=1e-5)
    return folder, logs, compiled


def cache_folder(base) -> Path:
    """The precompiled-graph folder inside an Accel-created (marked) cache folder: the only place graphs load from."""
    claim(str(Path(base) / "cache"))
    folder = Path(base) / "cache" / "precompiled"
    folder.mkdir(exist_ok=True)
    return folder


def artifacts(folder) -> list[Path]:
    return sorted(Path(folder).glob("*" + SUFFIX))


def fresh_process(netmod, folder) -> dict:
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(Path(netmod.__file__).parent)]),
               TORCHINDUCTOR_CACHE_DIR=cache_dir())
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def fresh_module(netmod, folder, logs, width=8):
    net = netmod.make(width)
    compiled = CompiledModule(net, "net", CompileOptions(background=False, precompile_dir=str(folder)),
                              log=logs.append, worker=CompileWorker("fresh-in-process"))
    compiled.install()
    return net, compiled


def test_saved_once_with_the_steps_logged(saved):
    folder, logs, compiled = saved
    [state] = compiled.shapes.values()
    assert state.status == READY and state.precompiled is not None and state.precompiled.origin == "built"
    assert "precompiled graph saved" in state.cache
    assert len(artifacts(folder)) == 1
    ready = next(line for line in logs if " ready in " in line)
    assert "eager priming" in ready and "compile" in ready and "first compiled run" in ready


def test_a_fresh_process_loads_it_without_tracing(netmod, saved):
    folder, _, _ = saved
    result = fresh_process(netmod, folder)
    assert result["status"] == READY and result["cache"] == "precompiled graph loaded", result["logs"]
    assert result["traced_graphs"] == 0 and result["frames"] == 0, "dynamo traced nothing"
    ready = next(line for line in result["logs"] if " ready in " in line)
    assert "precompiled graph loaded in" in ready and "eager priming" not in ready
    assert result["max_diff"] < 1e-5 and result["again_diff"] < 1e-5 and result["calls"] == 1


def test_weights_are_read_at_run_time(netmod, saved):
    folder, _, _ = saved
    logs = []
    net, compiled = fresh_module(netmod, folder, logs)
    x, t = netmod.inputs()
    with torch.no_grad():
        net(x, t)
        assert next(iter(compiled.shapes.values())).precompiled.origin == "loaded"
        net.proj.weight.add_(0.5)  # what a weight reload or LoRA does
        torch.testing.assert_close(net(x, t), compiled._eager(x, t), atol=1e-5, rtol=1e-5)


def test_other_shape_dtype_or_architecture_is_a_different_file(netmod, saved):
    folder, _, compiled = saved
    x, t = netmod.inputs()
    with compiled.hooks.compiled_call_context(), torch.no_grad():  # the saved call ran under no_grad
        path = compiled.precompiler.path_for((x, t), {})
        assert path == str(artifacts(folder)[0])
        assert compiled.precompiler.path_for(netmod.inputs(side=16), {}) != path
        assert compiled.precompiler.path_for(netmod.inputs(dtype=torch.float64), {}) != path
        with torch.enable_grad():
            assert compiled.precompiler.path_for((x, t), {}) != path
        _, wider = fresh_module(netmod, folder, [], width=16)
        assert wider.precompiler.path_for((x, t), {}) != path


def test_a_stale_file_is_refused_by_its_guards(netmod, saved, tmp_path):
    """Even under the right file name, a graph for another shape is never run: torch's saved guards refuse it."""
    folder, _, _ = saved
    logs = []
    net, compiled = fresh_module(netmod, cache_folder(tmp_path), logs)
    x, t = netmod.inputs(side=16)
    with compiled.hooks.compiled_call_context(), torch.no_grad():
        target = compiled.precompiler.path_for((x, t), {})
    Path(target).write_bytes(artifacts(folder)[0].read_bytes())  # the 8x8 graph where the 16x16 one belongs
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), compiled._eager(x, t), atol=1e-5, rtol=1e-5)
    refused = next(line for line in logs if "saved precompiled graph not used" in line)
    assert "size mismatch" in refused or "guard" in refused, refused
    [state] = compiled.shapes.values()
    assert state.status == READY and state.precompiled.origin == "built"  # compiled afresh and rewritten


def test_a_corrupt_file_falls_back_with_the_reason(netmod, saved, tmp_path):
    folder, _, _ = saved
    target = cache_folder(tmp_path) / artifacts(folder)[0].name
    target.write_bytes(b"not a pickle")
    logs = []
    net, compiled = fresh_module(netmod, target.parent, logs)
    x, t = netmod.inputs()
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), compiled._eager(x, t), atol=1e-5, rtol=1e-5)
    assert sum("saved precompiled graph not used (unreadable" in line for line in logs) == 1
    assert next(iter(compiled.shapes.values())).status == READY
    assert target.read_bytes() != b"not a pickle"  # rewritten by the compile that followed


def test_host_state_is_handed_back_and_can_refuse(netmod, tmp_path):
    class Host(CompileHooks):
        def __init__(self, refuse=""):
            self.refuse, self.seen = refuse, []

        def precompile_state(self):
            return {"kernel": "sdpa"}

        def precompile_prepare(self, state):
            self.seen.append(state)
            return self.refuse

    x, t = netmod.inputs()
    logs, hosts, folder = [], (Host(), Host(), Host("the attention kernel changed")), cache_folder(tmp_path)
    for host in hosts:
        compiled = CompiledModule(netmod.make(), "net", CompileOptions(background=False, precompile_dir=str(folder)),
                                  host, log=logs.append, worker=CompileWorker("host"))
        compiled.install()
        with torch.no_grad():
            compiled.module(x, t)
    assert hosts[0].seen == [] and hosts[1].seen == [{"kernel": "sdpa"}] == hosts[2].seen
    assert sum("(precompiled graph loaded in" in line for line in logs) == 1
    assert any("not used (the attention kernel changed); compiling" in line for line in logs)


def test_a_swapped_forward_makes_a_loaded_graph_stale_in_process(netmod, saved):
    """What the WebUI does when the user picks another attention optimization: a class forward is replaced."""
    folder, _, _ = saved
    logs = []
    net, compiled = fresh_module(netmod, folder, logs)
    x, t = netmod.inputs()
    original = netmod.Scale.forward
    with torch.no_grad():
        net(x, t)
        netmod.Scale.forward = lambda self, h: h * self.k * 2
        try:
            torch.testing.assert_close(net(x, t), compiled._eager(x, t), atol=1e-5, rtol=1e-5)
        finally:
            netmod.Scale.forward = original
    stale = next(line for line in logs if "compiled graph no longer matches" in line)
    assert "Scale" in stale or "lambda" in stale, stale
    assert compiled.recompiles


def test_off_with_one_reason_on_torch_without_aot_compile(netmod, tmp_path, monkeypatch):
    monkeypatch.setattr(artifact, "unsupported_reason", lambda: "torch 2.1 has no ahead-of-time dynamo compile")
    logs, folder = [], cache_folder(tmp_path)
    net, compiled = fresh_module(netmod, folder, logs)
    with torch.no_grad():
        for side in (8, 16):
            x, t = netmod.inputs(side=side)
            torch.testing.assert_close(net(x, t), compiled._eager(x, t), atol=1e-5, rtol=1e-5)
    assert sum("precompiled graphs off (torch 2.1" in line for line in logs) == 1
    assert artifacts(folder) == [] and all(s.precompiled is None for s in compiled.shapes.values())


def test_cache_size_and_clear_include_precompiled_graphs(saved, tmp_path):
    folder = cache_folder(tmp_path).parent
    (folder / "precompiled" / ("x" + SUFFIX)).write_bytes(b"1" * 100)
    assert cache_size(str(folder)) == 100
    assert clear_cache(str(folder))["freed_bytes"] == 100 and not (folder / "precompiled").exists()


def test_a_copied_module_is_eager(saved):
    _, _, compiled = saved
    clone = copy.deepcopy(compiled.module)
    assert clone._compiled_call_impl is None and getattr(clone, "_accel_compiled", None) is None


def test_attention_runners_hand_over_their_decisions(tmp_path):
    from lib_accel.attention.registry import get_kernel
    sdpa, math_ = get_kernel("sdpa"), get_kernel("sdpa-math")
    store = TimingStore(str(tmp_path / "timings.json"))
    q = torch.randn(1, 2, 16, 8)
    first = FastestKernel([sdpa, math_], sdpa, store, log=lambda m: None, repeats=1)
    first(q, q, q)
    state = first.settled_state()
    [(sig, key, name)] = state["chosen"]

    second = FastestKernel([sdpa, math_], sdpa, store, log=lambda m: None, repeats=1)
    assert second.settle(state) == "" and second.choice_for(q, q, q).name == name
    store.put(key, {"kernel": "sdpa-math" if name != "sdpa-math" else "sdpa"})
    third = FastestKernel([sdpa, math_], sdpa, store, log=lambda m: None, repeats=1)
    assert "is now" in third.settle(state) and third.choice_for(q, q, q) is None

    pinned = PinnedKernel(sdpa, math_, log=lambda m: None)
    pinned(q, q, q)
    other = PinnedKernel(sdpa, math_, log=lambda m: None)
    assert other.settle(pinned.settled_state()) == "" and other._works == pinned._works
