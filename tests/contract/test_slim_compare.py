"""Tier 2 for "Compare a test image" (lib_accel.webui.slim.compare) on the fake WebUI: checkpoint switching,
restoring, the generation lock, checkpoints outside the WebUI's folders, and the gradio handler."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def webui(fake_webui):
    fake_webui.add_checkpoint("sd15.safetensors", kind="sd1", seed=0)
    fake_webui.add_checkpoint("other15.safetensors", kind="sd1", seed=2)
    fake_webui.add_checkpoint("user.safetensors", kind="sd1", seed=5)
    fake_webui.load_extension(ROOT)
    fake_webui.start()
    fake_webui.load_model("user.safetensors")  # the user's checkpoint: must be loaded again afterwards
    return fake_webui


def sc():
    return sys.modules.get("lib_accel.webui.slim.compare") or __import__(
        "lib_accel.webui.slim.compare", fromlist=["x"])


def ckpt_dir(webui) -> Path:
    return Path(webui.data_dir) / "models" / "Stable-diffusion"


def write_slim_copy(webui, name="sd15.slim-fp16.safetensors", seed=0, folder=None) -> str:
    """A 'slim output' written after start (not yet listed), as slim_write would: same weights (seed)."""
    path = Path(folder or ckpt_dir(webui)) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": "sd1", "seed": seed}))
    return str(path)


def loaded_name(webui) -> str:
    return Path(webui.module("sd_models").model_data.sd_model.sd_checkpoint_info.filename).name


def test_same_weights_render_identical_images_and_restore(webui):
    slim_path = write_slim_copy(webui)  # not listed yet: compare must re-list
    result = sc().compare_checkpoints(str(ckpt_dir(webui) / "sd15.safetensors"), slim_path)
    assert result.diff.identical
    assert "identical" in result.markdown()
    assert result.original.startswith("sd15.safetensors") and result.slim.startswith("sd15.slim-fp16")
    assert loaded_name(webui) == "user.safetensors"
    assert webui.opts.sd_model_checkpoint.startswith("user.safetensors")
    assert result.restored.startswith("user.safetensors")
    img = sc().display_image(result.original_image)
    assert img.ndim == 3 and img.shape[2] == 3 and str(img.dtype) == "uint8"  # the fake VAE decodes to 16x16


def test_different_weights_report_difference(webui):
    result = sc().compare_checkpoints(str(ckpt_dir(webui) / "sd15.safetensors"),
                                      str(ckpt_dir(webui) / "other15.safetensors"))
    assert not result.diff.identical and result.diff.max_abs > 0
    assert 0 < result.diff.psnr_db < float("inf")
    assert "dB" in result.markdown()
    assert loaded_name(webui) == "user.safetensors"


def test_renders_each_checkpoint_under_the_lock_with_the_fixed_job(webui, monkeypatch):
    seen = []
    processing = webui.module("processing")
    real = processing.process_images

    def spy(p):
        lock = webui.module("call_queue").queue_lock
        seen.append((loaded_name(webui), lock.locked(), p.width, p.height, p.steps, p.sampler_name, p.seed,
                     p.batch_size, p.do_not_save_samples, p.do_not_save_grid, p.sd_model is not None))
        return real(p)

    monkeypatch.setattr(processing, "process_images", spy)
    sc().compare_checkpoints(str(ckpt_dir(webui) / "sd15.safetensors"), write_slim_copy(webui))
    seed = sc().TEST_RENDER["seed"]
    assert seen == [("sd15.safetensors", True, 64, 64, 4, "Euler", seed, 1, True, True, True),
                    ("sd15.slim-fp16.safetensors", True, 64, 64, 4, "Euler", seed, 1, True, True, True)]


def test_waits_for_a_generation_holding_the_lock(webui):
    lock = webui.module("call_queue").queue_lock
    done = threading.Event()
    lock.acquire()
    try:
        t = threading.Thread(target=lambda: (sc().compare_checkpoints(
            str(ckpt_dir(webui) / "sd15.safetensors"), write_slim_copy(webui), render=lambda info: torch.zeros(
                2, 2, 3, dtype=torch.uint8)), done.set()))
        t.start()
        assert not done.wait(0.3)  # blocked behind the "user's generation"
    finally:
        lock.release()
    t.join(30)
    assert done.is_set()


def test_slim_output_outside_checkpoint_folders_is_not_loaded(webui, tmp_path):
    outside = write_slim_copy(webui, folder=tmp_path / "elsewhere")
    calls = []
    with pytest.raises(sc().CompareError, match="not in the WebUI's checkpoint folders") as e:
        sc().compare_checkpoints(str(ckpt_dir(webui) / "sd15.safetensors"), outside, render=calls.append)
    assert "elsewhere" in str(e.value)
    assert calls == [] and loaded_name(webui) == "user.safetensors"
    with pytest.raises(sc().CompareError, match="does not exist"):
        sc().compare_checkpoints(str(ckpt_dir(webui) / "sd15.safetensors"), str(tmp_path / "missing.safetensors"))


def test_render_failure_still_restores_the_checkpoint(webui):
    sd_models = webui.module("sd_models")

    def render(info):
        sd_models.reload_model_weights(info=info)
        if "slim" in info.filename:
            raise RuntimeError("boom")
        return torch.zeros(2, 2, 3, dtype=torch.uint8)

    with pytest.raises(RuntimeError, match="boom"):
        sc().compare_checkpoints(str(ckpt_dir(webui) / "sd15.safetensors"), write_slim_copy(webui), render=render)
    assert loaded_name(webui) == "user.safetensors"
    assert not webui.module("call_queue").queue_lock.locked()
    md, a, b = sc().compare_outputs((str(ckpt_dir(webui) / "sd15.safetensors"), write_slim_copy(webui)))
    assert md.startswith("**Test image:**") and a is not None and b is not None


def test_render_detects_a_model_switched_away(webui, monkeypatch):
    sd_models = webui.module("sd_models")
    monkeypatch.setattr(sd_models, "reload_model_weights", lambda sd_model=None, info=None, forced_reload=False: None)
    with pytest.raises(sc().CompareError, match="did not load"):
        sc().render_test_image(sd_models.get_closet_checkpoint_match("sd15.safetensors"))


def test_gradio_handler_messages(webui, tmp_path):
    md, a, b = sc().compare_outputs(None)
    assert "slim a checkpoint first" in md and a is None and b is None
    md, a, b = sc().compare_outputs((str(ckpt_dir(webui) / "sd15.safetensors"),
                                     write_slim_copy(webui, folder=tmp_path / "out_dir")))
    assert md.startswith("**Compare failed:**") and "out\\_dir" in md and a is None
    assert loaded_name(webui) == "user.safetensors"


def test_panel_remembers_the_pair_only_after_a_successful_slim(webui, monkeypatch):
    panel = sys.modules.get("lib_accel.webui.slim.panel") or __import__(
        "lib_accel.webui.slim.panel", fromlist=["x"])
    src = str(ckpt_dir(webui) / "sd15.safetensors")
    monkeypatch.setattr(panel, "slim_markdown", lambda *a, **k: "**Done:** ok")
    md, pair = panel.slim_and_remember(src, True, "fp16", "None")
    assert pair == (src, str(ckpt_dir(webui) / "sd15.slim-fp16.safetensors"))
    monkeypatch.setattr(panel, "slim_markdown", lambda *a, **k: "**Error:** no")
    assert panel.slim_and_remember(src, True, "fp16", None) == ("**Error:** no", None)


def test_a_settings_change_during_the_comparison_does_not_deadlock(webui):
    """The comparison holds the queue lock and says so: Accel's own settings handling (which takes that lock
    for weight conversions) applies inline instead of waiting on the comparison that called it."""
    from lib_accel.webui import extension
    done = threading.Event()

    def render(info):
        webui.opts.set("accel_unet_dtype", "bf16")  # a reload inside the comparison would do the same
        extension.get().on_settings_changed()
        return torch.zeros(2, 2, 3, dtype=torch.uint8)

    t = threading.Thread(target=lambda: (sc().compare_checkpoints(
        str(ckpt_dir(webui) / "sd15.safetensors"), write_slim_copy(webui), render=render), done.set()), daemon=True)
    t.start()
    t.join(30)
    assert done.is_set(), "the comparison deadlocked on the queue lock it holds"
