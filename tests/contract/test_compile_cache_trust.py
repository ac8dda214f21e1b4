"""The compile cache folder through the real routes of the fake WebUI v1.10.1: clearing never deletes what Accel
did not write, whatever ``accel_compile_cache_dir`` names; no clear while any compile runs or waits; the size is
not walked on every poll; checkpoint titles are escaped in the compile panel."""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from accel_boot import Blocker

pytest.importorskip("fastapi")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
GUARD = {"Content-Type": "application/json", "X-Accel-Request": "1"}


@pytest.fixture
def webui(fake_webui, tmp_path, monkeypatch):
    """The WebUI runs in its install folder (models/ inside, as in the real one); the extension lives elsewhere."""
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    home = Path(fake_webui.data_dir)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    fake_webui.add_checkpoint("sd15.safetensors", kind="sd1")
    fake_webui.add_checkpoint("sdxl.safetensors", kind="sdxl", seed=1)
    (home / "models" / "Lora").mkdir(parents=True)
    (home / "models" / "Lora" / "style.safetensors").write_bytes(b"L" * 1000)
    (home / "models" / "ab").mkdir()  # a name that looks like inductor's
    (home / "models" / "ab" / "notes.txt").write_text("mine")
    fake_webui.load_extension(ROOT)
    app = fake_webui.start()
    ext = sys.modules["lib_accel.webui.extension"].get()
    ext.root = str(tmp_path / "ext")
    os.makedirs(ext.root)
    Path(ext.root, "install.py").write_text("# the extension's own files")
    fake_webui.load_model("sd15.safetensors")
    return SimpleNamespace(ui=fake_webui, ext=ext, client=TestClient(app), home=home)


def post(client, path: str, body: dict | None = None):
    return client.post(f"/accel/v1/{path}", content=json.dumps(body or {}), headers=GUARD)


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def still_there(before: dict[str, bytes], folder: Path) -> None:
    after = files_under(folder)
    missing = [name for name in before if after.get(name) != before[name]]
    assert missing == [], f"deleted or changed: {missing[:10]}"


def enable(ui, *names, background=False):
    sd_models = ui.module("sd_models")
    ui.set_option("accel_compile_backend", "eager")
    ui.set_option("accel_compile_prewarm", "")
    ui.set_option("accel_compile_background", background)
    ui.set_option("accel_compile_checkpoints", [sd_models.get_closet_checkpoint_match(n).title for n in names])
    ui.set_option("accel_compile_enabled", True)


@pytest.mark.parametrize("setting", ["models", ".", "~", "ABSOLUTE_MODELS", "ABSOLUTE_EXT"])
def test_post_clear_never_deletes_the_users_files(webui, setting):
    """The setting pointed at the models folder, the home folder, the extension folder or '.': nothing is deleted."""
    value = {"ABSOLUTE_MODELS": str(webui.home / "models"), "ABSOLUTE_EXT": webui.ext.root}.get(setting, setting)
    webui.ui.set_option("accel_compile_cache_dir", value)
    before, ext_before = files_under(webui.home), files_under(Path(webui.ext.root))
    res = post(webui.client, "compile/cache/clear")
    still_there(before, webui.home)
    still_there(ext_before, Path(webui.ext.root))
    if setting == "models":  # relative: the extension folder's models/, which does not exist
        assert res.status_code == 200 and res.json()["dir"] == os.path.join(webui.ext.root, "models"), res.json()
        assert res.json()["freed_bytes"] == 0
    else:
        assert res.status_code == 409 and "not created by Accel" in res.json()["error"], res.json()


def test_compile_goes_on_without_adopting_a_foreign_folder(webui):
    models = webui.home / "models"
    webui.ui.set_option("accel_compile_cache_dir", str(models))
    before = sorted(p.name for p in models.iterdir())
    enable(webui.ui, "sd15.safetensors")
    state = webui.client.get("/accel/v1/compile").json()
    assert state["loaded"]["installed"] and list(state["checkpoints"].values())[0]["status"] == "compiled"
    assert "not created by Accel" in state["cache"]["refused"] and state["cache"]["bytes"] == 0
    assert sorted(p.name for p in models.iterdir()) == before, "no marker, no precompiled/ written there"
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(models)


def test_home_is_expanded_and_a_new_folder_is_marked(webui, monkeypatch):
    monkeypatch.setenv("HOME", str(webui.home / "user"))
    webui.ui.set_option("accel_compile_cache_dir", "~/compile-cache")
    enable(webui.ui, "sd15.safetensors")
    folder = webui.home / "user" / "compile-cache"
    assert (folder / ".accel-cache").is_file() and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder)
    assert not (webui.home / "~").exists(), "no folder literally named ~ in the WebUI's working directory"
    assert webui.client.get("/accel/v1/compile").json()["cache"]["dir"] == str(folder)


