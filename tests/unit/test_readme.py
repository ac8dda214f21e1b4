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


def test_ci_runs_the_readme_test_steps_in_order():
    """Every command of the README's Tests block runs in `.ci/run`, in the README's order."""
    block = re.search(r"## Tests\n.*?```bash\n(.+?)\n```", README, re.S)
    assert block, "README has no bash block under '## Tests'"
    steps = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    steps = [step for step in steps if step]
    assert steps[-1].endswith("-m pytest -q"), steps
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    position = -1
    for step in steps:
        found = [i for i, line in enumerate(ci_lines) if i > position and line.startswith(step)]
        assert found, f".ci/run does not run the README step {step!r} (after line {position + 1})"
        position = found[0]


def test_the_code_layout_section_names_every_package():
    """The README's layout table and the tree agree: every package under lib_accel/ is described."""
    section = re.search(r"## Code layout\n(.+?)\n## ", README, re.S)
    assert section, "README has no '## Code layout' section"
    text = section.group(1)
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "lib_accel").rglob("__init__.py"))
    assert len(packages) > 5, packages
    for package in packages:
        parent, _, name = package.rpartition("/")
        named = f"`{package}/`" in text or (parent == "lib_accel/webui" and f"`{name}/`" in text)
        assert named or package == "lib_accel", f"README's Code layout does not describe {package}/"
