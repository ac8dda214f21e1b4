"""The JSON API under /accel/v1: routes on a bare FastAPI app (sources injected), the auth of its POST, the tab's
Markdown, and the real data sources end to end against the fake WebUI v1.10.1."""

from __future__ import annotations

import base64
import json
import re
import sys
import threading
import warnings
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
with warnings.catch_warnings():  # newer starlette deprecates its httpx-based client; it is still the one to use
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from lib_accel.webui import ui_tab  # noqa: E402
from lib_accel.webui.api import access  # noqa: E402
from lib_accel.webui.api import routes as api  # noqa: E402

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
from fakewebui import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
fake_webui = harness.fake_webui


GUARD = {"Content-Type": "application/json", "X-Accel-Request": "1"}  # what every POST must carry


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def post(client, path: str, body: dict | None = None, **headers):
    """A POST as the WebUI's own scripts or curl would send it: JSON body, JSON type, the custom header."""
    return client.post(f"/accel/v1/{path}", content=json.dumps(body or {}), headers={**GUARD, **headers})


def make_app(credentials=None, gradio_auth=None, tokens=None, **overrides):
    calls = []

    def clear():
        calls.append("clear")
        return {"cleared": 3, "reapplied": False, "note": ""}

    sources = api.ApiSources(stats=lambda: {"generation": {"its": 2.5}}, backends=lambda: {"kernels": []},
                             info=lambda: {"accel": "x"}, clear_cache=clear,
                             credentials=credentials if callable(credentials) else lambda: dict(credentials or {}),
                             **overrides)
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
    res = post(client, "cache/clear")
    assert res.status_code == 200 and res.json()["cleared"] == 3 and calls == ["clear"]


@pytest.mark.parametrize("path", api.POSTS)
def test_posts_refuse_what_a_cross_site_page_can_send(path):
    """Without auth (the WebUI's default) a page on another site can still send "simple" requests: a form or a
    fetch with a text/plain, form or multipart body and no custom header. None of them may change anything."""
    done = []
    app, client, calls = make_app(compile_warm=lambda body: done.append(body) or {"queued": []},
                                  compile_clear=lambda: done.append("clear") or {"freed_bytes": 0})
    simple = [{"content": '{"sizes": "512x512x1"}', "headers": {"Content-Type": "text/plain"}},
              {"data": {"sizes": "512x512x1"}},
              {"files": {"f": ("a", b"x")}},
              {"content": "{}", "headers": {"Content-Type": "application/json"}},  # JSON type, no header
              {"content": "{}", "headers": {"Content-Type": "text/plain", "X-Accel-Request": "1"}}]
    for request in simple:
        res = client.post(f"/accel/v1/{path}", **request)
        assert res.status_code == 403, (request, res.status_code)
        assert "X-Accel-Request: 1" in res.json()["error"]
    assert calls == [] and done == []
    assert post(client, path, {"sizes": "512x512x1"}).status_code == 200


def test_post_needs_api_auth_credentials_when_set():
    _, client, calls = make_app(credentials={"alice": "s3cret", "bob": "x:y"})
    res = post(client, "cache/clear")
    assert res.status_code == 401 and res.headers["www-authenticate"] == "Basic"
    assert post(client, "cache/clear", **basic("alice", "wrong")).status_code == 401
    assert post(client, "cache/clear", **basic("mallory", "s3cret")).status_code == 401
    assert post(client, "cache/clear", Authorization="Basic !!!").status_code == 401
    assert client.post("/accel/v1/cache/clear", headers=basic("alice", "s3cret")).status_code == 403  # no guard
    assert calls == []
    assert post(client, "cache/clear", **basic("alice", "s3cret")).status_code == 200
    assert post(client, "cache/clear", **basic("bob", "x:y")).status_code == 200
    assert calls == ["clear", "clear"]


