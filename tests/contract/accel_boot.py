"""Contract-tier boot helper shared by test modules (a plain module: a conftest here would clash by name)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
LORA = ROOT / "tests" / "fakewebui" / "extensions-builtin-opt-in" / "Lora"  # the fake built-in Lora extension


def start_with_checkpoints(fake_webui, tmp_path, *kinds: str, load: str = "sd15.safetensors",
                           builtins: tuple[Path, ...] = ()):
    """Add ``sd1``/``sdxl`` checkpoints (``sd15.safetensors``, ``sdxl.safetensors``), load the ``builtins``
    extensions (such as :data:`LORA`) and then Accel, as the WebUI orders them, start, keep Accel's files in
    ``tmp_path`` and load ``load``; returns the harness."""
    names = {"sd1": "sd15.safetensors", "sdxl": "sdxl.safetensors"}
    for seed, kind in enumerate(kinds):
        fake_webui.add_checkpoint(names[kind], kind=kind, seed=seed)
    for extension in builtins:
        fake_webui.load_extension(extension)
    fake_webui.load_extension(ROOT)
    fake_webui.start()
    sys.modules["lib_accel.webui.extension"].get().root = str(tmp_path)
    fake_webui.load_model(load)
    return fake_webui


class Blocker:
    """A compile job that holds a module's (shared) compile worker until released, so a test sees what waits."""

    installed = True

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def _compile_now(self, state, args, kwargs):
        self.started.set()
        assert self.release.wait(60)


def block_worker(compiled) -> Blocker:
    """Submit a :class:`Blocker` to ``compiled``'s worker and wait until it runs."""
    blocker = Blocker()
    compiled.worker.submit(blocker, SimpleNamespace(status="queued"), (), {})
    assert blocker.started.wait(30)
    return blocker
