"""The compile state Accel shows is what is installed now, and each transition is logged once (issue 12).

Driven through the fake WebUI like a user would: checkpoint switches, precision changes, settings, Reload UI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRANSITIONS = (" runs compiled (", " runs eager (", " not compiled: ")


@pytest.fixture
def webui(fake_webui, tmp_path):
    fake_webui.add_checkpoint("sd15.safetensors", kind="sd1")
    fake_webui.add_checkpoint("other15.safetensors", kind="sd1", seed=2)
    fake_webui.add_checkpoint("sdxl.safetensors", kind="sdxl", seed=1)
    fake_webui.load_extension(ROOT)
    fake_webui.start()
    accel().root = str(tmp_path)
    fake_webui.load_model("sd15.safetensors")
    return fake_webui


def accel():
    return sys.modules["lib_accel.webui.extension"].get()


def title(webui, name):
    return webui.module("sd_models").get_closet_checkpoint_match(name).title


def snapshot(webui):
    return accel().compiler.snapshot(webui.load_model())


def enable(webui, *names, backend="eager"):
    webui.set_option("accel_compile_backend", backend)
    webui.set_option("accel_compile_prewarm", "")
    webui.set_option("accel_compile_background", False)
    webui.set_option("accel_compile_checkpoints", [title(webui, n) for n in names])
    webui.set_option("accel_compile_enabled", True)


def shown(state: dict) -> tuple[str, str]:
    return state["status"], state["reason"]


def transitions(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[Accel] compile: ")
            and any(part in line for part in TRANSITIONS)]


def test_labels_name_the_dtype_so_two_precisions_are_two_labels(webui, capsys):
    from lib_accel.webui.compile.panel import compile_md
    enable(webui, "sd15.safetensors")
    webui.txt2img(width=64, height=64, steps=2)
    webui.set_option("accel_unet_dtype", "bf16")
    webui.txt2img(width=64, height=64, steps=2)
    shapes = snapshot(webui)["loaded"]["shapes"]
    labels = [s["label"] for s in shapes]
    assert sorted(labels) == ["64x64, UNet batch 2, bf16", "64x64, UNet batch 2, fp32"], labels
    assert all(s["status"] == "ready" and s["calls"] == 1 for s in shapes), shapes  # step 1 compiled it
    log = capsys.readouterr().out
    for label in labels:
        assert f": {label} ready in " in log, log
    text = compile_md(snapshot(webui))
    assert "64x64, UNet batch 2, fp32 | ready" in text and "64x64, UNet batch 2, bf16 | ready" in text


def test_checkpoints_not_loaded_show_what_would_happen_now(webui):
    a, b, xl = (title(webui, n) for n in ("sd15.safetensors", "other15.safetensors", "sdxl.safetensors"))
    webui.load_model("other15.safetensors")
    webui.load_model("sd15.safetensors")
    states = snapshot(webui)["checkpoints"]
    assert shown(states[a]) == shown(states[b]) == ("eager", "compile is off")
    from lib_accel.webui.compile.panel import compile_md
    text = compile_md(snapshot(webui)).replace("\\", "")
    assert f"**Loaded UNet:** {a}: eager (compile is off)" in text and f"| {a} (loaded) | eager |" in text, text
    enable(webui, "sd15.safetensors")
    states = snapshot(webui)["checkpoints"]
    assert shown(states[b]) == ("eager", "not in the compile whitelist"), "B was seen while compile was off"
    assert list(states)[0] == a and shown(states[a]) == ("compiled", "")
    assert states[a]["loaded"] is True and states[b]["loaded"] is False
    assert xl not in states, "neither loaded this session nor whitelisted"
    webui.set_option("accel_compile_checkpoints", [a, b, xl, "gone.safetensors [0123456789]"])
    states = snapshot(webui)["checkpoints"]
    for name in (b, xl):
        assert states[name] == {"status": "will compile", "reason": "compiles when it is loaded", "loaded": False}
    assert states["gone.safetensors [0123456789]"]["status"] == "not found"
    webui.set_option("accel_compile_backend", "no-such-backend")  # what refuses any checkpoint shows for all
    states = snapshot(webui)["checkpoints"]
    assert states[a]["status"] == "refused" and "no-such-backend" in states[a]["reason"]
    assert states[b]["status"] == "refused" and "no-such-backend" in states[b]["reason"]
    webui.set_option("accel_compile_backend", "eager")
    webui.set_option("accel_compile_enabled", False)
    states = snapshot(webui)["checkpoints"]
    assert {s["reason"] for s in states.values() if s["status"] != "not found"} == {"compile is off"}


def test_loaded_names_the_checkpoint_loaded_now_and_why_it_runs_eager(webui):
    from lib_accel.webui.compile.panel import compile_md
    a, b = title(webui, "sd15.safetensors"), title(webui, "other15.safetensors")
    enable(webui, "sd15.safetensors")
    webui.txt2img(width=64, height=64, steps=2)
    loaded = snapshot(webui)["loaded"]
    assert (loaded["name"], loaded["installed"], len(loaded["shapes"])) == (a, True, 1)
    webui.load_model("other15.safetensors")  # same architecture: the same UNet object, A's graphs on it
    state = snapshot(webui)
    loaded = state["loaded"]
    assert loaded["name"] == b and not loaded["installed"]
    assert loaded["shapes"] == [], "A's graph does not run for B"
    assert (loaded["status"], loaded["reason"]) == ("eager", "not in the compile whitelist")
    assert loaded["kept"] == 1, "A's graph is kept for a switch back"
    text = compile_md(state)
    assert f"**Loaded UNet:** {b}: eager (not in the compile whitelist)" in text.replace("\\", ""), text
    webui.load_model("sd15.safetensors")
    loaded = snapshot(webui)["loaded"]
    assert (loaded["name"], loaded["status"], loaded["installed"]) == (a, "compiled", True)
    assert [s["status"] for s in loaded["shapes"]] == ["ready"]


def test_every_transition_is_logged_once(webui, capsys):
    a, b = title(webui, "sd15.safetensors"), title(webui, "other15.safetensors")
    capsys.readouterr()
    webui.load_model("other15.safetensors")  # compile off: switching is no transition
    webui.load_model("sd15.safetensors")
    enable(webui, "sd15.safetensors")
    webui.set_option("accel_compile_cache_limit", 6)  # a setting that changes nothing shown
    webui.load_model("other15.safetensors")
    webui.load_model("sd15.safetensors")  # switch back to a compiled checkpoint
    webui.set_option("accel_compile_enabled", False)
    webui.set_option("accel_compile_enabled", True)  # re-enable
    webui.set_option("accel_compile_backend", "no-such-backend")
    webui.set_option("accel_compile_prewarm", "")  # still refused, for the same reason: no second line
    webui.set_option("accel_compile_backend", "eager")
    compiled = f"[Accel] compile: {a} runs compiled (default, eager, static shapes)"
    lines = transitions(capsys.readouterr().out)
    assert lines[:5] == [compiled, f"[Accel] compile: {b} runs eager (not in the compile whitelist)", compiled,
                         f"[Accel] compile: {a} runs eager (compile is off)", compiled], lines
    assert len(lines) == 7 and lines[5].startswith(f"[Accel] compile: {a} not compiled: "), lines
    assert "no-such-backend" in lines[5] and lines[6] == compiled, lines


def test_reload_ui_logs_a_load_line_for_the_unload_line(webui, capsys):
    a = title(webui, "sd15.safetensors")
    enable(webui, "sd15.safetensors")
    webui.set_option("accel_nan_check", "full")
    for _ in range(2):
        capsys.readouterr()
        webui.reload_ui()
        log = capsys.readouterr().out.splitlines()
        unloaded = [line for line in log if line.startswith("[Accel] unloaded: ")]
        loaded = [line for line in log if line.startswith("[Accel] loaded: ")]
        assert len(unloaded) == 1 and len(loaded) == 1, log
        assert log.index(unloaded[0]) < log.index(loaded[0])
        undone = int(unloaded[0].split()[2])
        assert undone > 0 and loaded[0] == f"[Accel] loaded: {undone} patch(es) applied", log
        assert accel().patches.count() == undone
        assert transitions("\n".join(log)) == [f"[Accel] compile: {a} runs compiled (default, eager, static shapes)"]
