"""Tier 2 for compile: whitelist across model switches, LoRA bridge, prewarm, refusals, reload, unload."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def webui(fake_webui, tmp_path):
    fake_webui.add_checkpoint("sd15.safetensors", kind="sd1")
    fake_webui.add_checkpoint("other15.safetensors", kind="sd1", seed=2)
    fake_webui.add_checkpoint("sdxl.safetensors", kind="sdxl", seed=1)
    fake_webui.load_extension(ROOT)
    fake_webui.start()
    ext = sys.modules["lib_accel.webui.extension"].get()
    ext.root = str(tmp_path)
    fake_webui.load_model("sd15.safetensors")
    return fake_webui


def title_of(webui, name):
    return webui.module("sd_models").get_closet_checkpoint_match(name).title


def state_of(webui, name):
    ext = sys.modules["lib_accel.webui.extension"].get()
    return ext.compiler.snapshot(webui.load_model())["checkpoints"][title_of(webui, name)]


def compiled_of(webui):
    return getattr(webui.load_model().model.diffusion_model, "_accel_compiled", None)


def enable(webui, *names, prewarm="", background=False, backend="eager"):
    webui.set_option("accel_compile_backend", backend)
    webui.set_option("accel_compile_prewarm", prewarm)
    webui.set_option("accel_compile_background", background)
    webui.set_option("accel_compile_checkpoints", [title_of(webui, n) for n in names])
    webui.set_option("accel_compile_enabled", True)


def test_whitelisted_checkpoint_compiles_in_place_and_matches_eager(webui):
    unet = webui.load_model().model.diffusion_model
    keys = list(unet.state_dict())
    expected = webui.unet_forward(seed=4)
    enable(webui, "sd15.safetensors")
    compiled = compiled_of(webui)
    assert compiled is not None and compiled.installed
    assert list(unet.state_dict()) == keys
    torch.testing.assert_close(webui.unet_forward(seed=4), expected, atol=1e-5, rtol=1e-5)
    assert webui.txt2img().images
    statuses = {s["status"] for s in compiled.snapshot()["shapes"]}
    assert statuses == {"ready"}
    import ldm.modules.attention as attention
    import ldm.modules.diffusionmodules.util as util
    assert util.checkpoint.__name__ == "plain_checkpoint" == attention.checkpoint.__name__


def test_whitelist_on_and_off_across_model_switches(webui):
    enable(webui, "sd15.safetensors")
    assert compiled_of(webui).installed
    webui.load_model("other15.safetensors")  # same architecture: the WebUI reuses the UNet object
    compiled = compiled_of(webui)
    assert compiled is None or not compiled.installed
    webui.load_model("sdxl.safetensors")
    assert compiled_of(webui) is None or not compiled_of(webui).installed
    webui.load_model("sd15.safetensors")
    assert compiled_of(webui).installed
    ext = sys.modules["lib_accel.webui.extension"].get()
    states = ext.compiler.snapshot(webui.load_model())["checkpoints"]
    assert states[title_of(webui, "other15.safetensors")]["reason"] == "not in the compile whitelist"
    assert states[title_of(webui, "sd15.safetensors")]["status"] == "compiled"
    webui.set_option("accel_compile_enabled", False)
    assert not compiled_of(webui).installed


def test_prewarm_compiles_in_background_and_the_first_image_uses_it(webui):
    enable(webui, "sd15.safetensors", prewarm="64x64x1", background=True)
    compiled = compiled_of(webui)
    assert compiled.worker.join(120) and compiled.wait_idle(10)
    [state] = compiled.snapshot()["shapes"]
    assert state["status"] == "ready" and state["label"] == "64x64, UNet batch 2, fp32"
    webui.txt2img(width=64, height=64, steps=2)
    [state] = compiled.snapshot()["shapes"]
    assert state["calls"] == 2, "both steps ran the prewarmed graph"


def test_lora_weight_changes_reach_the_compiled_unet_without_recompile(webui):
    """A stand-in for the built-in Lora extension's networks module: weights applied in place, lazily."""
    unet = webui.load_model().model.diffusion_model
    linears = [m for m in unet.modules() if isinstance(m, torch.nn.Linear)]
    unet.network_layer_name = "diffusion_model"  # Lora names container modules too; they have no weight
    for i, m in enumerate(linears):
        m.network_layer_name = f"layer{i}"
        m.network_current_names = ()
        m.network_backup = m.weight.detach().clone()

    def apply_weights(m):
        wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in networks.loaded_networks)
        if m.network_current_names != wanted:
            with torch.no_grad():
                m.weight.copy_(m.network_backup + 0.05 * sum(n.unet_multiplier for n in networks.loaded_networks))
            m.network_current_names = wanted

    networks = types.SimpleNamespace(loaded_networks=[], network_apply_weights=apply_weights, originals=None)
    sys.modules["networks"] = networks
    try:
        enable(webui, "sd15.safetensors")
        compiled = compiled_of(webui)
        without = webui.unet_forward(seed=8)
        networks.loaded_networks = [types.SimpleNamespace(name="style", te_multiplier=1.0, unet_multiplier=1.0,
                                                          dyn_dim=None)]
        with_lora = webui.unet_forward(seed=8)
        assert not torch.allclose(with_lora, without), "the LoRA must change the output"
        compiled.uninstall()
        torch.testing.assert_close(webui.unet_forward(seed=8), with_lora, atol=1e-5, rtol=1e-5)  # = eager
        compiled.install()
        networks.loaded_networks = []
        torch.testing.assert_close(webui.unet_forward(seed=8), without)
        assert compiled.snapshot()["recompiles"] == []
        [shape] = compiled.snapshot()["shapes"]
        assert shape["status"] == "ready" and shape["calls"] == 2, "after compiling, both calls ran that one graph"
    finally:
        del sys.modules["networks"]


