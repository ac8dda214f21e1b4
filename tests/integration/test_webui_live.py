"""Tier 3: the extension inside a real WebUI checkout (ACCEL_WEBUI_DIR), on CPU, over the HTTP API.

Skipped, with the reason shown in pytest's summary, when ACCEL_WEBUI_DIR is not set. See
webui_process.py for the other variables and README.md for how to prepare a checkout.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

WEBUI_DIR = os.environ.get("ACCEL_WEBUI_DIR")
if not WEBUI_DIR:
    pytest.skip("ACCEL_WEBUI_DIR is not set: no real WebUI checkout to run the integration tier against",
                allow_module_level=True)

from webui_process import WebUI  # noqa: E402

from lib_accel.webui.optimizations import SPECS, spec_reasons  # noqa: E402

pytestmark = pytest.mark.integration
PNG = b"\x89PNG\r\n\x1a\n"
TRACEBACK = re.compile(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)+\S.*")


def accel_tracebacks(log: str) -> list[str]:
    """Tracebacks that pass through Accel's code (the WebUI logs unrelated ones, e.g. a repo without origin)."""
    return [tb for tb in TRACEBACK.findall(log) if "lib_accel" in tb or "accel.py" in tb or "already applied" in tb]
RUNNABLE_HERE = [s.name for s in SPECS if not spec_reasons(s)]


@pytest.fixture(scope="module")
def webui():
    root = Path(WEBUI_DIR).resolve()
    if not (root / "launch.py").exists():
        pytest.fail(f"ACCEL_WEBUI_DIR={root} has no launch.py")
    # outside pytest's rotating basetemp, so the log survives for reading after the run
    ui = WebUI(root, Path(tempfile.mkdtemp(prefix="accel-webui-")))
    try:
        ui.start()
        ui.txt2img()  # first request loads the model
        yield ui
    finally:
        ui.stop()
        print(f"\nWebUI log: {ui.log_path}")


def test_extension_loads_settings_and_no_errors(webui):
    options = webui.get("/sdapi/v1/options")
    accel = {k: v for k, v in options.items() if k.startswith("accel_")}
    assert {"accel_channels_last", "accel_nan_check", "accel_tf32", "accel_cudnn_benchmark"} <= set(accel)
    log = webui.log_text()
    assert "Error loading script: accel" not in log
    assert not accel_tracebacks(log), accel_tracebacks(log)


@pytest.mark.parametrize("title", RUNNABLE_HERE)
def test_each_optimization_applies_and_generates(webui, title):
    mark = webui.log_mark()
    webui.set_options(cross_attention_optimization=title)
    images, info = webui.txt2img(seed=7)
    assert images and images[0].startswith(PNG)
    log = webui.log_since(mark)
    assert f"Applying attention optimization: {title}... done." in log, log[-3000:]
    assert not accel_tracebacks(log), log[-3000:]
    if title == "Accel auto":
        assert "[Accel] auto:" in webui.log_text(), "auto must measure (or reuse) a choice per attention shape"


def test_accel_kernels_agree_with_each_other(webui):
    """Same seed, same image (within float noise) whichever Accel kernel runs."""
    import io

    from PIL import Image, ImageChops

    pics = {}
    for title in ("Accel SDPA math", "Accel chunked (low memory)"):
        if title in RUNNABLE_HERE:
            webui.set_options(cross_attention_optimization=title)
            pics[title] = Image.open(io.BytesIO(webui.txt2img(seed=11)[0][0])).convert("RGB")
    if len(pics) < 2:
        pytest.skip("needs two runnable Accel kernels")
    a, b = pics.values()
    assert max(hi for _, hi in ImageChops.difference(a, b).getextrema()) <= 3


def test_runtime_settings_apply_without_restart(webui):
    mark = webui.log_mark()
    webui.set_options(accel_nan_check="full", accel_cudnn_benchmark="on")
    images, _ = webui.txt2img()
    assert images[0].startswith(PNG)
    log = webui.log_since(mark)
    assert "[Accel]" in log and "NaN check: full" in log and "benchmark = True" in log, log[-2000:]
    webui.set_options(accel_nan_check="default", accel_cudnn_benchmark="default")
    assert "benchmark restored to False" in webui.log_since(mark)


def test_reload_ui_twice_leaves_one_patch_and_keeps_working(webui):
    webui.set_options(cross_attention_optimization="Accel SDPA math", accel_nan_check="full")
    for _ in range(2):
        mark = webui.log_mark()
        webui.reload_ui()
        images, _ = webui.txt2img()
        assert images[0].startswith(PNG)
        log = webui.log_since(mark)
        assert log.count("[Accel] unloaded:") == 1, log[-3000:]
        assert not accel_tracebacks(log), log[-3000:]
        assert "Applying attention optimization: Accel SDPA math... done." in log, log[-3000:]
    webui.set_options(accel_nan_check="default", cross_attention_optimization="Automatic")
