"""Tier 3: precision settings and the benchmark (HTTP CLI and the tab's components) in a real WebUI.

Skipped, with the reason, when ACCEL_WEBUI_DIR is not set (see test_webui_live.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

WEBUI_DIR = os.environ.get("ACCEL_WEBUI_DIR")
if not WEBUI_DIR:
    pytest.skip("ACCEL_WEBUI_DIR is not set: no real WebUI checkout to run the integration tier against",
                allow_module_level=True)

from test_webui_live import accel_tracebacks  # noqa: E402
from webui_process import WebUI  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def webui():
    ui = WebUI(Path(WEBUI_DIR).resolve(), Path(tempfile.mkdtemp(prefix="accel-webui-bench-")))
    try:
        ui.start()
        ui.txt2img()
        yield ui
    finally:
        ui.stop()
        print(f"\nWebUI log: {ui.log_path}")


def test_bf16_unet_and_vae_in_the_real_webui(webui):
    """The real ldm UNet (GroupNorm32, float32 timestep embedding, h.type(self.dtype)) runs in bf16 on CPU."""
    base, _ = webui.txt2img(width=64, height=64, steps=2, seed=11)
    webui.set_options(accel_unet_dtype="bf16", accel_vae_dtype="bf16")
    runtime = webui.get("/accel/v1/info")["runtime"]
    assert runtime["dtypes"] == {"unet": "bfloat16", "vae": "bfloat16"}, runtime
    images, _ = webui.txt2img(width=64, height=64, steps=2, seed=11)
    assert images and images[0] != base[0]
    mark = webui.log_mark()
    webui.set_options(accel_unet_dtype="default", accel_vae_dtype="default")
    assert "reloading the checkpoint's weights" in webui.log_since(mark)
    again, _ = webui.txt2img(width=64, height=64, steps=2, seed=11)
    assert again[0] == base[0]  # back to the WebUI's exact fp32 weights
    assert not accel_tracebacks(webui.log_text())


def test_bench_webui_cli_against_the_real_api(webui, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "lib_accel", "bench", "webui", "--url", webui.url, "--attention",
           "Accel auto,Accel SDPA math", "--precision", "default,bf16", "--size", "64x64", "--steps", "2",
           "--repeats", "1", "--warmup", "1", "--out-json", str(out)]
    before = webui.get("/sdapi/v1/options")
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    print(result.stdout[-3000:], result.stderr[-2000:])
    assert result.returncode == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["status"] for r in rows] == ["ok"] * 4, rows
    assert all(r["sampler_its"] and r["e2e_its"] and r["black"] is False for r in rows)
    assert rows[1]["max_abs"] <= 3  # another kernel, same math
    after = webui.get("/sdapi/v1/options")
    keys = ("cross_attention_optimization", "accel_unet_dtype", "accel_channels_last", "accel_compile_enabled")
    assert {k: after[k] for k in keys} == {k: before[k] for k in keys}


def test_tab_has_the_benchmark_panel(webui):
    config = webui.get("/config")
    ids = {c.get("props", {}).get("elem_id") for c in config.get("components", [])}
    assert {"accel-bench-run", "accel-bench-table", "accel-bench-chart", "accel-bench-apply"} <= ids
