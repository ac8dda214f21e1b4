"""Tier 3 for compile: whitelist a checkpoint in a real WebUI (CPU), two sizes and two batch sizes
without stalling, LoRA on/off in the compiled UNet. Slow (minutes: every size is a full UNet compile).

Skipped unless ACCEL_WEBUI_DIR is set (see test_webui_live.py).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import pytest

WEBUI_DIR = os.environ.get("ACCEL_WEBUI_DIR")
if not WEBUI_DIR:
    pytest.skip("ACCEL_WEBUI_DIR is not set: no real WebUI checkout to run the integration tier against",
                allow_module_level=True)

import torch  # noqa: E402
from PIL import Image, ImageChops  # noqa: E402
from webui_process import WebUI  # noqa: E402

from lib_accel.checkpoint.safetensors_io import save_file  # noqa: E402

pytestmark = pytest.mark.integration
LORA = "accel-test-lora"
COMPILE_TIMEOUT = float(os.environ.get("ACCEL_COMPILE_TIMEOUT", "1500"))


def write_test_lora(folder: Path) -> None:
    """A rank-4 LoRA (kohya/diffusers key names) on the first transformer block's attention projections."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for proj in ("to_q", "to_k", "to_v", "to_out_0"):
        name = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_{proj}"
        tensors[f"{name}.lora_down.weight"] = torch.randn(4, 320, generator=g) * 0.5
        tensors[f"{name}.lora_up.weight"] = torch.randn(320, 4, generator=g) * 0.5
        tensors[f"{name}.alpha"] = torch.tensor(4.0)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / f"{LORA}.safetensors"))


@pytest.fixture(scope="module")
def webui():
    data = Path(tempfile.mkdtemp(prefix="accel-webui-compile-"))
    write_test_lora(data / "models" / "Lora")
    ui = WebUI(Path(WEBUI_DIR).resolve(), data)
    try:
        ui.start()
        ui.txt2img()  # loads the model
        ui.set_options(cross_attention_optimization="Accel SDPA math", accel_compile_cache_dir=str(data / "cache"))
        yield ui
    finally:
        ui.stop()
        print(f"\nWebUI log: {ui.log_path}")


def compile_state(ui: WebUI) -> dict:
    return ui.get("/accel/v1/compile")["loaded"]


def wait_idle(ui: WebUI, timeout: float = COMPILE_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = compile_state(ui)
        if state and not state["busy"]:
            return state
        time.sleep(2)
    raise TimeoutError(f"compile still busy after {timeout:.0f}s: {compile_state(ui)}\n{ui.log_tail()}")


def shape(state: dict, label: str) -> dict:
    return next(s for s in state["shapes"] if s["label"] == label)


def image(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def max_pixel_diff(a: bytes, b: bytes) -> int:
    return max(hi for _, hi in ImageChops.difference(image(a), image(b)).getextrema())


def test_whitelist_prewarm_sizes_batches_and_lora(webui):
    title = webui.get("/sdapi/v1/options")["sd_model_checkpoint"]
    eager_start = time.perf_counter()
    eager_png = webui.txt2img(width=64, height=64, seed=5)[0][0]
    eager_seconds = time.perf_counter() - eager_start
    eager_lora_png = webui.txt2img(prompt=f"a red apple on a table <lora:{LORA}:1>", width=64, height=64, seed=5)[0][0]
    assert max_pixel_diff(eager_png, eager_lora_png) > 10, "the test LoRA must visibly change the image"

    webui.set_options(accel_compile_prewarm="64x64x1", accel_compile_background=True,
                      accel_compile_checkpoints=[title], accel_compile_enabled=True)
    state = wait_idle(webui)
    assert shape(state, "64x64, UNet batch 2, fp32")["status"] == "ready", state

    compiled_png = webui.txt2img(width=64, height=64, seed=5)[0][0]
    assert max_pixel_diff(compiled_png, eager_png) <= 3
    assert shape(compile_state(webui), "64x64, UNet batch 2, fp32")["calls"] >= 2

    # a new size and a new batch size: answered eagerly (no compile stall) while they compile behind.
    # On a 2-core CPU the eager image shares the cores (and the GIL) with the compile, so it is slower than
    # eager alone; what must hold is that it came back before its size finished compiling.
    elapsed = {}
    for overrides, label in (({"width": 96, "height": 64}, "96x64, UNet batch 2, fp32"),
                             ({"batch_size": 3}, "64x64, UNet batch 6, fp32")):
        start = time.perf_counter()
        images, _ = webui.txt2img(seed=5, **overrides)
        elapsed[label] = time.perf_counter() - start
        assert len(images) == overrides.get("batch_size", 1)
        assert shape(compile_state(webui), label)["status"] in ("queued", "compiling"), "must not wait for compile"
    state = wait_idle(webui)
    for label in ("96x64, UNet batch 2, fp32", "64x64, UNet batch 6, fp32"):
        assert shape(state, label)["status"] == "ready", state
        print(f"{label}: image in {elapsed[label]:.1f} s while its compile took {shape(state, label)['seconds']:.1f} s "
              f"(eager alone {eager_seconds:.1f} s)")
        webui.txt2img(seed=5, **({"width": 96} if "96" in label else {"batch_size": 3}))
        assert shape(compile_state(webui), label)["calls"] >= 2

    # LoRA on and off in the compiled UNet: same images as eager, no recompile
    lora_png = webui.txt2img(prompt=f"a red apple on a table <lora:{LORA}:1>", width=64, height=64, seed=5)[0][0]
    plain_png = webui.txt2img(width=64, height=64, seed=5)[0][0]
    assert max_pixel_diff(lora_png, eager_lora_png) <= 3
    assert max_pixel_diff(plain_png, eager_png) <= 3
    state = compile_state(webui)
    assert state["recompiles"] == [], state["recompiles"]
    assert "[Accel] compile:" in webui.log_text()
