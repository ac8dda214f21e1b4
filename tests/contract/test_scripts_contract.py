"""Tier 2: scripts/ end to end inside the fake WebUI (tests/fakewebui mirrors the v1.10.1 surface)."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import torch

from lib_accel.config import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
ON_CPU = ["Accel auto", "Accel SDPA flash", "Accel SDPA math", "Accel chunked (low memory)"]
CUDA_ONLY = ["Accel SDPA mem-efficient", "Accel SDPA cuDNN", "Accel xformers"]


@pytest.fixture
def webui(fake_webui, tmp_path):
    fake_webui.add_checkpoint("sd15.safetensors", kind="sd1")
    fake_webui.add_checkpoint("sdxl.safetensors", kind="sdxl", seed=1)
    fake_webui.load_extension(ROOT)
    fake_webui.start()
    accel(fake_webui).root = str(tmp_path)  # keep accel-timings.json out of the checkout
    fake_webui.load_model("sd15.safetensors")
    return fake_webui


def accel(webui):
    return sys.modules["lib_accel.webui.extension"].get()


def accel_callbacks(webui, category):
    return [c for c in webui.callbacks(category) if "accel.py" in str(c.name if hasattr(c, "name") else c)]


def patch_count(webui):
    return len(webui.module("patches").originals.get("accel", {}))


def attention_forwards():
    import ldm.modules.attention as la
    import ldm.modules.diffusionmodules.model as lm
    import sgm.modules.attention as sa
    import sgm.modules.diffusionmodules.model as sm
    return [la.CrossAttention.forward, lm.AttnBlock.forward, sa.CrossAttention.forward, sm.AttnBlock.forward]


EXPECTED = {"ui_settings": 1, "list_optimizers": 1, "model_loaded": 1, "app_started": 3, "script_unloaded": 1,
            "cfg_denoiser": 1, "cfg_after_cfg": 1, "ui_tabs": 1}


def assert_registered_once(webui):
    for category, count in EXPECTED.items():
        names = [c.name for c in accel_callbacks(webui, category)]
        assert len(names) == count and len(set(names)) == count, (category, names)


def test_callbacks_registered_once(webui):
    assert_registered_once(webui)


def test_settings_created_in_one_section(webui):
    labels = webui.opts.data_labels
    for spec in SETTINGS:
        assert spec.key in labels, spec.key
        assert tuple(labels[spec.key].section[:2]) == ("accel", "Accel")
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        assert getattr(webui.opts, spec.key) == default


def test_optimizers_listed_with_reasons_respected_and_automatic_untouched(webui):
    titles = webui.optimizer_titles()
    for title in ON_CPU:
        assert title in titles
    if not torch.cuda.is_available():
        assert not set(CUDA_ONLY) & set(titles), "kernels that cannot run here are not offered"
    webui.set_option("cross_attention_optimization", "Automatic")
    assert not webui.module("sd_hijack").current_optimizer.name.startswith("Accel")


@pytest.mark.parametrize("title", ON_CPU)
def test_each_optimization_applies_matches_and_undoes(webui, title):
    sd_hijack = webui.module("sd_hijack")
    webui.set_option("cross_attention_optimization", "None")
    originals = attention_forwards()
    expected = webui.unet_forward(seed=3)

    webui.set_option("cross_attention_optimization", title)
    assert sd_hijack.current_optimizer.title() == title
    names = [f.__name__ for f in attention_forwards()]
    assert names == ["accel_cross_attention_forward", "accel_attnblock_forward"] * 2
    torch.testing.assert_close(webui.unet_forward(seed=3), expected, atol=1e-4, rtol=1e-4)
    assert webui.txt2img().images

    webui.set_option("cross_attention_optimization", "None")
    assert attention_forwards() == originals


def test_auto_measures_then_reuses_persisted_choices(webui, tmp_path):
    webui.set_option("cross_attention_optimization", "Accel auto")
    webui.txt2img()
    store = json.loads((tmp_path / "accel-timings.json").read_text())
    assert store and all(rec["kernel"] and rec["ms"] for rec in store.values())
    shapes = {key.split("|")[-1] for key in store}
    assert any("kv77" not in s for s in shapes) and any(s.startswith("cpu float32") for s in shapes)


def test_upcast_and_hypernetworks_are_honoured(webui):
    shared = webui.module("shared")
    hypernetwork = webui.module("hypernetworks.hypernetwork")
    webui.set_option("cross_attention_optimization", "None")
    baseline = webui.unet_forward(seed=5)
    torch.manual_seed(0)
    width = 64  # the fake UNet's context width
    hn = hypernetwork.Hypernetwork("hn", {width: (torch.nn.Linear(width, width), torch.nn.Linear(width, width))})
    shared.loaded_hypernetworks[:] = [hn]
    try:
        with_hn = webui.unet_forward(seed=5)
        assert not torch.allclose(with_hn, baseline)
        webui.set_option("cross_attention_optimization", "Accel SDPA math")
        webui.set_option("upcast_attn", True)
        torch.testing.assert_close(webui.unet_forward(seed=5), with_hn, atol=1e-4, rtol=1e-4)
    finally:
        shared.loaded_hypernetworks[:] = []
        webui.set_option("upcast_attn", False)


def test_runtime_settings_apply_at_once_and_default_restores(webui):
    devices = webui.module("devices")
    webui_check = devices.test_for_nans
    baseline = patch_count(webui)  # the live-stats stage timers
    webui.set_option("accel_nan_check", "full")
    assert devices.test_for_nans is not webui_check and patch_count(webui) == baseline + 1
    with pytest.raises(devices.NansException):
        devices.test_for_nans(torch.tensor([0.0, float("nan")]), "unet")
    webui.set_option("accel_nan_check", "off")
    devices.test_for_nans(torch.tensor([float("nan")]), "unet")
    webui.set_option("accel_nan_check", "default")
    assert devices.test_for_nans is webui_check and patch_count(webui) == baseline

    unet = webui.load_model().model.diffusion_model
    webui.set_option("accel_channels_last", "on")
    conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    webui.set_option("accel_channels_last", "default")
    assert conv.weight.is_contiguous()


def test_model_switch_applies_toggles_to_the_new_unet(webui):
    webui.set_option("accel_channels_last", "on")
    model = webui.load_model("sdxl.safetensors")
    assert model.is_sdxl
    conv = next(m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    webui.set_option("cross_attention_optimization", "Accel SDPA math")
    assert webui.txt2img().images


def test_reload_ui_twice_leaves_exactly_one_of_everything(webui):
    webui.set_option("cross_attention_optimization", "Accel SDPA math")
    webui.set_option("accel_nan_check", "full")
    expected = webui.unet_forward(seed=2)
    patches = patch_count(webui)
    assert patches >= 1
    for _ in range(2):
        webui.reload_ui()
        assert_registered_once(webui)
        assert patch_count(webui) == patches, "every patch re-applied exactly once"
        assert webui.module("sd_hijack").current_optimizer.title() == "Accel SDPA math"
        assert attention_forwards()[0].__name__ == "accel_cross_attention_forward"
        torch.testing.assert_close(webui.unet_forward(seed=2), expected)
        assert webui.txt2img().images


def test_unload_undoes_patches_flags_and_attention(webui):
    bench = torch.backends.cudnn.benchmark
    webui.set_option("cross_attention_optimization", "Accel SDPA math")
    webui.set_option("accel_nan_check", "full")
    webui.set_option("accel_cudnn_benchmark", "on" if not bench else "off")
    webui.module("script_callbacks").script_unloaded_callback()
    assert patch_count(webui) == 0
    assert torch.backends.cudnn.benchmark is bench
    assert webui.module("sd_hijack").current_optimizer is None
    assert all(not f.__name__.startswith("accel_") for f in attention_forwards())


def test_install_through_the_webui_launcher(webui):
    proc, calls = webui.run_install(ROOT)
    assert proc.returncode == 0, proc.stderr
    pip = [c["command"] for c in calls if c["kind"] == "pip"]
    try:
        importlib.metadata.distribution("nvidia-ml-py")
        expected = []
    except importlib.metadata.PackageNotFoundError:
        expected = ['install "nvidia-ml-py"']
    assert pip == expected, "only what is missing, nothing else"
    assert not any(word in json.dumps(calls) for word in ("torch", "xformers", "triton"))
    proc, calls = webui.run_install(ROOT, args="--skip-install")
    assert proc.returncode == 0 and not [c for c in calls if c["kind"] == "run"]
