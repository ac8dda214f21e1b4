"""Tier 2: UNet/VAE precision settings and the VAE NaN retry inside the fake WebUI (CPU, --no-half)."""

from __future__ import annotations

import sys

import pytest
import torch
from accel_boot import start_with_checkpoints

from lib_accel.runtime import precision as P


@pytest.fixture
def webui(fake_webui, tmp_path):
    return start_with_checkpoints(fake_webui, tmp_path, "sd1", "sdxl")


def accel():
    return sys.modules["lib_accel.webui.extension"].get()


def dtypes(module):
    norms = {p.dtype for m in module.modules() if isinstance(m, P.NORM_TYPES) for p in m.parameters(recurse=False)}
    other = {p.dtype for m in module.modules() if not isinstance(m, P.NORM_TYPES) for p in m.parameters(recurse=False)}
    return other, norms


def image(webui, **kw):
    return webui.txt2img(steps=3, width=64, height=64, seed=5, **kw).images[0]


def test_bf16_unet_runs_close_to_fp32_and_default_reloads_exact_weights(webui):
    devices = webui.module("devices")
    unet = webui.load_model().model.diffusion_model
    reference_out = webui.unet_forward()
    reference_img = image(webui)
    loads = []
    webui.module("script_callbacks").on_model_loaded(lambda m: loads.append(m), name="probe")

    webui.set_option("accel_unet_dtype", "bf16")
    assert dtypes(unet) == ({torch.bfloat16}, {torch.float32})  # norms stay fp32
    assert devices.dtype_unet == torch.bfloat16 and devices.unet_needs_upcast is False
    img = image(webui)
    assert img.dtype == torch.float32 and torch.isfinite(img).all()
    assert (img - reference_img).abs().max() < 0.1  # bf16 vs fp32 on a random tiny UNet
    assert not torch.equal(img, reference_img)  # it really ran in bf16

    webui.set_option("accel_unet_dtype", "default")  # bf16 lost precision: the weights are reloaded
    assert len(loads) == 1
    assert dtypes(unet) == ({torch.float32}, {torch.float32}) and devices.dtype_unet == torch.float32
    assert torch.equal(webui.unet_forward(), reference_out)
    assert torch.equal(image(webui), reference_img)


def test_widening_needs_no_reload(webui):
    assert P.needs_reload(torch.float16, torch.float32, torch.float16) is False
    assert P.needs_reload(torch.float32, torch.bfloat16, torch.float32) is True
    loads = []
    webui.module("script_callbacks").on_model_loaded(lambda m: loads.append(m), name="probe")
    unet = webui.load_model().model.diffusion_model
    webui.set_option("accel_unet_dtype", "fp32")  # already fp32 (--no-half): nothing to do, wrapper on
    assert dtypes(unet)[0] == {torch.float32} and loads == []
    assert torch.isfinite(image(webui)).all()


def _fp16_runs_on_cpu() -> bool:
    """Independent of Accel's probe: does this torch run a fp16 convolution, linear layer and attention on CPU?"""
    try:
        x = torch.randn(1, 4, 8, 8, dtype=torch.float16)
        h = torch.nn.functional.conv2d(x, torch.randn(4, 4, 3, 3, dtype=torch.float16), padding=1)
        q = torch.nn.functional.linear(h.flatten(2).transpose(1, 2), torch.randn(4, 4, dtype=torch.float16))
        return bool(torch.isfinite(torch.nn.functional.scaled_dot_product_attention(q, q, q).float()).all())
    except RuntimeError:  # "... not implemented for 'Half'" on torch builds without fp16 CPU kernels
        return False


def test_fp16_unet_on_cpu_runs_where_this_torch_can(webui):
    """The branch is chosen by an independent check, not by the probe under test: a probe that wrongly refused
    fp16 (or wrongly allowed it) fails here."""
    reference = image(webui)
    webui.set_option("accel_unet_dtype", "fp16")
    unet = webui.load_model().model.diffusion_model
    if _fp16_runs_on_cpu():
        assert P.unsupported_reason("fp16", "cpu") is None
        assert dtypes(unet)[0] == {torch.float16}
        img = image(webui)
        assert torch.isfinite(img).all() and not torch.equal(img, reference)  # it really ran in fp16
    else:
        assert "UNet fp16 refused: fp16 does not run on cpu" in accel().precision.messages["unet"]
        assert dtypes(unet)[0] == {torch.float32} and torch.equal(image(webui), reference)


