"""Accel's routes under the WebUI's authentication, on the fake WebUI v1.10.1 (whose UI app carries gradio 3.41's
``auth``/``tokens``): the request javascript/accel.js really sends (run in node) keeps working under
``--api-auth``, ``--gradio-auth`` and ``--gradio-auth-path``, logged in or not, while the detailed GETs and the
POSTs need the same credentials as ``/sdapi/v1/*`` or the UI login."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import urllib.parse
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "javascript" / "accel.js"
PAGE = "http://127.0.0.1:7860/"  # where the WebUI's page is served (its root path)
GUARD = {"Content-Type": "application/json", "X-Accel-Request": "1"}
DETAILED = ("backends", "info", "compile")

# accel.js in a stand-in page: a txt2img job runs (its Interrupt button shows), so the script polls; the first
# fetch it makes is printed as {url, options} and node exits.
BADGE_REQUEST = """
global.opts = {accel_live_stats: true};
const shown = {style: {display: "block"}};
global.gradioApp = () => ({querySelector: (sel) => sel === "#txt2img_interrupt" ? shown : null});
let wake = null;
global.onAfterUiUpdate = (callback) => { wake = callback; };
global.fetch = (url, options) => {
    console.log(JSON.stringify({url: url, options: options || {}}));
    process.exit(0);
};
require(process.argv[1]);
if (!wake) { console.error("accel.js registered no onAfterUiUpdate callback"); process.exit(2); }
wake();
setTimeout(() => { console.error("accel.js did not poll while a job ran"); process.exit(3); }, 5000);
"""

BADGE_TEXT = "console.log(require(process.argv[1]).badgeText(JSON.parse(process.argv[2])));"


def node() -> str:
    path = shutil.which("node")
    if path is None:  # a development requirement (README, Tests): fail, never skip
        pytest.fail("node is not on PATH: install Node.js (a development requirement, see README Tests)")
    return path


def badge_request() -> tuple[str, dict]:
    """(path, fetch options) of the badge's poll, as accel.js issues it from the WebUI's page."""
    out = subprocess.run([node(), "-e", BADGE_REQUEST, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    request = json.loads(out.stdout)
    return urllib.parse.urlsplit(urllib.parse.urljoin(PAGE, request["url"])).path, request["options"]


def badge_text(stats: dict) -> str:
    out = subprocess.run([node(), "-e", BADGE_TEXT, str(SCRIPT), json.dumps(stats)], capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def start(fake_webui, tmp_path, args: str):
    fake_webui.set_args(f"{fake_webui.args} {args}")  # the harness's CPU flags plus the auth ones
    fake_webui.load_extension(ROOT)
    app = fake_webui.start()
    sys.modules["lib_accel.webui.extension"].get().root = str(tmp_path)
    return app, TestClient(app)


def assert_badge_works(client) -> None:
    """The badge's own request, sent as the browser sends it (cookies of the page, no Authorization header):
    answered, and rendered by accel.js into a reading (not the "no reading" placeholder)."""
    path, options = badge_request()
    assert path == "/accel/v1/stats"
    assert options.get("method", "GET") == "GET" and "headers" not in options and "body" not in options
    assert options.get("credentials") == "same-origin"  # the login cookie goes along; nothing else is sent
    res = client.get(path)
    assert res.status_code == 200, res.text
    stats = res.json()
    assert "generation" in stats and "vram" in stats
    assert badge_text(stats) != "Accel: …" and badge_text(None) == "Accel: …"


def test_the_badge_and_detailed_routes_under_api_auth(fake_webui, tmp_path):
    """--api-auth: the page is not behind Basic, so the browser sends no credentials; the badge still works,
    the detailed routes ask for Basic like /sdapi/v1/*."""
    _, client = start(fake_webui, tmp_path, "--api-auth alice:s3cret")
    assert_badge_works(client)
    for name in DETAILED:
        res = client.get(f"/accel/v1/{name}")
        assert res.status_code == 401 and res.headers["www-authenticate"] == "Basic", name
        assert client.get(f"/accel/v1/{name}", headers=basic("alice", "s3cret")).status_code == 200, name
    assert client.post("/accel/v1/cache/clear", headers=GUARD, content="{}").status_code == 401
    res = client.post("/accel/v1/cache/clear", headers={**GUARD, **basic("alice", "s3cret")}, content="{}")
    assert res.status_code == 200 and res.json()["cleared"] == 0


@pytest.mark.parametrize("source", ["flag", "file"])
def test_the_badge_and_detailed_routes_under_gradio_auth(fake_webui, tmp_path, source):
    """--gradio-auth (or --gradio-auth-path): logged out, the badge still polls (like /internal/progress) and the
    detailed routes refuse without a Basic prompt; logged in (gradio's cookie), they and the POSTs work."""
    if source == "file":
        creds = tmp_path / "auth.txt"
        creds.write_text("bob:x\nalice:pw\n", encoding="utf8")
        args = f"--gradio-auth-path {creds}"
    else:
        args = "--gradio-auth bob:x,alice:pw"
    app, client = start(fake_webui, tmp_path, args)
    webui = sys.modules["webui"]
    assert app.auth == {"bob": "x", "alice": "pw"} and app.tokens == {}

    assert_badge_works(client)  # logged out
    for name in DETAILED:
        res = client.get(f"/accel/v1/{name}")
        assert res.status_code == 401 and "www-authenticate" not in res.headers, name
    assert client.post("/accel/v1/cache/clear", headers=GUARD, content="{}").status_code == 401
    with pytest.raises(ValueError, match="Incorrect credentials"):
        webui.gradio_login("alice", "wrong")
    client.cookies.set("access-token", "not-a-login")
    assert client.get("/accel/v1/info").status_code == 401

    client.cookies.set("access-token", webui.gradio_login("alice", "pw"))
    assert_badge_works(client)  # logged in
    for name in DETAILED:
        assert client.get(f"/accel/v1/{name}").status_code == 200, name
    assert client.post("/accel/v1/cache/clear", content="{}",  # still no cross-site simple request
                       headers={"Content-Type": "text/plain"}).status_code == 403
    assert client.post("/accel/v1/cache/clear", headers=GUARD, content="{}").status_code == 200


def test_a_malformed_api_auth_closes_the_detailed_routes_but_not_the_badge(fake_webui, tmp_path):
    _, client = start(fake_webui, tmp_path, "--api-auth admin")
    assert_badge_works(client)
    for name in DETAILED:
        res = client.get(f"/accel/v1/{name}", headers=basic("admin", ""))
        assert res.status_code == 401 and "--api-auth" in res.json()["detail"], name


def test_without_auth_everything_is_open_but_posts_need_the_guard(fake_webui, tmp_path):
    app, client = start(fake_webui, tmp_path, "")
    assert app.auth is None  # gradio's App without --gradio-auth
    assert_badge_works(client)
    for name in DETAILED:
        assert client.get(f"/accel/v1/{name}").status_code == 200, name
    assert client.post("/accel/v1/cache/clear", content="{}").status_code == 403  # no JSON type, no header
    assert client.post("/accel/v1/cache/clear", headers=GUARD, content="{}").status_code == 200
