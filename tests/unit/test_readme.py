"""The README documents every setting, optimization and command, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from lib_accel.config import SETTINGS
from lib_accel.webui.optimizations import SPECS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_and_optimization_is_documented():
    for spec in SETTINGS:
        assert f"`{spec.key}`" in README, spec.key
    for spec in SPECS:
        assert f"| {spec.name} |" in README, spec.name


def test_ci_runs_the_readme_test_command():
    command = re.search(r"The test command.*?```bash\n(.+?)\n```", README, re.S).group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1].strip() == command