def test_a_changed_setting_leaves_the_old_folder_alone(webui, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    webui.ui.set_option("accel_compile_cache_dir", str(old))
    enable(webui.ui, "sd15.safetensors")
    (old / "fxgraph").mkdir()
    (old / "fxgraph" / "graph.bin").write_bytes(b"g" * 64)
    webui.ui.set_option("accel_compile_cache_dir", str(new))
    assert (new / ".accel-cache").is_file() and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(new)
    res = post(webui.client, "compile/cache/clear")
    assert res.status_code == 200 and res.json()["dir"] == str(new)
    assert (old / "fxgraph" / "graph.bin").read_bytes() == b"g" * 64 and (old / ".accel-cache").is_file()


def test_no_clear_while_another_checkpoints_compile_waits(webui, tmp_path):
    webui.ui.set_option("accel_compile_cache_dir", str(tmp_path / "cache"))
    enable(webui.ui, "sd15.safetensors", "sdxl.safetensors", background=True)
    sd15 = webui.ui.load_model().model.diffusion_model._accel_compiled
    blocker = Blocker()
    sd15.worker.submit(blocker, SimpleNamespace(status="queued"), (), {})
    assert blocker.started.wait(30)
    try:
        assert post(webui.client, "compile/warm", {"sizes": "64x64x1"}).status_code == 200  # waits behind it
        sdxl = webui.ui.load_model("sdxl.safetensors").model.diffusion_model._accel_compiled
        assert sdxl is not sd15 and sdxl.installed and not sdxl.snapshot()["busy"]
        res = post(webui.client, "compile/cache/clear")
        assert res.status_code == 409 and "running or waiting" in res.json()["error"], res.json()
    finally:
        blocker.release.set()
    assert sd15.worker.join(120)
    assert post(webui.client, "compile/cache/clear").status_code == 200


def test_stats_and_panel_reads_do_not_walk_the_cache(webui, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    webui.ui.set_option("accel_compile_cache_dir", str(folder))
    enable(webui.ui, "sd15.safetensors", background=True)
    for i in range(50):
        (folder / "fxgraph" / f"{i:02}").mkdir(parents=True)
        (folder / "fxgraph" / f"{i:02}" / "entry").write_bytes(b"x" * 10)
    first = webui.client.get("/accel/v1/compile").json()["cache"]["bytes"]
    walked = []
    for name in ("scandir", "walk", "listdir"):
        real = getattr(os, name)

        def spy(path=".", *args, _real=real, **kwargs):
            walked.append(str(path))
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(os, name, spy)
    for _ in range(5):
        assert webui.client.get("/accel/v1/stats").status_code == 200
    for _ in range(3):
        assert webui.client.get("/accel/v1/compile").json()["cache"]["bytes"] == first
    monkeypatch.undo()
    assert [p for p in walked if p.startswith(str(folder))] == [], "polls and page loads re-walked the cache"
    assert first == 500
    (folder / "fxgraph" / "late").mkdir()
    (folder / "fxgraph" / "late" / "entry").write_bytes(b"y" * 7)
    assert webui.client.get("/accel/v1/compile").json()["cache"]["bytes"] == 500, "kept between compiles"
    assert webui.ext.compiler.cache_info(measure=True)["bytes"] == 507, "the panel's Refresh measures"
    (folder / "fxgraph" / "late" / "more").write_bytes(b"z" * 3)
    compiled = webui.ui.load_model().model.diffusion_model._accel_compiled
    assert post(webui.client, "compile/warm", {"sizes": "64x64x1"}).status_code == 200
    assert compiled.worker.join(120) and compiled.wait_idle(10)
    assert webui.client.get("/accel/v1/compile").json()["cache"]["bytes"] == 510, "measured after a compile"
    assert post(webui.client, "compile/cache/clear").json()["freed_bytes"] == 510
    assert webui.client.get("/accel/v1/compile").json()["cache"]["bytes"] == 0, "measured after a clear"


def test_checkpoint_titles_are_escaped_in_the_compile_panel():
    from lib_accel.webui.compile.panel import compile_md
    title = "<img src=x onerror=alert(1)> | **bold** [link](http://x) [abc123]"
    text = compile_md({"support": {"available": True}, "loaded": None,
                       "checkpoints": {title: {"status": "refused", "reason": "a | b <script>"}},
                       "cache": {"dir": "/tmp/a_b", "bytes": 0}})
    row = next(line for line in text.splitlines() if "onerror" in line)
    for markup in (r"<img", r"<script", r"\*\*bold", r"\]\(http"):
        assert not re.search(r"(?<!\\)" + markup, text), f"unescaped {markup!r} in {text}"
    assert row.replace("\\|", "").count("|") == 4, f"the title and reason stay in their cells: {row}"
