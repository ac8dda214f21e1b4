"""Run by the WebUI as `python install.py` (no arguments; the WebUI's root on PYTHONPATH) when the extension is
installed from the Extensions tab and at every start, except under the WebUI's `--skip-install`, which runs no
extension installer at all.

Installs only what requirements.txt lists and is missing. Never installs torch, xformers or triton: those
belong to the user's WebUI setup and a wrong build breaks it.
"""

from __future__ import annotations

import os
import re

REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
NEVER_INSTALL = {"torch", "torchvision", "xformers", "triton"}


def requirements(path: str = REQUIREMENTS) -> list[tuple[str, str]]:
    """(distribution name, full requirement line) for each entry of ``path``."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]
            if name.lower() in NEVER_INSTALL:
                raise ValueError(f"{path}: {name} must never be installed by an extension")
            out.append((name, line))
    return out


def install_missing(launch) -> list[str]:
    """Install each missing requirement with the WebUI's pip; returns the names it asked pip for."""
    asked = []
    for name, line in requirements():
        if not launch.is_installed(name):
            launch.run_pip(f'install "{line}"', f"Accel requirement: {name}")
            asked.append(name)
    return asked


if __name__ == "__main__":
    import launch as _launch

    install_missing(_launch)
