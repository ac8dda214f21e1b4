"""The JSON API under /accel/v1: routes on a bare FastAPI app (sources injected), the auth of its POST, the tab's
Markdown, and the real data sources end to end against the fake WebUI v1.10.1."""

from __future__ import annotations

import base64
import json
import sys
import warnings
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
with warnings.catch_warnings():  # newer starlette deprecates its httpx-based client; it is still the one to use
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from lib_accel.webui import api, ui_tab  # noqa: E402

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
from fakewebui import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
fake_webui = harness.fake_webui


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def make_app(credentials: dict | None = None, gradio_auth=None, tokens=None, **overrides):
    calls = []

    def clear():
        calls.append("clear")
        return {"cleared": 3, "reapplied": False, "note": ""}

    sources = api.ApiSources(stats=lambda: {"generation": {"its": 2.5}}, backends=lambda: {"kernels": []},
                             info=lambda: {"accel": "x"}, clear_cache=clear,
                             credentials=lambda: dict(credentials or {}), **overrides)
    app = fastapi.FastAPI()
    if gradio_auth is not None:  # what gradio's App carries when the WebUI runs with --gradio-auth
        app.auth, app.tokens = gradio_auth, dict(tokens or {})
    assert api.register_routes(app, sources) is True
    return app, TestClient(app), calls


def test_gets_serve_their_sources_uncached():
    app, client, _ = make_app()
    for name, expected in (("stats", {"generation": {"its": 2.5}}), ("backends", {"kernels": []}),
                           ("info", {"accel": "x"})):
        res = client.get(f"/accel/v1/{name}")
        assert res.status_code == 200 and res.json() == expected
        assert res.headers["cache-control"] == "no-store"
    assert client.post("/accel/v1/stats").status_code == 405
    assert client.get("/accel/v1/cache/clear").status_code == 405


def test_compile_is_an_honest_placeholder():
    _, client, _ = make_app()
    state = client.get("/accel/v1/compile").json()
    assert state["implemented"] is False and state["status"] == "not available in this version"
    assert state["checkpoints"] == {} and {"name", "available", "reason"} <= set(state["torch_compile"])


def test_a_failing_source_is_a_json_error():
    def broken():
        raise RuntimeError("NVML went away")
    app = fastapi.FastAPI()
    api.register_routes(app, api.ApiSources(stats=broken, backends=dict, info=dict, clear_cache=dict))
    res = TestClient(app).get("/accel/v1/stats")
    assert res.status_code == 500 and res.json() == {"error": "RuntimeError: NVML went away"}


def test_registering_twice_on_one_app_is_a_no_op():
    app, _, _ = make_app()
    before = len(app.routes)
    assert api.register_routes(app, api.ApiSources(dict, dict, dict, dict)) is False
    assert len(app.routes) == before
    paths = [r.path for r in app.routes if r.path.startswith("/accel/")]
    assert sorted(paths) == sorted(f"/accel/v1/{n}" for n in (*api.GETS, *api.POSTS))


def test_post_is_open_without_webui_auth():
    _, client, calls = make_app()
    res = client.post("/accel/v1/cache/clear")
    assert res.status_code == 200 and res.json()["cleared"] == 3 and calls == ["clear"]


