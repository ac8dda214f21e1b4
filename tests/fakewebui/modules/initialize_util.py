"""Fake of modules/initialize_util.py: ``get_gradio_auth_creds`` (v1.10.1), what webui.py hands gradio's launch as
``auth``. (``configure_opts_onchange`` of the real module lives in this fake's initialize.py.)"""

from modules.shared_cmd_options import cmd_opts


def get_gradio_auth_creds():
    """(user, password) tuples from ``--gradio-auth "u1:p1,u2:p2"`` and the lines of ``--gradio-auth-path``; each
    entry split at its first ``:`` (an entry without one gives a 1-tuple, which gradio then fails on)."""

    def credential(text):
        text = text.strip()
        return tuple(text.split(":", 1)) if text else None

    if cmd_opts.gradio_auth:
        for entry in cmd_opts.gradio_auth.split(","):
            if cred := credential(entry):
                yield cred
    if cmd_opts.gradio_auth_path:
        with open(cmd_opts.gradio_auth_path, encoding="utf8") as file:
            for line in file.readlines():
                for entry in line.strip().split(","):
                    if cred := credential(entry):
                        yield cred