def test_detailed_gets_need_api_auth_and_stats_stays_open():
    _, client, _ = make_app(credentials={"alice": "s3cret"})
    assert client.get("/accel/v1/stats").status_code == 200  # the badge polls it, like /internal/progress
    for name in ("backends", "info", "compile"):
        res = client.get(f"/accel/v1/{name}")
        assert res.status_code == 401 and res.headers["www-authenticate"] == "Basic", name
        assert client.get(f"/accel/v1/{name}", headers=basic("alice", "nope")).status_code == 401
        assert client.get(f"/accel/v1/{name}", headers=basic("alice", "s3cret")).status_code == 200


def test_gradio_login_opens_posts_and_detailed_gets():
    _, client, calls = make_app(gradio_auth={"alice": "pw"}, tokens={"tok": "alice"})
    assert client.get("/accel/v1/stats").status_code == 200  # logged out: the badge still polls
    res = client.get("/accel/v1/info")
    assert res.status_code == 401 and "www-authenticate" not in res.headers  # no Basic prompt: only a login helps
    assert post(client, "cache/clear").status_code == 401
    client.cookies.set("access-token", "forged")
    assert post(client, "cache/clear").status_code == 401 and client.get("/accel/v1/info").status_code == 401
    for cookie in ("access-token", "access-token-unsecure"):  # gradio 3.41's secure and plain-http cookies
        client.cookies.clear()
        client.cookies.set(cookie, "tok")
        assert client.get("/accel/v1/info").status_code == 200
        assert client.post("/accel/v1/cache/clear", content="x",
                           headers={"Content-Type": "text/plain"}).status_code == 403
        assert post(client, "cache/clear").status_code == 200
    assert calls == ["clear", "clear"]


@pytest.mark.parametrize("flag", ["admin", "alice:pw,admin", "alice:pw,", ","])
def test_malformed_api_auth_fails_closed(flag):
    """The WebUI's own parser raises on these; Accel must not read them as "no auth" and stay open."""
    _, client, calls = make_app(credentials=lambda: api.parse_api_auth(flag))
    for name in ("backends", "info", "compile"):
        res = client.get(f"/accel/v1/{name}")
        assert res.status_code == 401 and "not USER:PASSWORD" in res.json()["detail"], name
    assert post(client, "cache/clear").status_code == 401
    assert post(client, "cache/clear", **basic("alice", "pw")).status_code == 401
    assert calls == [] and client.get("/accel/v1/stats").status_code == 200


def test_bad_bodies_are_clean_client_errors():
    _, client, calls = make_app()
    deep = "[" * 30000 + "]" * 30000  # under the size limit, past Python's recursion limit
    for body, status, message in ((deep, 400, "nested too deeply"),
                                  ('{"a": ' * 8000 + "1" + "}" * 8000, 400, "nested too deeply"),
                                  ("{", 400, "not JSON (Expecting property name"), (b"\xff\xfe{", 400, "not JSON"),
                                  ("[1, 2]", 400, "JSON object"), ("x" * (65 * 1024), 413, "larger than")):
        res = client.post("/accel/v1/cache/clear", content=body, headers=GUARD)
        assert res.status_code == status and message in res.json()["error"], (body[:10], res.status_code)
        assert "Traceback" not in res.text
    assert calls == []


def test_nesting_is_bounded_before_parsing_whatever_the_recursion_limit():
    """33 levels parse fine in Python, yet are refused: the check does not rely on a RecursionError (whose depth
    depends on sys.getrecursionlimit(), which inductor raises). Brackets inside strings do not count."""
    limit = access.MAX_DEPTH
    ok = '{"a": ' + "[" * (limit - 1) + "]" * (limit - 1) + "}"
    assert access.parse_json_object(ok.encode()) == json.loads(ok)
    too_deep = '{"a": ' + "[" * limit + "]" * limit + "}"
    json.loads(too_deep)  # valid JSON Python would parse
    with pytest.raises(api.BodyError, match=f"more than {limit} levels"):
        access.parse_json_object(too_deep.encode())
    quoted = json.dumps({"sizes": "[" * 5000 + '\\"{' * 100})
    assert access.parse_json_object(quoted.encode()) == json.loads(quoted)


