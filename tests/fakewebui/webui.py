"""Fake of webui.py: ``api_only()`` / ``webui()`` start-up (callback order of v1.10.1, without serving) and
``reload_ui()``, the body of the real restart loop. Returns the FastAPI app (or a stand-in when fastapi is
absent). The UI path's app carries what gradio 3.41's ``App`` does for ``--gradio-auth``/``--gradio-auth-path``
(``auth``: user -> password, or None; ``tokens``: login cookie -> user); :func:`gradio_login` does what its
``POST /login`` does. The ``--nowebui`` app is a plain FastAPI app, as in the real api_only()."""

import secrets

from modules import initialize, initialize_util, script_callbacks, shared
from modules.shared_cmd_options import cmd_opts

initialize.imports()
app = None


def _make_app():
    try:
        from fastapi import FastAPI
    except ImportError:

        class FastAPI:
            def __init__(self):
                self.routes = []

            def add_api_route(self, path, endpoint, **kwargs):
                self.routes.append((path, endpoint, kwargs))

        return FastAPI()
    return FastAPI()


def api_only():
    """--nowebui: the Api object builds the UI once (settings and tabs), then before_ui and app_started."""
    global app
    initialize.initialize()
    app = _make_app()
    from modules import ui

    ui.create_ui()
    script_callbacks.before_ui_callback()
    script_callbacks.app_started_callback(None, app)
    return app


def _launch_ui():
    global app
    from modules import ui

    script_callbacks.before_ui_callback()
    shared.demo = ui.create_ui()
    gradio_auth_creds = list(initialize_util.get_gradio_auth_creds()) or None
    app = _make_app()
    # gradio's App.configure_app (3.41): auth from launch(auth=...), a fresh token table at every launch
    app.auth = {account[0]: account[1] for account in gradio_auth_creds} if gradio_auth_creds else None
    app.tokens = {}
    script_callbacks.app_started_callback(shared.demo, app)
    return app


def webui():
    initialize.initialize()
    return _launch_ui()


def reload_ui():
    """Settings > Reload UI: before_reload, script_unloaded, initialize_rest (re-runs scripts, keeps imported
    libraries), then the UI is built again and app_started fires with a new app."""
    if shared.demo is not None:
        shared.demo.close()
    script_callbacks.app_reload_callback()
    script_callbacks.script_unloaded_callback()
    initialize.initialize_rest(reload_script_modules=True)
    return _launch_ui()


def start():
    return api_only() if cmd_opts.nowebui else webui()


def gradio_login(username: str, password: str) -> str:
    """gradio 3.41's ``POST /login``: the token its ``access-token`` (and ``access-token-unsecure``) cookie
    carries, registered in ``app.tokens``; ValueError for wrong credentials (gradio answers 400)."""
    username = username.strip()
    if app.auth is None or username not in app.auth or app.auth[username] != password:
        raise ValueError("Incorrect credentials.")
    token = secrets.token_urlsafe(16)
    app.tokens[token] = username
    return token