def test_refusals_are_reported_and_leave_the_model_eager(webui):
    webui.opts.data["lora_functional"] = True  # the built-in Lora extension's option (not in the fake)
    enable(webui, "sd15.safetensors")
    state = state_of(webui, "sd15.safetensors")
    assert state["status"] == "refused" and "functional" in state["reason"]
    assert compiled_of(webui) is None or not compiled_of(webui).installed
    webui.opts.data["lora_functional"] = False
    webui.set_option("accel_compile_prewarm", "12x12")
    state = state_of(webui, "sd15.safetensors")
    assert state["status"] == "refused" and "bad shape bucket" in state["reason"]


def test_reload_ui_keeps_one_install_and_unload_restores_eager(webui):
    enable(webui, "sd15.safetensors")
    compiled = compiled_of(webui)
    for _ in range(2):
        webui.reload_ui()
        assert compiled_of(webui) is compiled and compiled.installed
        assert webui.txt2img().images
    unet = webui.load_model().model.diffusion_model
    webui.module("script_callbacks").script_unloaded_callback()
    assert not compiled.installed and unet._compiled_call_impl is None
    import ldm.modules.diffusionmodules.util as util
    assert util.checkpoint.__name__ == "checkpoint"


def test_warm_clear_and_panel_markdown(webui, tmp_path):
    from lib_accel.webui.compile.panel import compile_md
    ext = sys.modules["lib_accel.webui.extension"].get()
    model = webui.load_model()
    with pytest.raises(RuntimeError, match="not compiled"):
        ext.compiler.warm(model, "64x64x1")
    enable(webui, "sd15.safetensors", background=True)
    webui.set_option("accel_compile_cache_dir", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="bad shape bucket"):
        ext.compiler.warm(model, "64x")
    assert ext.compiler.warm(model, "64x64x1, 64x128x2") == ["64x64x1", "64x128x2"]
    compiled = compiled_of(webui)
    assert compiled.worker.join(120) and compiled.wait_idle(10)
    snapshot = ext.compiler.snapshot(model)
    labels = {s["label"]: s["status"] for s in snapshot["loaded"]["shapes"]}
    assert labels == {"64x64, UNet batch 2, fp32": "ready", "64x128, UNet batch 4, fp32": "ready"}
    text = compile_md(snapshot)
    assert "64x64, UNet batch 2, fp32 | ready" in text and "sd15.safetensors" in text and "Compile cache" in text
    (tmp_path / "cache" / "fxgraph").mkdir(exist_ok=True)  # clearing deletes only what inductor/Accel write
    (tmp_path / "cache" / "fxgraph" / "junk.bin").write_bytes(b"1" * 2048)
    assert ext.compiler.clear_cache(model)["freed_bytes"] >= 2048
    assert ext.compiler.cache_info()["bytes"] == 0


def test_panel_markdown_without_support_or_model():
    from lib_accel.webui.compile.panel import compile_md
    text = compile_md({"support": {"available": False, "reason": "inductor does not support Windows"},
                       "loaded": None, "checkpoints": {}, "cache": {"dir": "/x", "bytes": 0}})
    assert "not available here" in text and "Windows" in text and "No checkpoint" in text


@pytest.mark.skipif(tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 2),
                    reason="torch 2.1's dynamo splits the graph at every dict lookup on an object attribute "
                           "(Accel's per-shape kernel choice), so a UNet is one graph per attention layer there")
def test_first_compiled_call_is_one_graph_even_before_auto_has_measured(webui):
    """Accel auto decides lazily; a compile must not trace its timing/file/lock code (one graph, not dozens)."""
    from torch._dynamo.utils import counters
    webui.set_option("cross_attention_optimization", "Accel auto")
    enable(webui, "sd15.safetensors")
    before = counters["stats"]["unique_graphs"]
    webui.unet_forward(seed=1)  # the first call at this shape: auto has measured nothing yet
    assert counters["stats"]["unique_graphs"] - before == 1
    [shape] = compiled_of(webui).snapshot()["shapes"]
    assert shape["status"] == "ready"


def test_unknown_backend_is_refused_before_anything_is_installed(webui):
    """An unknown backend used to raise from torch.compile after the UNet was hooked: state said nothing was
    compiled, yet every new size queued a background job that ran an extra eager call."""
    enable(webui, "sd15.safetensors")
    compiled = compiled_of(webui)
    assert compiled.installed
    webui.set_option("accel_compile_backend", "no-such-backend")
    state = state_of(webui, "sd15.safetensors")
    assert state["status"] == "refused" and "no-such-backend" in state["reason"]
    unet = webui.load_model().model.diffusion_model
    assert not compiled.installed and unet._compiled_call_impl is None, "the working compile is taken off too"
    calls = []
    eager = unet.forward
    unet.forward = lambda *a, **k: calls.append(1) or eager(*a, **k)
    try:
        assert webui.txt2img(width=64, height=128, steps=2).images
    finally:
        del unet.forward
    assert len(calls) == 2 and compiled.worker.join(30), "one eager call per step and nothing queued"
    assert all(not s["label"].startswith("64x128, UNet batch 2") for s in compiled.snapshot()["shapes"])


def test_unknown_backend_on_a_fresh_model_installs_nothing(webui):
    enable(webui, "sd15.safetensors", backend="no-such-backend")
    unet = webui.load_model().model.diffusion_model
    compiled = compiled_of(webui)
    assert compiled is None or not compiled.installed
    assert unet._compiled_call_impl is None and "forward" not in vars(unet)
    assert "not usable" in state_of(webui, "sd15.safetensors")["reason"]