def test_the_nesting_scan_is_linear():
    """An unterminated string of escaped quotes made a regular-expression scan quadratic (10 s for 60 kB on the
    event loop); the scan is one pass."""
    import time
    for raw in (b'"' + b'\\"' * 30000, b'"a' * 32000, b"[" * 65000, b'{"a": "' + b"\\\\" * 30000 + b'"}'):
        started = time.perf_counter()
        access.nesting_depth(raw)
        assert time.perf_counter() - started < 1.0, raw[:12]


@pytest.mark.parametrize("path", api.POSTS)
def test_blocking_work_does_not_stall_other_requests(path):
    """A POST whose work takes long (a clear of 30,000 files) runs in the thread pool: other requests keep being
    served by the one event loop."""
    entered, release = threading.Event(), threading.Event()

    def slow(*body):
        entered.set()
        release.wait(10)
        return {"done": 1}

    app = fastapi.FastAPI()
    api.register_routes(app, api.ApiSources(stats=lambda: {"ok": 1}, backends=dict, info=dict, clear_cache=slow,
                                            compile_warm=slow, compile_clear=slow))
    with TestClient(app) as client:  # one event loop for every request, as under uvicorn
        clearing = threading.Thread(target=lambda: post(client, path, {"sizes": "512x512x1"}))
        clearing.start()
        try:
            assert entered.wait(10)
            polled = []
            poller = threading.Thread(target=lambda: polled.append(client.get("/accel/v1/stats").status_code))
            poller.start()
            poller.join(3)
            assert polled == [200], "GET /stats waited for the POST to finish"
        finally:
            release.set()
            clearing.join(10)


def test_the_badge_only_polls_routes_that_stay_open_under_auth():
    """javascript/accel.js runs in the logged-in (or --api-auth) page without Basic credentials: every route it
    fetches must be one that needs none, and it sends no POST (which would need X-Accel-Request)."""
    code = (ROOT / "javascript" / "accel.js").read_text(encoding="utf-8")
    routes = set(re.findall(r"accel/v1/([a-z/]+)", code))
    assert routes == {"stats"} and routes <= set(api.OPEN_GETS)
    assert "method" not in code and not re.search(r"\bPOST\b", code)  # fetch() defaults to GET
    _, client, _ = make_app(credentials={"alice": "pw"}, gradio_auth={"alice": "pw"}, tokens={})
    assert client.get("/accel/v1/stats").status_code == 200


def test_parse_api_auth_and_basic_header():
    assert api.parse_api_auth("u1:p1,u2:p:2") == {"u1": "p1", "u2": "p:2"}
    assert api.parse_api_auth(None) == {} and api.parse_api_auth("") == {}
    with pytest.raises(ValueError, match="entry 3 is not USER:PASSWORD") as error:
        api.parse_api_auth("u1:p1,u2:p2,s3cretpassword")
    assert "s3cret" not in str(error.value)
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

    from lib_accel.webui import extension, live_stats
    from lib_accel.webui import ui_tab as live_tab
    from lib_accel.webui.api import routes as live_api

    ext = extension.get()
    ext.root = str(tmp_path)  # keep the repository's accel-timings.json out of this
    stats = live_stats.get()
    # scripts/accel.py wires all of it at start-up: the step callbacks, the stage timers and the routes
    assert stats.on_cfg_denoiser in {c.callback for c in fake_webui.callbacks("cfg_denoiser")}
    assert stats.on_cfg_after_cfg in {c.callback for c in fake_webui.callbacks("cfg_after_cfg")}
    assert "vae_decode" in stats.installed and stats.failure_hook == ""
    assert "text_encoder" in stats.not_installed  # the fake has no modules.prompt_parser (see its README)
    assert [r.path for r in app.routes].count("/accel/v1/stats") == 1
    assert live_api.register_routes(app, live_api.webui_sources()) is False
    client = TestClient(app)

    fake_webui.load_model("model.safetensors")
    fake_webui.set_option("cross_attention_optimization", "Accel auto")
    # through the txt2img ScriptRunner, as the WebUI runs it: scripts/accel_infotext.py opens and closes the image
    fake_webui.txt2img(steps=3, scripts=fake_webui.module("scripts").scripts_txt2img)
    summary = stats.snapshot()["generation"]["last_image"]
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
    assert compiled["implemented"] is True and compiled["status"] == "available"
    assert compiled["checkpoints"] == ext.compiler.snapshot(fake_webui.load_model())["checkpoints"]
    assert compiled["loaded"] is None and "available" in compiled["torch_compile"]  # compile is off by default

    assert client.post("/accel/v1/cache/clear", content="{}", headers={"Content-Type": "text/plain"}).status_code == 403
    cleared = post(client, "cache/clear").json()
    assert cleared["cleared"] == info["timing_cache"]["entries"] and cleared["cleared"] > 0
    assert client.get("/accel/v1/backends").json()["attention"]["choices"] == []

    tabs = live_tab.on_ui_tabs()
    assert [(title, elem_id) for _, title, elem_id in tabs] == [("Accel", "accel")]
    script_callbacks.script_unloaded_callback()
    from modules import processing
    assert not hasattr(processing.decode_latent_batch, "accel_stage")  # undone with every other Accel patch