def test_fp16_unet_refused_by_the_probe_keeps_the_webui_precision(webui, monkeypatch):
    """The refusal path on every torch: the dtype probe says fp16 cannot run (as on torch builds without fp16
    CPU kernels); the setting is refused with that reason and the UNet stays as the WebUI loaded it."""
    reference = image(webui)
    error = "RuntimeError: \"slow_conv2d_cpu\" not implemented for 'Half'"
    precision = sys.modules["lib_accel.runtime.precision"]  # the extension's (the harness may import lib_accel afresh)
    monkeypatch.setattr(precision, "_probe", lambda dtype, device_type: error if dtype == torch.float16 else None)
    webui.set_option("accel_unet_dtype", "fp16")
    unet = webui.load_model().model.diffusion_model
    assert accel().precision.messages["unet"] == (f"UNet fp16 refused: fp16 does not run on cpu with this torch: "
                                                  f"{error}; UNet runs in fp32 (WebUI default)")
    assert dtypes(unet) == ({torch.float32}, {torch.float32})
    assert webui.module("devices").dtype_unet == torch.float32
    assert torch.equal(image(webui), reference)


def test_checkpoint_switch_reapplies_precision(webui):
    webui.set_option("accel_unet_dtype", "bf16")
    model = webui.load_model("sdxl.safetensors")
    assert dtypes(model.model.diffusion_model)[0] == {torch.bfloat16}
    assert torch.isfinite(image(webui)).all()  # sgm's wrapper class is wrapped too
    model = webui.load_model("sd15.safetensors")
    assert dtypes(model.model.diffusion_model)[0] == {torch.bfloat16}


