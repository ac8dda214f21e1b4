"""Compile with the built-in Lora extension (the fake's mirror of v1.10.1's patches): a background compile
must not change what another thread runs, and unload/Reload UI in either order leaves torch's forwards."""

from __future__ import annotations

import sys
import threading

import pytest
import torch
from accel_boot import LORA, start_with_checkpoints

TORCH_FORWARDS = {name: getattr(torch.nn, name).forward
                  for name in ("Linear", "Conv2d", "GroupNorm", "LayerNorm", "MultiheadAttention")}
GATE_ENTERED, GATE_OPEN = threading.Event(), threading.Event()


def _gate_backend(gm, example_inputs):
    """A dynamo backend that holds the compile (in the worker thread) until the test opens the gate."""
    GATE_ENTERED.set()
    assert GATE_OPEN.wait(60), "the test never opened the gate"
    return gm.forward


@pytest.fixture
def webui(fake_webui, tmp_path):
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend
    if "accel_test_gate" not in _COMPILER_FNS:
        register_backend(_gate_backend, "accel_test_gate")
    GATE_ENTERED.clear()
    GATE_OPEN.clear()
    yield start_with_checkpoints(fake_webui, tmp_path, "sd1", builtins=(LORA,))
    GATE_OPEN.set()


def enable(webui, backend, **options):
    title = webui.module("sd_models").get_closet_checkpoint_match("sd15.safetensors").title
    for key, value in {"accel_compile_backend": backend, "accel_compile_background": True, **options}.items():
        webui.set_option(key, value)
    webui.set_option("accel_compile_checkpoints", [title])
    webui.set_option("accel_compile_enabled", True)


def register_style(model):
    """A network touching the text encoder (its final LayerNorm, a Linear named like a text-encoder layer) and
    one UNet Linear."""
    networks = sys.modules["networks"]
    g = torch.Generator().manual_seed(3)
    norm = model.cond_stage_model.transformer.final_layer_norm
    te_linear = torch.nn.Linear(8, 8)
    te_linear.network_layer_name = "transformer_text_model_encoder_layers_0_mlp_fc1"
    unet_linear = next(m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear))
    networks.register_network("style", {
        norm.network_layer_name: ("full", torch.randn(norm.weight.shape, generator=g)),
        te_linear.network_layer_name: ("lora", torch.randn(8, 2, generator=g), torch.randn(2, 8, generator=g)),
        unet_linear.network_layer_name: ("full", 0.1 * torch.randn(unet_linear.weight.shape, generator=g)),
    })
    return networks, te_linear


def test_an_image_during_a_background_compile_keeps_its_text_encoder_lora(webui):
    model = webui.load_model()
    networks, te_linear = register_style(model)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain_cond, plain_linear = model.get_learned_conditioning(["a cat"]), te_linear(x)
        networks.load_networks(["style"])
        lora_cond, lora_linear = model.get_learned_conditioning(["a cat"]), te_linear(x)
        networks.load_networks([])
        assert torch.equal(model.get_learned_conditioning(["a cat"]), plain_cond)
        assert torch.equal(te_linear(x), plain_linear)
    assert not torch.allclose(lora_cond, plain_cond) and not torch.allclose(lora_linear, plain_linear)

    apply_threads = []
    apply = networks.network_apply_weights
    networks.network_apply_weights = lambda layer: apply_threads.append(threading.current_thread().name) \
        or apply(layer)
    try:
        enable(webui, "accel_test_gate", accel_compile_prewarm="64x64x1")
        assert GATE_ENTERED.wait(120), "the background compile never reached the backend"
        worker = model.model.diffusion_model._accel_compiled.worker
        assert worker.current is not None and worker.current.status == "compiling"
        networks.load_networks(["style"])  # the user picks the LoRA for the next image, mid-compile
        results = {}

        def image():  # the text-encoder part of a generation, on its own thread like the WebUI's
            with torch.no_grad():
                results["cond"], results["linear"] = model.get_learned_conditioning(["a cat"]), te_linear(x)

        thread = threading.Thread(target=image, name="generation")
        thread.start()
        thread.join(30)
        torch.testing.assert_close(results["cond"], lora_cond)
        torch.testing.assert_close(results["linear"], lora_linear)
    finally:
        GATE_OPEN.set()
        networks.network_apply_weights = apply
        running = getattr(model.model.diffusion_model, "_accel_compiled", None)
        assert running is None or running.worker.join(120), "the compile must finish before teardown"
    compiled = model.model.diffusion_model._accel_compiled
    assert compiled.worker.join(120) and compiled.wait_idle(10)
    assert "generation" in apply_threads and "accel-compile" not in apply_threads, \
        "Lora's forwards run on the image's thread, never on the compile thread"
    [shape] = compiled.snapshot()["shapes"]
    assert shape["status"] == "ready", shape
    with_lora = webui.unet_forward(batch=2, size=8, seed=2)  # integer timesteps: a new signature, runs eager
    assert compiled.worker.join(120) and compiled.wait_idle(10)
    torch.testing.assert_close(webui.unet_forward(batch=2, size=8, seed=2), with_lora)  # its graph now
    assert all(s["status"] == "ready" and s["calls"] <= 1 for s in compiled.snapshot()["shapes"])
    assert sum(s["calls"] for s in compiled.snapshot()["shapes"]) == 1
    compiled.uninstall()
    torch.testing.assert_close(webui.unet_forward(batch=2, size=8, seed=2), with_lora)  # eager, Lora's forwards


def test_compiled_calls_trace_torch_forwards_and_leave_other_threads_on_loras(webui):
    model = webui.load_model()
    register_style(model)
    enable(webui, "eager", accel_compile_background=False, accel_compile_prewarm="")
    webui.unet_forward(seed=1)  # compiles inline, installs the per-thread dispatch
    for name, torch_forward in TORCH_FORWARDS.items():
        forward = getattr(torch.nn, name).forward
        assert forward is not torch_forward and forward._accel_dispatch[0] is torch_forward
        assert forward._accel_dispatch[1].__name__ == f"network_{name}_forward"


@pytest.mark.parametrize("accel_first", [False, True])
def test_unload_and_reload_ui_in_either_order_leave_working_forwards(webui, accel_first):
    model = webui.load_model()
    networks, te_linear = register_style(model)
    enable(webui, "eager", accel_compile_background=False, accel_compile_prewarm="")
    webui.unet_forward(seed=1)
    callbacks = webui.module("script_callbacks").callback_map["callbacks_script_unloaded"]
    lora_first = [c for c in callbacks if "lora_script" in c.script]
    assert lora_first and callbacks.index(lora_first[0]) == 0, "built-in extensions register first"
    if accel_first:  # extension order decides; check both
        callbacks.sort(key=lambda c: "lora_script" in c.script)
    webui.reload_ui()
    networks.load_networks(["style"])
    with torch.no_grad():
        te_linear(torch.randn(2, 8))  # would recurse forever if a stale Lora forward had been restored
        webui.unet_forward(seed=1)
    assert sys.modules["networks"].originals.Linear_forward is TORCH_FORWARDS["Linear"]
    callbacks = webui.module("script_callbacks").callback_map["callbacks_script_unloaded"]
    if accel_first:
        callbacks.sort(key=lambda c: "lora_script" in c.script)
    webui.module("script_callbacks").script_unloaded_callback()
    for name, torch_forward in TORCH_FORWARDS.items():
        assert getattr(torch.nn, name).forward is torch_forward, name
    assert not webui.module("patches").originals.get("accel")
    networks.originals = sys.modules["lora_patches"].LoraPatches()  # loaded again, so teardown's unload is clean