def test_post_needs_api_auth_credentials_when_set():
    _, client, calls = make_app(credentials={"alice": "s3cret", "bob": "x:y"})
    res = client.post("/accel/v1/cache/clear")
    assert res.status_code == 401 and res.headers["www-authenticate"] == "Basic"
    assert client.post("/accel/v1/cache/clear", headers=basic("alice", "wrong")).status_code == 401
    assert client.post("/accel/v1/cache/clear", headers=basic("mallory", "s3cret")).status_code == 401
    assert client.post("/accel/v1/cache/clear", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert calls == []
    assert client.post("/accel/v1/cache/clear", headers=basic("alice", "s3cret")).status_code == 200
    assert client.post("/accel/v1/cache/clear", headers=basic("bob", "x:y")).status_code == 200
    assert client.get("/accel/v1/stats").status_code == 200  # GETs stay open (read-only)
    assert calls == ["clear", "clear"]


def test_post_accepts_a_gradio_login_with_a_json_body_only():
    _, client, calls = make_app(gradio_auth=[("alice", "pw")], tokens={"tok": "alice"})
    assert client.post("/accel/v1/cache/clear").status_code == 401
    client.cookies.set("access-token", "forged")
    assert client.post("/accel/v1/cache/clear", json={}).status_code == 401
    client.cookies.set("access-token", "tok")
    assert client.post("/accel/v1/cache/clear", content="x", headers={"Content-Type": "text/plain"}).status_code == 401
    assert client.post("/accel/v1/cache/clear", json={}).status_code == 200
    assert calls == ["clear"]


def test_parse_api_auth_and_basic_header():
    assert api.parse_api_auth("u1:p1,u2:p:2,broken") == {"u1": "p1", "u2": "p:2"}
    assert api.parse_api_auth(None) == {}
    assert api.basic_credentials(basic("a", "b:c")["Authorization"]) == ("a", "b:c")
    assert api.basic_credentials("Bearer x") is None and api.basic_credentials(None) is None


@pytest.mark.parametrize(("active", "setting", "flag", "expected"), [
    ("Accel auto", "Accel auto", None, "chosen by name"),
    ("xformers", "Automatic", "xformers", "--xformers command-line flag"),
    ("InvokeAI", "Automatic", None, "highest-priority"),
    ("InvokeAI", "bogus", None, "names no available optimization"),
    ("sdp - scaled dot product", "Accel auto", None, "takes effect when"),
    (None, "None", None, "disabled"),
    (None, "Automatic", None, "none applied yet"),
])
def test_explain_choice(active, setting, flag, expected):
    titles = ["InvokeAI", "xformers", "sdp - scaled dot product", "Accel auto"]
    assert expected in api.explain_choice(active, setting, titles, flag)


def test_tab_markdown_renders_the_api_dicts():
    state = {"active": "Accel auto", "reason": "chosen by name", "setting": "Accel auto", "kernel": "auto",
             "choices": [{"shape": "cuda float16 b2 h8 q4096 kv77 d40", "kernel": "sdpa-flash",
                          "ms": {"sdpa": 0.31, "sdpa-flash": 0.2}, "rejected": {"xformers": "not installed"},
                          "measured_at": "2025-01-01T00:00:00"}], "other_choices": 2,
             "fallbacks": {"cuda float32 b1 h1 q4096 kv4096 d512": ["head dim 512 > 256"]}}
    text = ui_tab.attention_md(state)
    assert "sdpa-flash 0.2, sdpa 0.31" in text and "xformers: not installed" in text
    assert "2 saved choice(s)" in text and "head dim 512 \\> 256" in text
    assert "has not measured" in ui_tab.attention_md({**state, "choices": []})
    backends = ui_tab.backends_md({"kernels": [{"name": "xformers", "label": "x|y", "available": False,
                                                "reasons": ["xformers is not installed"]}],
                                   "features": [{"name": "pynvml", "available": False, "version": "",
                                                 "reason": "no NVML"}]})
    assert "x\\|y" in backends and "xformers is not installed" in backends and "no NVML" in backends
    runtime = ui_tab.runtime_md({"settings": {"nan_check": "full", "tf32": "on"},
                                 "flags": {"cudnn.benchmark": False}, "unet_channels_last": None,
                                 "nan_check": {"mode": "full", "accel_patched": True, "webui_disabled": False},
                                 "last_changes": ["allow_tf32 = True"]})
    assert "accel\\_nan\\_check" in runtime and "no model loaded" in runtime and "Accel's check installed" in runtime
    assert "3 measured shape(s)" in ui_tab.cache_md({"entries": 3, "bytes": 10, "exists": True, "path": "/x/a_b",
                                                     "persist": True})
    assert "Cleared 2" in ui_tab.cleared_md({"cleared": 2, "reapplied": True})
    placeholder = api.compile_state_placeholder()
    assert "not available in this version" in ui_tab.compile_md(placeholder)
    real = {"implemented": True, "torch_compile": {"available": True},
            "checkpoints": {"m [abc]": {"status": "refused", "reason": "lowvram"}},
            "loaded": {"mode": "default", "backend": "inductor",
                       "shapes": [{"label": "512x512x2", "status": "compiled", "seconds": 41.0, "calls": 3}]}}
    text = ui_tab.compile_md(real)
    assert "m \\[abc\\] | refused | lowvram" in text and "512x512x2 | compiled | 41.0 | 3" in text


def test_readme_documents_every_route():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## JSON API", 1)[1].split("\n## ", 1)[0]
    for name in api.GETS:
        assert f"GET /accel/v1/{name}" in section, name
    for name in api.POSTS:
        assert f"POST /accel/v1/{name}" in section, name


# -- end to end on the fake WebUI v1.10.1 ----------------------------------------------------------------------
def test_real_sources_on_the_fake_webui(fake_webui, tmp_path):
    fake_webui.add_checkpoint("model.safetensors")
    fake_webui.load_extension(ROOT)
    app = fake_webui.start()
    from modules import script_callbacks

    from lib_accel.webui import api as live_api
    from lib_accel.webui import extension, live_stats
    from lib_accel.webui import ui_tab as live_tab

    ext = extension.get()
    ext.root = str(tmp_path)  # keep the repository's accel-timings.json out of this
    stats = live_stats.get()
    stats.install(ext.patches)
    wired = {c.callback for c in fake_webui.callbacks("cfg_denoiser")}
    if stats.on_cfg_denoiser not in wired:  # until scripts/accel.py registers them
        script_callbacks.on_cfg_denoiser(stats.on_cfg_denoiser, name="accel-test")
        script_callbacks.on_cfg_after_cfg(stats.on_cfg_after_cfg, name="accel-test")
    if not any(r.path == "/accel/v1/stats" for r in app.routes):
        live_api.register_routes(app, live_api.webui_sources())
    client = TestClient(app)

    fake_webui.load_model("model.safetensors")
    fake_webui.set_option("cross_attention_optimization", "Accel auto")
    stats.begin_image()  # the fake runs no Script hooks; scripts/accel_infotext.py does this in the WebUI
    fake_webui.txt2img(steps=3)
    summary = stats.end_image()
    assert [p["steps"] for p in summary["passes"]] == [3] and summary["passes"][0]["calls"] == 3
    assert summary["stages"]["vae_decode"] > 0 and "vae_decode" in stats.installed

    snap = client.get("/accel/v1/stats").json()
    assert snap["generation"]["last_image"]["passes"][0]["steps"] == 3
    assert snap["memory"]["nvml"]["available"] is False and snap["memory"]["nvml"]["reason"]
    assert snap["vram"]["kind"] in ("RAM", "none") and "busy" in snap["webui"]
    json.dumps(snap, allow_nan=False)

    backends = client.get("/accel/v1/backends").json()
    attention = backends["attention"]
    assert attention["active"] == "Accel auto" and attention["accel"] and attention["kernel"] == "auto"
    assert attention["choices"] and all(c["kernel"] for c in attention["choices"])
    assert {k["name"] for k in backends["kernels"]} >= {"sdpa", "chunked"}

    info = client.get("/accel/v1/info").json()
    assert info["timing_cache"]["entries"] == len(attention["choices"]) + attention["other_choices"]
    assert info["runtime"]["settings"]["live_stats"] is True and info["runtime"]["nan_check"]["mode"] == "default"

    compiled = client.get("/accel/v1/compile").json()
    assert compiled["implemented"] is (hasattr(ext, "compiler"))
    assert isinstance(compiled["checkpoints"], dict) and "available" in compiled["torch_compile"]

    cleared = client.post("/accel/v1/cache/clear").json()
    assert cleared["cleared"] == info["timing_cache"]["entries"] and cleared["cleared"] > 0
    assert client.get("/accel/v1/backends").json()["attention"]["choices"] == []

    tabs = live_tab.on_ui_tabs()
    assert [(title, elem_id) for _, title, elem_id in tabs] == [("Accel", "accel")]
    script_callbacks.script_unloaded_callback()
    from modules import processing
    assert not hasattr(processing.decode_latent_batch, "accel_stage")  # undone with every other Accel patch


WIRE_SCRIPT = '''
# Stand-in for the scripts/accel.py lines that register the live stats, tab and API (skipped once they exist).
from modules import script_callbacks
from lib_accel.webui import api, live_stats, ui_tab

stats = live_stats.get()
if not any(c.callback == stats.on_cfg_denoiser for c in script_callbacks.callback_map["callbacks_cfg_denoiser"]):
    script_callbacks.on_cfg_denoiser(stats.on_cfg_denoiser, name="accel")
    script_callbacks.on_cfg_after_cfg(stats.on_cfg_after_cfg, name="accel")
    script_callbacks.on_ui_tabs(ui_tab.on_ui_tabs, name="accel")
    script_callbacks.on_app_started(stats.on_app_started, name="accel-stats")
    script_callbacks.on_app_started(api.on_app_started, name="accel-api")
'''


def test_reload_ui_keeps_one_of_everything(fake_webui, tmp_path):
    wire = tmp_path / "zz-accel-wire"
    (wire / "scripts").mkdir(parents=True)
    (wire / "scripts" / "zz_accel_wire.py").write_text(WIRE_SCRIPT)
    fake_webui.add_checkpoint("model.safetensors")
    fake_webui.load_extension(ROOT)
    fake_webui.load_extension(wire)
    fake_webui.start()
    from modules import processing

    from lib_accel.webui import extension, live_stats

    extension.get().root = str(tmp_path)
    stats = live_stats.get()
    original = processing.decode_latent_batch.__wrapped__
    fake_webui.load_model("model.safetensors")
    for _ in range(2):
        app = fake_webui.reload_ui()
        assert processing.decode_latent_batch.__wrapped__ is original  # wrapped once, around the WebUI's own
        assert sum(c.callback == stats.on_cfg_denoiser for c in fake_webui.callbacks("cfg_denoiser")) == 1
        assert [r.path for r in app.routes].count("/accel/v1/stats") == 1
        stats.begin_image()
        fake_webui.txt2img(steps=2)
        summary = stats.end_image()
        assert [p["calls"] for p in summary["passes"]] == [2] and summary["stages"]["vae_decode"] > 0
        assert TestClient(app).get("/accel/v1/stats").json()["generation"]["last_image"] == summary


def test_compile_posts_warm_and_clear_with_auth_and_clear_errors():
    warmed, cleared = [], []

    def warm(body):
        if body.get("sizes") == "bad":
            raise ValueError("bad shape bucket 'bad'")
        warmed.append(body["sizes"])
        return {"queued": [body["sizes"]]}

    app, client, _ = make_app(credentials={"alice": "pw"}, compile_warm=warm,
                              compile_clear=lambda: cleared.append(1) or {"freed_bytes": 10})
    assert client.post("/accel/v1/compile/warm", json={"sizes": "512x512x1"}).status_code == 401
    ok = client.post("/accel/v1/compile/warm", json={"sizes": "512x512x1"}, headers=basic("alice", "pw"))
    assert ok.status_code == 200 and ok.json() == {"queued": ["512x512x1"]} and warmed == ["512x512x1"]
    bad = client.post("/accel/v1/compile/warm", json={"sizes": "bad"}, headers=basic("alice", "pw"))
    assert bad.status_code == 409 and "bad shape bucket" in bad.json()["error"]
    junk = client.post("/accel/v1/compile/warm", content="{", headers={**basic("alice", "pw"),
                                                                      "Content-Type": "application/json"})
    assert junk.status_code == 400
    res = client.post("/accel/v1/compile/cache/clear", headers=basic("alice", "pw"))
    assert res.status_code == 200 and res.json() == {"freed_bytes": 10} and cleared == [1]


def test_compile_progress_line(fake_webui, tmp_path):
    fake_webui.add_checkpoint("sd15.safetensors", kind="sd1")
    fake_webui.load_extension(ROOT)
    fake_webui.start()
    from lib_accel.webui import extension
    ext = extension.get()
    assert api.compile_progress(ext) == ""
    shapes = [{"status": "compiling", "text": "compiling 512x512, UNet batch 2 for 12 s"},
              {"status": "queued", "text": "x"}, {"status": "queued", "text": "y"}, {"status": "ready", "text": "z"}]
    ext.compiler.snapshot = lambda model: {"loaded": {"shapes": shapes}}
    assert api.compile_progress(ext) == "compiling 512x512, UNet batch 2 for 12 s; 2 size(s) queued to compile"
