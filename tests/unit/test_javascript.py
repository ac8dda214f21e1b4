"""javascript/accel.js parses, keeps to one closure, and its pure helpers format and escape correctly (node)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "javascript" / "accel.js"
NODE = shutil.which("node")


@pytest.fixture(autouse=True)
def _node_required():
    """node is a development requirement (README, Tests): without it these tests fail, they do not skip."""
    if NODE is None:
        pytest.fail("node is not on PATH: install Node.js (a development requirement, see README Tests)")

STATS = {
    "enabled": True,
    "generation": {"running": True, "step": 12, "total": 20, "pass": 1, "its": 3.2149, "images": 1,
                   "current_image": {"stages": {"text_encoder": 0.031, "unet": 0.0, "vae_decode": 0.0}, "rate": "-"},
                   "last_image": {"stages": {"text_encoder": 0.05, "unet": 6.2, "vae_decode": 0.41},
                                  "rate": "3.21 it/s"}},
    "memory": {"nvml": {"available": True, "name": "NVIDIA <b>", "memory_used": 5 * 1024 ** 3,
                        "memory_total": 24 * 1024 ** 3, "utilization": 97, "power_w": 215.5,
                        "power_limit_w": 450.0, "clock_sm_mhz": 2520, "temperature_c": 64},
               "torch": {"available": True, "allocated": 3 * 1024 ** 3, "reserved": 4 * 1024 ** 3,
                         "peak_allocated": 4.5 * 1024 ** 3},
               "ram": {"available": True, "process_rss": 5 * 1024 ** 3, "total": 64 * 1024 ** 3,
                       "free": 40 * 1024 ** 3}},
    "vram": {"kind": "VRAM", "used": 5 * 1024 ** 3, "total": 24 * 1024 ** 3, "source": "nvml"},
    "stages_missing": {"vae_decode": "modules.processing.decode_latent_batch not found"},
}

PROBE = """
const accel = require(process.argv[1]);
const stats = JSON.parse(process.argv[2]);
const cpu = JSON.parse(JSON.stringify(stats));
cpu.memory.nvml = {available: false, reason: "pynvml is not installed (pip package nvidia-ml-py)"};
cpu.memory.torch = {available: false, reason: "torch was built without CUDA"};
cpu.vram = {kind: "RAM", used: 4.9 * 1024 ** 3, total: 16 * 1024 ** 3, source: "/proc"};
cpu.generation.its = 0.35;
function el(display) { return {style: {display: display}}; }
function root(ids, progress) {
    return {querySelector: function(sel) {
        if (sel === "#txt2img_gallery_container") {
            return {parentNode: {querySelector: function(s) { return progress && s === ".progressDiv" ? {} : null; }}};
        }
        return ids[sel.slice(1)] || null;
    }};
}
console.log(JSON.stringify({
    rates: [accel.formatRate(3.2149), accel.formatRate(0.35), accel.formatRate(0), accel.formatRate(null),
            accel.formatRate(Infinity)],
    bytes: [accel.formatBytes(5 * 1024 ** 3), accel.formatBytes(300 * 1024 ** 2), accel.formatBytes(-1),
            accel.formatUsedTotal(5 * 1024 ** 3, 24 * 1024 ** 3),
            accel.formatUsedTotal(200 * 1024 ** 2, 512 * 1024 ** 2)],
    seconds: [accel.formatSeconds(0.031), accel.formatSeconds(6.2), accel.formatSeconds(undefined)],
    badge: accel.badgeText(stats), badgeCpu: accel.badgeText(cpu), badgeNone: accel.badgeText(null),
    badgeOff: accel.badgeText(Object.assign({}, stats, {enabled: false})),
    badgeCompiling: accel.badgeText(Object.assign({}, stats, {compile: "compiling 512x512, UNet batch 2 for 12 s"})),
    htmlCompiling: accel.renderStatsHtml(Object.assign({}, stats, {compile: "1 size(s) queued to compile"})),
    title: accel.badgeTitle(stats), status: accel.statusText(stats),
    html: accel.renderStatsHtml(stats), htmlCpu: accel.renderStatsHtml(cpu), htmlNone: accel.renderStatsHtml(null),
    escaped: accel.escapeHtml('<img src=x onerror="a">&\\''),
    running: [accel.jobRunning(root({txt2img_interrupt: el("block")}), "txt2img"),
              accel.jobRunning(root({txt2img_interrupt: el("none")}), "txt2img"),
              accel.jobRunning(root({txt2img_interrupting: el("block")}), "txt2img"),
              accel.jobRunning(root({}, true), "txt2img"),
              accel.jobRunning(root({}), "img2img")],
    url: accel.STATS_URL
}));
"""


def run_probe() -> dict:
    out = subprocess.run([NODE, "-e", PROBE, str(SCRIPT), json.dumps(STATS)], capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


def test_script_parses():
    subprocess.run([NODE, "--check", str(SCRIPT)], check=True, capture_output=True, timeout=60)


def test_script_defines_no_globals_and_uses_prefixed_ids():
    text = SCRIPT.read_text(encoding="utf-8")
    code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    top_level = [line for line in code.splitlines() if line and not line.startswith((" ", "}", "//", "(", "\t"))]
    assert top_level == [], top_level  # everything inside the IIFE
    for literal in re.findall(r'"(accel[-_][\w-]*)"', code) + re.findall(r'"#?(accel[-_][\w-]*)', code):
        assert literal.startswith("accel-"), literal
    assert '"./accel/v1/stats"' in code


def test_formatting():
    r = run_probe()
    assert r["rates"] == ["3.21 it/s", "2.86 s/it", "-", "-", "-"]
    assert r["bytes"] == ["5.0 GB", "300 MB", "-", "5.0/24.0 GB", "200/512 MB"]
    assert r["seconds"] == ["31 ms", "6.20 s", "-"]


def test_badge_and_tooltip():
    r = run_probe()
    assert r["badge"] == "3.21 it/s · VRAM 5.0/24.0 GB"
    assert r["badgeCpu"] == "2.86 s/it · RAM 4.9/16.0 GB"
    assert r["badgeNone"] == "Accel: …"
    assert r["badgeOff"] == "VRAM 5.0/24.0 GB"
    assert r["badgeCompiling"] == "3.21 it/s · VRAM 5.0/24.0 GB · compiling 512x512, UNet batch 2 for 12 s"
    assert "<th>Compile</th><td>1 size(s) queued to compile</td>" in r["htmlCompiling"]
    assert "<th>Compile</th><td>idle</td>" in r["html"]
    assert r["status"] == "running, step 12/20"
    assert "last image: text encoder 50 ms, UNet 6.20 s, VAE 410 ms (3.21 it/s)" in r["title"]
    assert "97% busy" in r["title"] and "215.5/450 W" in r["title"] and "2520 MHz" in r["title"]


def test_live_panel_html_is_escaped_and_explains_missing_pieces():
    r = run_probe()
    assert "NVIDIA &lt;b&gt;" in r["html"] and "<b>" not in r["html"]
    assert "allocated 3.0 GB, reserved 4.0 GB, peak 4.5 GB" in r["html"]
    assert "Stages not timed" in r["html"]
    assert "NVML: pynvml is not installed (pip package nvidia-ml-py)" in r["htmlCpu"]
    assert "torch: torch was built without CUDA" in r["htmlCpu"]
    assert r["htmlNone"] == "<p>No reading yet.</p>"
    assert r["escaped"] == "&lt;img src=x onerror=&quot;a&quot;&gt;&amp;&#39;"


def test_job_detection_follows_the_webui_buttons_and_progress_bar():
    assert run_probe()["running"] == [True, False, True, True, False]


def test_missing_node_fails_instead_of_skipping(tmp_path):
    """Run one of these tests with a PATH that has no node: it must fail (it used to be skipped)."""
    env = {**os.environ, "PATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                          "-k", "test_script_parses"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and "1 error" in out.stdout and "skipped" not in out.stdout, out.stdout[-2000:]
    assert "node is not on PATH" in out.stdout