def test_vae_dtype_round_trip_restores_loaded_weights(webui):
    devices = webui.module("devices")
    vae = webui.load_model().first_stage_model
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    webui.set_option("accel_vae_dtype", "bf16")
    assert devices.dtype_vae == torch.bfloat16 and {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    assert torch.isfinite(image(webui)).all()
    webui.set_option("accel_vae_dtype", "default")
    assert devices.dtype_vae == torch.float32
    after = vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_vae_nan_retry_switches_to_a_safer_dtype(webui, capsys):
    devices = webui.module("devices")
    model = webui.load_model()
    if not _fp16_runs_on_cpu():  # then the refusal is right, and there is no fp16 NaN to retry
        pytest.skip("this torch has no fp16 CPU kernels")
    webui.set_option("accel_vae_dtype", "fp16")
    assert devices.dtype_vae == torch.float16, accel().precision.messages.get("vae")
    real_decode = model.first_stage_model.decode

    def decode_nan_in_fp16(z):  # stands in for SD's VAE overflowing in fp16
        out = real_decode(z)
        return out * float("nan") if out.dtype == torch.float16 else out

    model.first_stage_model.decode = decode_nan_in_fp16
    img = image(webui)
    assert torch.isfinite(img).all()
    assert devices.dtype_vae in (torch.bfloat16, torch.float32)
    assert "produced NaNs in fp16; decoding again in" in capsys.readouterr().out
    assert "vae_retry" in accel().precision.messages

    webui.set_option("accel_vae_nan_retry", False)  # without the retry, the WebUI's own check is what's left
    webui.set_option("accel_vae_dtype", "default")
    webui.set_option("accel_vae_dtype", "fp16")
    model.first_stage_model.decode = decode_nan_in_fp16
    with pytest.raises(Exception, match="NaN"):
        webui.set_option("auto_vae_precision", False)
        image(webui)


def test_unload_gives_dtypes_back_and_reload_ui_twice_leaves_one_patch(webui):
    devices = webui.module("devices")
    patches = webui.module("patches")
    webui.set_option("accel_unet_dtype", "bf16")
    webui.set_option("accel_vae_dtype", "bf16")
    wrapper_cls = type(webui.load_model().model)
    webui.reload_ui()
    webui.reload_ui()
    keys = [k for k in patches.originals.get("accel", {}) if k[0] is wrapper_cls and k[1] == "forward"]
    assert len(keys) == 1
    assert torch.isfinite(image(webui)).all()
    accel().on_script_unloaded()
    assert devices.dtype_unet == torch.float32 and devices.dtype_vae == torch.float32
    assert dtypes(webui.load_model().model.diffusion_model)[0] == {torch.float32}
    assert not any(k[0] is wrapper_cls for k in patches.originals.get("accel", {}))


def test_weights_loaded_while_narrowed_are_not_rounded(webui):
    """load_state_dict copies into the existing tensors: Accel widens them before every WebUI weight load."""
    reference = webui.unet_forward()
    vae_before = {k: v.clone() for k, v in webui.load_model().first_stage_model.state_dict().items()}
    webui.set_option("accel_unet_dtype", "bf16")
    webui.set_option("accel_vae_dtype", "bf16")
    webui.load_model("sdxl.safetensors")
    model = webui.load_model("sd15.safetensors")  # loaded while the override is on
    assert dtypes(model.model.diffusion_model)[0] == {torch.bfloat16}
    webui.set_option("accel_unet_dtype", "default")
    webui.set_option("accel_vae_dtype", "default")
    assert torch.equal(webui.unet_forward(), reference)
    after = webui.load_model().first_stage_model.state_dict()
    assert all(torch.equal(vae_before[k], after[k]) for k in vae_before)


def _generate_in_thread(webui, results, **kw):
    """A generation on its own thread holding the queue lock, as the WebUI's wrap_gradio_gpu_call does."""
    import threading
    call_queue = webui.module("call_queue")

    def run():
        try:
            results["image"] = call_queue.wrap_queued_call(image)(webui, **kw)
        except Exception as e:  # reported by the test's assertion, with the error text
            results["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=run, name="generation")
    thread.start()
    return thread


def test_changing_precision_mid_image_waits_for_the_generation(webui):
    """A real race: the setting is changed on another thread while the generation is inside a UNet call."""
    import threading
    unet = webui.load_model().model.diffusion_model
    reference = image(webui)
    setter, calls, results = {}, [], {}

    def change_mid_step(module, args):
        calls.append(1)
        if len(calls) == 2 and "thread" not in setter:  # the second UNet call: the image is under way
            setter["thread"] = threading.Thread(target=lambda: webui.set_option("accel_unet_dtype", "bf16"),
                                                name="settings")
            setter["thread"].start()
            setter["thread"].join(2.0)  # before the fix the conversion ran to completion right here

    hook = unet.output_blocks[0].register_forward_pre_hook(change_mid_step)
    try:
        _generate_in_thread(webui, results).join(120)
    finally:
        hook.remove()
    assert "error" not in results, results.get("error")
    assert torch.equal(results["image"], reference), "the whole image ran in the precision it started with"
    setter["thread"].join(60)
    assert not setter["thread"].is_alive()
    assert dtypes(unet) == ({torch.bfloat16}, {torch.float32}), "the change applied after the image"
    assert accel().precision.snapshot()["unet_call_dtype"] == "bf16"


def test_a_settings_change_on_a_thread_that_holds_the_queue_lock_does_not_deadlock(webui):
    """The benchmark holds the queue lock while it writes settings (marked with holding_queue_lock)."""
    import threading
    call_queue = webui.module("call_queue")
    done = threading.Event()

    def bench():
        with call_queue.queue_lock, accel().holding_queue_lock():
            webui.set_option("accel_unet_dtype", "bf16")
            webui.set_option("accel_unet_dtype", "default")  # a reload, which takes the queue lock itself
            done.set()

    thread = threading.Thread(target=bench, daemon=True)
    thread.start()
    assert done.wait(60), "deadlock: the settings change waited for a lock its own thread holds"
    thread.join(10)
    assert not call_queue.queue_lock.locked()
