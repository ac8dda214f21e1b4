"""scripts/accel_infotext.py runs inside the fake WebUI's ScriptRunner the way v1.10.1 runs it: ``process_batch``
opens each image (before the text encoder), ``postprocess_batch`` closes it (after the VAE decode, before the
infotext). Each hook is checked by an effect only it has, so a hook the runner no longer calls fails here."""

from __future__ import annotations

import sys

import pytest
from accel_boot import start_with_checkpoints


@pytest.fixture
def webui(fake_webui, tmp_path):
    return start_with_checkpoints(fake_webui, tmp_path, "sd1")


def generation(webui) -> dict:
    return sys.modules["lib_accel.webui.live_stats"].get().snapshot()["generation"]


def generate(webui, **kwargs):
    return webui.txt2img(scripts=webui.module("scripts").scripts_txt2img, steps=2, **kwargs)


def test_each_batch_is_one_image_opened_by_process_batch_and_closed_by_postprocess_batch(webui):
    before = generation(webui)["images"]
    generate(webui, n_iter=2)
    stats = generation(webui)
    assert stats["images"] == before + 2
    last = stats["last_image"]
    assert last["complete"], "postprocess_batch closed the image (else the next batch closes it incomplete)"
    assert last["stages"]["vae_decode"] > 0, "the decode is timed only inside an image process_batch opened"
    assert not stats["running"] and stats["current_image"] is None


def test_without_the_script_runner_no_image_is_opened(webui):
    """The control: the same generation without ``p.scripts`` (no Script hooks) times no VAE stage, so the test
    above measures the hooks, not something else."""
    webui.txt2img(steps=2)
    last = generation(webui)["last_image"]
    assert last is None or last["stages"]["vae_decode"] == 0


def test_an_exception_in_a_hook_is_reported_and_the_image_still_comes_out(webui, monkeypatch):
    """v1.10.1's ScriptRunner wraps every hook call in errors.report and goes on."""
    scripts, errors = webui.module("scripts"), webui.module("errors")
    [hooks] = [s for s in scripts.scripts_txt2img.alwayson_scripts if type(s).__name__ == "AccelImageHooks"]
    monkeypatch.setattr(type(hooks), "process_batch", lambda self, p, *args, **kwargs: 1 / 0)
    res = generate(webui)
    assert res.images and any("process_batch" in str(r) for r in errors.exception_records)
