"""Pre-warm inputs are the inputs of a real generation: :func:`example_call` builds, for SD1.5 (ldm) and SDXL (sgm),
the same positional and keyword arguments, with the same shapes, dtypes and devices, as the UNet receives when
the fake WebUI's sampler runs an image through modules/sd_hijack_unet.py - which, as v1.10.1's, casts x, the
timesteps and the conditioning to ``devices.dtype_unet`` for both architectures. A graph pre-warmed from other
inputs is a graph no image uses (and, on a fp16 GPU, an extra compile on the first image)."""

from __future__ import annotations

import importlib

import pytest
import torch
from accel_boot import start_with_checkpoints

NAMES = {"sd1": "sd15.safetensors", "sdxl": "sdxl.safetensors"}
WEBUI_HALF = "--use-cpu all --no-half-vae --skip-torch-cuda-test --skip-version-check"  # the WebUI's fp16 UNet
# the WebUI's fp16 mode enters torch.autocast("cuda"), which warns on a machine without CUDA
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")


class _FirstUNetCall(Exception):
    """Stops the generation at its first UNet call, once its inputs are recorded (nothing runs in fp16)."""


def _describe(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type)
    return ("value", value)


def signature(args: tuple, kwargs: dict) -> tuple:
    return tuple(_describe(a) for a in args), {k: _describe(v) for k, v in kwargs.items()}


def first_unet_call(webui, width: int, height: int, batch: int) -> tuple[tuple, dict]:
    """The (args, kwargs) the UNet module is called with in a txt2img of ``batch`` images."""
    unet = webui.load_model().model.diffusion_model
    calls = []

    def record(module, args, kwargs):
        calls.append((args, kwargs))
        raise _FirstUNetCall

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with pytest.raises(_FirstUNetCall):
            webui.txt2img(steps=2, width=width, height=height, batch_size=batch)
    finally:
        handle.remove()
    return calls[0]


@pytest.fixture(params=["webui fp16", "accel bf16", "fp32"])
def precision(request):
    return request.param


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_prewarm_inputs_match_what_a_generation_gives_the_unet(fake_webui, tmp_path, precision, kind):
    if precision == "webui fp16":
        fake_webui.set_args(WEBUI_HALF)
    webui = start_with_checkpoints(fake_webui, tmp_path, "sd1", "sdxl", load=NAMES[kind])
    if precision == "accel bf16":
        webui.set_option("accel_unet_dtype", "bf16")
    devices = webui.module("devices")
    expected_dtype = {"webui fp16": torch.float16, "accel bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    assert devices.dtype_unet == expected_dtype

    width, height, batch = 64, 96, 2  # not square: a swapped width/height shows
    args, kwargs = first_unet_call(webui, width, height, batch)
    x = args[0]
    assert x.dtype == devices.dtype_unet, "sd_hijack_unet casts x to dtype_unet (SDXL too)"

    sd_model = webui.load_model()
    warm_queue = importlib.import_module("lib_accel.webui.compile.warm_queue")  # the extension's own copy
    example = warm_queue.example_call(sd_model, sd_model.model.diffusion_model, width, height, 2 * batch,
                                      devices.device, devices.dtype_unet)
    assert signature(*example) == signature(args, kwargs)


def test_the_fake_casts_sdxl_inputs_like_v1_10_1(fake_webui, tmp_path):
    """The contract above rests on this: x, t and every conditioning tensor reach sgm's UNet in dtype_unet, and
    ldm's as well (v1.10.1's sd_hijack_unet wraps OpenAIWrapper.forward and LatentDiffusion.apply_model)."""
    webui = start_with_checkpoints(fake_webui, tmp_path, "sd1", "sdxl", load="sdxl.safetensors")
    webui.set_option("accel_unet_dtype", "bf16")
    for name in ("sdxl.safetensors", "sd15.safetensors"):
        webui.load_model(name)
        args, kwargs = first_unet_call(webui, 64, 64, 1)
        tensors = [*args, *kwargs.values()]
        assert len(tensors) == (4 if name.startswith("sdxl") else 3)  # x, t, context (+ y for SDXL)
        assert {t.dtype for t in tensors} == {torch.bfloat16}, name


@pytest.mark.parametrize("accel_dtype", ["default", "bf16"])
@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_a_prewarmed_size_is_the_graph_the_first_image_runs(fake_webui, tmp_path, kind, accel_dtype):
    webui = start_with_checkpoints(fake_webui, tmp_path, "sd1", "sdxl", load=NAMES[kind])
    webui.set_option("accel_unet_dtype", accel_dtype)  # bf16: Accel's precision wrapper's autocast, prewarm too
    title = webui.module("sd_models").get_closet_checkpoint_match(NAMES[kind]).title
    for key, value in {"accel_compile_backend": "eager", "accel_compile_background": True,
                       "accel_compile_prewarm": "64x96x1", "accel_compile_cache_dir": str(tmp_path / "cache"),
                       "accel_compile_checkpoints": [title], "accel_compile_enabled": True}.items():
        webui.set_option(key, value)
    compiled = webui.load_model().model.diffusion_model._accel_compiled
    assert compiled.worker.join(120) and compiled.wait_idle(10)
    [warmed] = compiled.snapshot()["shapes"]
    assert warmed["status"] == "ready" and warmed["calls"] == 0, warmed
    webui.txt2img(steps=3, width=64, height=96)
    assert compiled.worker.join(120) and compiled.wait_idle(10)
    [used] = compiled.snapshot()["shapes"]
    assert used["label"] == warmed["label"] and used["calls"] == 3, "every step ran the pre-warmed graph"
