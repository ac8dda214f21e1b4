"""install.py: one dependency list, only missing packages, never torch/xformers/triton."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_install():
    spec = importlib.util.spec_from_file_location("accel_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_launch(installed):
    calls = []
    launch = types.SimpleNamespace(is_installed=lambda name: name in installed,
                                   run_pip=lambda command, desc=None: calls.append(command))
    return launch, calls


def test_installs_only_what_is_missing():
    install = load_install()
    launch, calls = fake_launch(installed=set())
    assert install.install_missing(launch) == ["nvidia-ml-py"]
    assert calls == ['install "nvidia-ml-py"']
    launch, calls = fake_launch(installed={"nvidia-ml-py"})
    assert install.install_missing(launch) == [] and calls == []


def test_the_list_never_names_torch_xformers_or_triton(tmp_path):
    install = load_install()
    names = {name.lower() for name, _ in install.requirements()}
    assert names and not names & install.NEVER_INSTALL
    bad = tmp_path / "req.txt"
    bad.write_text("nvidia-ml-py\ntorch>=2.1  # no\n")
    with pytest.raises(ValueError, match="torch"):
        install.requirements(str(bad))
