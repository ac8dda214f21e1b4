"""The compiled UNet with the built-in Lora extension loaded (the fake's mirror of v1.10.1's lora_patches.py and
networks.py, so ``networks.originals`` holds torch's forwards and every torch.nn layer runs
``network_<Layer>_forward``): LoRA weights picked or dropped between images reach the compiled graph without a
recompile, and the compiled result equals the eager one computed through Lora's own forwards."""

from __future__ import annotations

import sys

import pytest
import torch
from accel_boot import LORA, start_with_checkpoints


@pytest.fixture
def webui(fake_webui, tmp_path):
    return start_with_checkpoints(fake_webui, tmp_path, "sd1", builtins=(LORA,))


def compile_inline(webui):
    title = webui.module("sd_models").get_closet_checkpoint_match("sd15.safetensors").title
    for key, value in {"accel_compile_backend": "eager", "accel_compile_background": False,
                       "accel_compile_prewarm": "", "accel_compile_checkpoints": [title],
                       "accel_compile_enabled": True}.items():
        webui.set_option(key, value)
    return webui.load_model().model.diffusion_model._accel_compiled


def register_unet_network(webui):
    """A network changing one UNet Linear (low rank), one Conv2d and one GroupNorm (full diffs)."""
    networks = sys.modules["networks"]
    unet = webui.load_model().model.diffusion_model
    g = torch.Generator().manual_seed(7)
    linear = next(m for m in unet.modules() if isinstance(m, torch.nn.Linear) and m.in_features >= 4)
    conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d))
    norm = next(m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm))
    networks.register_network("style", {
        linear.network_layer_name: ("lora", 0.3 * torch.randn(linear.out_features, 2, generator=g),
                                    0.3 * torch.randn(2, linear.in_features, generator=g)),
        conv.network_layer_name: ("full", 0.05 * torch.randn(conv.weight.shape, generator=g)),
        norm.network_layer_name: ("full", 0.2 * torch.randn(norm.weight.shape, generator=g)),
    })
    return networks


def test_the_fake_lora_extension_is_the_v1_10_1_shape(webui):
    networks, torch_linear = sys.modules["networks"], sys.modules["lora_patches"]
    assert networks.originals is not None and isinstance(networks.originals, torch_linear.LoraPatches)
    for name in ("Linear", "Conv2d", "GroupNorm", "LayerNorm", "MultiheadAttention"):
        assert getattr(torch.nn, name).forward.__name__ == f"network_{name}_forward"
        assert getattr(networks.originals, f"{name}_forward").__qualname__ == f"{name}.forward"  # torch's own


def test_lora_changes_reach_the_compiled_unet_without_recompile(webui):
    networks = register_unet_network(webui)
    eager = {}
    with torch.no_grad():
        eager["without"] = webui.unet_forward(seed=8)
        networks.load_networks(["style"])
        eager["with"] = webui.unet_forward(seed=8)  # Lora's forwards apply the weights in place
        networks.load_networks([])
        torch.testing.assert_close(webui.unet_forward(seed=8), eager["without"], atol=0, rtol=0)
    assert not torch.allclose(eager["with"], eager["without"]), "the network must change the output"

    compiled = compile_inline(webui)
    assert compiled.installed
    torch.testing.assert_close(webui.unet_forward(seed=8), eager["without"], atol=1e-5, rtol=1e-5)
    networks.load_networks(["style"])
    torch.testing.assert_close(webui.unet_forward(seed=8), eager["with"], atol=1e-5, rtol=1e-5)
    networks.load_networks([])
    torch.testing.assert_close(webui.unet_forward(seed=8), eager["without"], atol=1e-5, rtol=1e-5)
    assert compiled.snapshot()["recompiles"] == []
    [shape] = compiled.snapshot()["shapes"]
    assert shape["status"] == "ready" and shape["calls"] >= 2, shape

    networks.load_networks(["style"])
    assert torch.isfinite(webui.txt2img(steps=2).images[0]).all(), "a generation with the LoRA on the compiled UNet"