def test_reload_ui_keeps_one_of_everything(fake_webui, tmp_path):
    fake_webui.add_checkpoint("model.safetensors")
    fake_webui.load_extension(ROOT)
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
        fake_webui.txt2img(steps=2, scripts=fake_webui.module("scripts").scripts_txt2img)  # a fresh runner
        summary = stats.snapshot()["generation"]["last_image"]
        assert [p["calls"] for p in summary["passes"]] == [2] and summary["stages"]["vae_decode"] > 0
        assert summary["complete"] is True
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
    assert post(client, "compile/warm", {"sizes": "512x512x1"}).status_code == 401
    ok = post(client, "compile/warm", {"sizes": "512x512x1"}, **basic("alice", "pw"))
    assert ok.status_code == 200 and ok.json() == {"queued": ["512x512x1"]} and warmed == ["512x512x1"]
    bad = post(client, "compile/warm", {"sizes": "bad"}, **basic("alice", "pw"))
    assert bad.status_code == 400 and "bad shape bucket" in bad.json()["error"]
    junk = client.post("/accel/v1/compile/warm", content="{", headers={**basic("alice", "pw"), **GUARD})
    assert junk.status_code == 400 and warmed == ["512x512x1"]
    res = post(client, "compile/cache/clear", **basic("alice", "pw"))
    assert res.status_code == 200 and res.json() == {"freed_bytes": 10} and cleared == [1]


def test_real_routes_fail_closed_on_a_malformed_api_auth(fake_webui, tmp_path):
    """--api-auth admin (no password) on the real sources: the detailed and state-changing routes refuse."""
    fake_webui.set_args("--api-auth admin")
    fake_webui.load_extension(ROOT)
    app = fake_webui.start()
    from lib_accel.webui import extension
    extension.get().root = str(tmp_path)
    client = TestClient(app)
    assert client.get("/accel/v1/stats").status_code == 200
    for name in ("backends", "info", "compile"):
        assert client.get(f"/accel/v1/{name}").status_code == 401, name
    for path in api.POSTS:
        res = post(client, path, {"sizes": "512x512x1"}, **basic("admin", ""))
        assert res.status_code == 401 and "--api-auth" in res.json()["detail"], path


def test_real_routes_with_api_auth(fake_webui, tmp_path):
    fake_webui.set_args("--api-auth alice:s3cret")
    fake_webui.add_checkpoint("model.safetensors")
    fake_webui.load_extension(ROOT)
    app = fake_webui.start()
    from lib_accel.webui import extension
    extension.get().root = str(tmp_path)
    fake_webui.load_model("model.safetensors")
    client = TestClient(app)
    assert client.get("/accel/v1/stats").status_code == 200
    assert client.get("/accel/v1/backends").status_code == 401
    assert client.get("/accel/v1/backends", headers=basic("alice", "s3cret")).json()["kernels"]
    assert post(client, "cache/clear").status_code == 401
    assert post(client, "cache/clear", **basic("alice", "s3cret")).json()["cleared"] == 0
    res = post(client, "compile/warm", {"sizes": "512x512x1"}, **basic("alice", "s3cret"))
    assert res.status_code == 409 and "is not compiled" in res.json()["error"]


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
