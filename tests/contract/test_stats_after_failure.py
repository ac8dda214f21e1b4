"""A generation that raises ends the live stats' image: /accel/v1/stats stops saying running: true."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]


def test_a_failed_generation_is_not_reported_as_running(fake_webui, tmp_path):
    fake_webui.add_checkpoint("model.safetensors")
    fake_webui.load_extension(ROOT)
    app = fake_webui.start()
    sys.modules["lib_accel.webui.extension"].get().root = str(tmp_path)
    from lib_accel.webui import live_stats
    stats = live_stats.get()
    client = TestClient(app)
    model = fake_webui.load_model("model.safetensors")

    def broken_decode(x):  # the VAE fails after every sampler step ran (say, out of memory)
        raise RuntimeError("CUDA out of memory (test)")

    model.decode_first_stage = broken_decode
    runner = fake_webui.module("scripts").scripts_txt2img  # as the WebUI runs txt2img: accel_infotext's
    with pytest.raises(RuntimeError, match="out of memory"):  # process_batch opens the image, no postprocess
        fake_webui.txt2img(steps=3, scripts=runner)
    generation = client.get("/accel/v1/stats").json()["generation"]
    assert generation["running"] is False, "the failed generation still shows as running"
    assert generation["current_image"] is None
    assert generation["last_image"]["complete"] is False and generation["last_image"]["passes"][0]["calls"] == 3

    del model.decode_first_stage  # the next generation works and is timed as usual
    fake_webui.txt2img(steps=2, scripts=runner)
    summary = stats.snapshot()["generation"]["last_image"]
    assert summary["complete"] is True and [p["calls"] for p in summary["passes"]] == [2]
    assert client.get("/accel/v1/stats").json()["generation"]["last_image"] == summary


def test_failure_hook_is_undone_with_every_other_accel_patch(fake_webui, tmp_path):
    fake_webui.load_extension(ROOT)
    fake_webui.start()
    from modules import processing, script_callbacks

    from lib_accel.webui import live_stats
    assert live_stats.get().failure_hook == ""
    assert getattr(processing.process_images_inner, "accel_generation", False)
    script_callbacks.script_unloaded_callback()
    assert not hasattr(processing.process_images_inner, "accel_generation")
