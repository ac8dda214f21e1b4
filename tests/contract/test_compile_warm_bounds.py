"""Pre-warming is bounded: sizes and batch the WebUI can generate, a few sizes per request and waiting, inputs
built on the worker thread, and a warm request never leaves a size "over limit" for good."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from accel_boot import block_worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def webui(fake_webui, tmp_path):
    fake_webui.add_checkpoint("sd15.safetensors", kind="sd1")
    fake_webui.load_extension(ROOT)
    fake_webui.start()
    ext = sys.modules["lib_accel.webui.extension"].get()
    ext.root = str(tmp_path)
    model = fake_webui.load_model("sd15.safetensors")
    title = fake_webui.module("sd_models").get_closet_checkpoint_match("sd15.safetensors").title
    fake_webui.set_option("accel_compile_backend", "eager")
    fake_webui.set_option("accel_compile_prewarm", "")
    fake_webui.set_option("accel_compile_background", True)
    fake_webui.set_option("accel_compile_cache_dir", str(tmp_path / "cache"))
    fake_webui.set_option("accel_compile_checkpoints", [title])
    fake_webui.set_option("accel_compile_enabled", True)
    compiled = model.model.diffusion_model._accel_compiled
    assert compiled.installed
    return SimpleNamespace(ui=fake_webui, ext=ext, model=model, compiled=compiled)


def test_sizes_and_batch_beyond_what_the_webui_generates_are_refused(webui):
    warm = webui.ext.compiler.warm
    for bad, why in (("2048x2048x64", "batch must be 1..8"), ("16384x512x1", "sides must be multiples of 8"),
                     ("9" * 5000 + "x512", "bad shape bucket")):
        with pytest.raises(ValueError, match=why) as error:
            warm(webui.model, bad)
        assert len(str(error.value)) < 300, "the error must not echo a huge entry back"
    assert webui.compiled.snapshot()["shapes"] == []


def test_a_request_names_at_most_16_sizes(webui):
    sizes = ", ".join(f"{64 + 8 * i}x64x1" for i in range(17))
    with pytest.raises(ValueError, match="at most 16"):
        webui.ext.compiler.warm(webui.model, sizes)
    with pytest.raises(ValueError, match="at most 16"):
        webui.ext.compiler.warm(webui.model, ", ".join(["64x64x1"] * 5000))
    assert webui.compiled.worker.join(60) and webui.compiled.snapshot()["shapes"] == []


def test_inputs_are_built_on_the_worker_thread_not_in_the_request(webui, monkeypatch):
    from lib_accel.webui.compile import warm_queue
    threads = []
    real = warm_queue.example_call

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(warm_queue, "example_call", spy)
    assert webui.ext.compiler.warm(webui.model, "64x64x1, 64x128x1") == ["64x64x1", "64x128x1"]
    assert webui.compiled.worker.join(120) and webui.compiled.wait_idle(10)
    assert threads == [webui.compiled.worker.name] * 2
    assert {s["status"] for s in webui.compiled.snapshot()["shapes"]} == {"ready"}


def test_waiting_sizes_are_bounded_and_deduplicated(webui):
    blocker = block_worker(webui.compiled)
    try:
        sizes = [f"{w}x{h}x1" for w in (64, 128, 192, 256) for h in (64, 128, 192, 256)]  # the fake UNet: 64s
        webui.ext.compiler.warm(webui.model, ", ".join(sizes[:10]))
        webui.ext.compiler.warm(webui.model, ", ".join(sizes))  # 10 of them already wait: 6 new
        with pytest.raises(RuntimeError, match="at most 16 may wait"):
            webui.ext.compiler.warm(webui.model, "320x64x1")
        assert webui.compiled.worker.pending() <= 2, "sizes wait as text, not as queued tensors"
    finally:
        blocker.release.set()
    assert webui.compiled.worker.join(300) and webui.compiled.wait_idle(10)
    labels = [s["label"] for s in webui.compiled.snapshot()["shapes"]]
    assert len(labels) == 6 == len(set(labels)), "each size once, up to the limit of 8 less 2 kept for generations"


def _statuses(compiled) -> dict[str, str]:
    # "64x64, UNet batch 2" (labels may go on with the compute dtype, prompt tokens, ...)
    return {", ".join(s["label"].split(", ")[:2]): s["status"] for s in compiled.snapshot()["shapes"]}


def test_warm_requests_never_mark_a_size_over_limit(webui):
    webui.ui.set_option("accel_compile_cache_limit", 3)
    compiled = webui.model.model.diffusion_model._accel_compiled
    webui.ext.compiler.warm(webui.model, "64x64x1, 64x128x1, 128x64x1")
    assert compiled.worker.join(120) and compiled.wait_idle(10)
    assert _statuses(compiled) == {"64x64, UNet batch 2": "ready", "64x128, UNet batch 2": "ready"}


def test_warm_requests_leave_room_for_the_sizes_images_use(webui):
    """Warm requests are not generations: however many arrive, the size an image later uses is compiled, not
    marked "over limit" because warmed sizes nobody generates took every slot."""
    webui.ui.set_option("accel_compile_cache_limit", 4)
    compiled = webui.model.model.diffusion_model._accel_compiled
    for sizes in ("64x64x1, 64x128x1", "128x64x1, 128x128x1", "192x64x1, 64x192x1"):
        webui.ext.compiler.warm(webui.model, sizes)
        assert compiled.worker.join(120) and compiled.wait_idle(10)
    assert list(_statuses(compiled).values()) == ["ready"] * 3, "a quarter of the limit (one slot) is kept"
    assert webui.ui.txt2img(width=192, height=192, steps=2).images
    assert compiled.worker.join(120) and compiled.wait_idle(10)
    assert _statuses(compiled)["192x192, UNet batch 2"] == "ready"
    assert "over limit" not in _statuses(compiled).values()


def test_the_prewarm_setting_may_use_the_whole_limit(webui):
    """The user's own pre-warm list is not a request from elsewhere: it may fill every slot."""
    webui.ui.set_option("accel_compile_cache_limit", 2)
    webui.ui.set_option("accel_compile_prewarm", "64x64x1, 64x128x1")
    compiled = webui.ui.load_model().model.diffusion_model._accel_compiled
    assert compiled.worker.join(120) and compiled.wait_idle(10)
    assert _statuses(compiled) == {"64x64, UNet batch 2": "ready", "64x128, UNet batch 2": "ready"}


def test_the_route_answers_floods_with_a_400_and_queues_nothing(webui):
    """POST compile/warm as a client sends it: thousands of sizes or a batch the WebUI cannot generate are a 400
    naming the limit (no log line per size), and nothing waits afterwards."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    client = TestClient(webui.ui.app)
    logged = []
    webui.ext.log = logged.append
    guard = {"Content-Type": "application/json", "X-Accel-Request": "1"}
    for sizes, why in ((", ".join(["64x64x1"] * 3000), "at most 16"), ("2048x2048x64, " * 8, "batch must be 1..8")):
        res = client.post("/accel/v1/compile/warm", json={"sizes": sizes}, headers=guard)
        assert res.status_code == 400 and why in res.json()["error"], res.text[:300]
    res = client.post("/accel/v1/compile/warm", content='{"sizes": "' + "64x64x1," * 9000 + '"}', headers=guard)
    assert res.status_code == 413  # past the 64 KiB body limit: not even read
    assert logged == [] and webui.ext.compiler.warmer.pending() == 0
    assert webui.compiled.worker.join(60) and webui.compiled.snapshot()["shapes"] == []
