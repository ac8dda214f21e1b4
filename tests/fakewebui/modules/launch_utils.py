"""Fake of modules/launch_utils.py: ``args``, ``is_installed`` (real logic), and ``run``/``run_pip`` that
only RECORD the command (in ``commands``, and one JSON line per call in $FAKE_WEBUI_PIP_LOG when set)
instead of running it. ``run_pip`` returns None under --skip-install, like the real."""

import importlib.metadata
import importlib.util
import json
import os
import sys

from modules import cmd_args
from modules.paths_internal import extensions_dir, script_path  # noqa: F401

args, _ = cmd_args.parser.parse_known_args(__import__("shlex").split(os.environ.get("FAKE_WEBUI_ARGS", "")))
python = sys.executable
git = os.environ.get("GIT", "git")
index_url = os.environ.get("INDEX_URL", "")
dir_repos = "repositories"
default_command_live = os.environ.get("WEBUI_LAUNCH_LIVE_OUTPUT") == "1"
commands = []


def _record(kind, **fields):
    entry = {"kind": kind, **fields}
    commands.append(entry)
    log = os.environ.get("FAKE_WEBUI_PIP_LOG")
    if log:
        with open(log, "a", encoding="utf8") as f:
            f.write(json.dumps(entry) + "\n")


def run(command, desc=None, errdesc=None, custom_env=None, live: bool = default_command_live) -> str:
    if desc is not None:
        print(desc)
    _record("run", command=command, desc=desc)
    return ""


def is_installed(package):
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            return False
        return spec is not None
    return dist is not None


def repo_dir(name):
    return os.path.join(script_path, dir_repos, name)


def run_pip(command, desc=None, live=default_command_live):
    if args.skip_install:
        return
    index_url_line = f" --index-url {index_url}" if index_url != "" else ""
    _record("pip", command=command, desc=desc)
    return run(
        f'"{python}" -m pip {command} --prefer-binary{index_url_line}',
        desc=f"Installing {desc}",
        errdesc=f"Couldn't install {desc}",
        live=live,
    )
