"""Pytest fixture ``fake_webui``: boots the fake WebUI v1.10.1 in-process and cleans up after the test.

Wire it with ``from fakewebui.harness import fake_webui # noqa: F401`` in tests/conftest.py (pytest puts
tests/ on sys.path), or import this file the same way from a test module. The handle is not booted until
``start()``: call ``set_args``/``add_checkpoint``/``load_extension`` first. Teardown fires
on_script_unloaded (hygiene; the real WebUI does not on exit), restores torch's thread count (set to 1 while
booted), then removes every ``modules*``, ``ldm*``, ``sgm*``, ``launch``, ``webui`` (and the gradio stub)
module and the top-level packages of each loaded extension, restoring what was there before, plus sys.path
and env."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

FAKE_ROOT = os.path.dirname(os.path.abspath(__file__))
STUBS_DIR = os.path.join(FAKE_ROOT, "_stubs")
DEFAULT_ARGS = "--use-cpu all --no-half --no-half-vae --skip-torch-cuda-test --skip-version-check"
_OWNED = ("modules", "ldm", "sgm", "launch", "webui")
_ENV = ("FAKE_WEBUI_DATA_DIR", "FAKE_WEBUI_ARGS", "FAKE_WEBUI_PIP_LOG")


def _owned(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _gradio_missing() -> bool:
    if "gradio" in sys.modules:
        return False
    import importlib.util

    return importlib.util.find_spec("gradio") is None


class FakeWebUI:
    """Handle on one fake WebUI instance (see README.md for what each part mirrors)."""

    def __init__(self, data_dir):
        self.data_dir = str(data_dir)
        self.args = DEFAULT_ARGS
        self.extension_roots: list[tuple[str, str | None]] = []
        self.app = None
        self.started = False
        self._hashed: list[tuple[str, str]] = []
        self._saved_path = list(sys.path)
        self._saved_env = {k: os.environ.get(k) for k in _ENV}
        import torch

        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the tiny models are fastest (and steadiest on busy CI) single-threaded
        self._prefixes = list(_OWNED)
        self._use_stub = _gradio_missing()
        if self._use_stub:
            self._prefixes.append("gradio")
        self._saved_modules = {n: m for n, m in sys.modules.items() if _owned(n, self._prefixes)}
        for name in self._saved_modules:
            del sys.modules[name]
        os.makedirs(os.path.join(self.data_dir, "models", "Stable-diffusion"), exist_ok=True)
        os.environ["FAKE_WEBUI_DATA_DIR"] = self.data_dir
        os.environ["FAKE_WEBUI_ARGS"] = self.args
        sys.path.insert(0, FAKE_ROOT)
        if self._use_stub:
            sys.path.insert(1, STUBS_DIR)

    # -- before start() ---------------------------------------------------------------------------------
    def set_args(self, args: str) -> None:
        """Replace the command line (default DEFAULT_ARGS); only before start()."""
        assert not self.started, "set_args() must come before start()"
        self.args = args
        os.environ["FAKE_WEBUI_ARGS"] = args

    def add_checkpoint(
        self, name: str = "model.safetensors", kind: str = "sd1", seed: int = 0, hashed: bool = True
    ) -> str:
        """Write a fake checkpoint (kind sd1/sd2/sdxl) into models/Stable-diffusion. ``hashed``: its sha256
        is in the hash cache already, so its title is "name [hash10]" from the start (else only after its
        first load)."""
        path = os.path.join(self.data_dir, "models", "Stable-diffusion", name)
        with open(path, "w", encoding="utf8") as f:
            json.dump({"kind": kind, "seed": seed}, f)
        if hashed:
            from modules import hashes

            hashes.sha256(path, f"checkpoint/{name}")
        if self.started:
            self.module("sd_models").list_models()
        return path

    def load_extension(self, ext_root, name: str | None = None) -> None:
        """Register an extension directory (loaded in place) before start(). Its top-level packages/modules
        (e.g. lib_accel) already imported are set aside so the extension starts from fresh imports; they are
        restored at teardown."""
        ext_root = os.path.realpath(str(ext_root))
        self.extension_roots.append((ext_root, name))
        packages = [
            e for e in os.listdir(ext_root) if os.path.isfile(os.path.join(ext_root, e, "__init__.py"))
        ]
        packages += [
            e[:-3]
            for e in os.listdir(ext_root)
            if e.endswith(".py") and e not in ("install.py", "preload.py")
        ]
        self._prefixes += packages
        for name_ in [n for n in sys.modules if _owned(n, packages) and n not in self._saved_modules]:
            self._saved_modules[name_] = sys.modules.pop(name_)
        if self.started:
            self.module("extensions").extra_extension_dirs.append((ext_root, name))

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self, nowebui: bool | None = None):
        """Boot like ``python webui.py`` (``--nowebui`` in args, or nowebui=True, takes the API-only path).
        Returns the FastAPI app passed to on_app_started."""
        if nowebui and "--nowebui" not in self.args:
            self.set_args(self.args + " --nowebui")
        import webui
        from modules import extensions

        extensions.extra_extension_dirs[:] = self.extension_roots
        self.started = True
        self.app = webui.start()
        return self.app

    def reload_ui(self):
        """Settings > Reload UI (v1.10.1 order); returns the new app."""
        import webui

        self.app = webui.reload_ui()
        return self.app

    def close(self) -> None:
        try:
            if self.started:
                self.module("script_callbacks").script_unloaded_callback()
        finally:
            for name in [n for n in sys.modules if _owned(n, self._prefixes)]:
                del sys.modules[name]
            sys.modules.update(self._saved_modules)
            sys.path[:] = self._saved_path
            import torch

            torch.set_num_threads(self._saved_threads)
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    # -- access -----------------------------------------------------------------------------------------
    def module(self, name: str):
        """``modules.<name>`` (e.g. "shared", "sd_hijack", "script_callbacks")."""
        return importlib.import_module("modules." + name)

    @property
    def shared(self):
        return self.module("shared")

    @property
    def opts(self):
        return self.module("shared").opts

    def callbacks(self, category: str) -> list:
        """Registered ScriptCallback entries of ``category`` (e.g. "model_loaded")."""
        return list(self.module("script_callbacks").callback_map["callbacks_" + category])

    def optimizer_titles(self) -> list[str]:
        return [x.title() for x in self.module("sd_hijack").optimizers]

    # -- actions ----------------------------------------------------------------------------------------
    def load_model(self, name: str | None = None):
        """The loaded model (loading the selected checkpoint if none). With ``name`` (any alias/title): the
        first load goes through sd_models.load_model; later ones switch like the checkpoint dropdown
        (opts.set -> onchange -> reload_model_weights)."""
        sd_models = self.module("sd_models")
        if name is None:
            return self.module("shared").sd_model
        info = sd_models.get_closet_checkpoint_match(name)
        assert info is not None, f"no checkpoint {name!r}; have {list(sd_models.checkpoints_list)}"
        if sd_models.model_data.sd_model is None:
            return sd_models.load_model(info)
        self.opts.set("sd_model_checkpoint", info.title)
        return sd_models.model_data.sd_model

    def set_option(self, key: str, value) -> bool:
        """Like changing a setting in the UI and pressing Apply: opts.set with onchange (no type check)."""
        return self.opts.set(key, value)

    def set_options_api(self, req: dict) -> None:
        """Like POST /sdapi/v1/options (Api.set_config): unknown checkpoint raises; opts.set(is_api=True)
        each."""
        sd_models = self.module("sd_models")
        name = req.get("sd_model_checkpoint")
        if name is not None and name not in sd_models.checkpoint_aliases:
            raise RuntimeError(f"model {name!r} not found")
        for key, value in req.items():
            self.opts.set(key, value, is_api=True)

    def txt2img(
        self,
        prompt: str = "a cat",
        steps: int = 2,
        width: int = 64,
        height: int = 64,
        seed: int = 1,
        batch_size: int = 1,
        **kwargs,
    ):
        """processing.process_images on a Txt2Img job; returns Processed (images are CHW float tensors)."""
        processing = self.module("processing")
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt=prompt, steps=steps, width=width, height=height, seed=seed, batch_size=batch_size, **kwargs
        )
        return processing.process_images(p)

    def unet_forward(self, batch: int = 2, size: int = 8, seed: int = 0):
        """One UNet call of the loaded model on fixed random inputs (x, timesteps, context); returns the
        output."""
        import torch

        model = self.load_model()
        gen = torch.Generator().manual_seed(seed)
        unet = model.model.diffusion_model
        dtype = self.module("devices").dtype_unet
        context_dim = unet.middle_block[1].transformer_blocks[0].attn2.to_k.in_features
        x = torch.randn(batch, unet.in_channels, size, size, generator=gen).to(dtype)
        context = torch.randn(batch, 77, context_dim, generator=gen).to(dtype)
        with torch.no_grad():
            return unet(x, torch.full((batch,), 500, dtype=torch.long), context=context)

    def run_install(self, ext_root, args: str | None = None):
        """Run ``<ext_root>/install.py`` in a subprocess the way launch_utils.run_extension_installer does
        (PYTHONPATH = WebUI root, where ``import launch`` gives the fake). Returns (CompletedProcess,
        records of run/run_pip calls)."""
        log = os.path.join(self.data_dir, "pip-calls.jsonl")
        if os.path.exists(log):
            os.remove(log)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([FAKE_ROOT, os.environ.get("PYTHONPATH", "")]),
            FAKE_WEBUI_PIP_LOG=log,
            FAKE_WEBUI_ARGS=self.args if args is None else args,
        )
        proc = subprocess.run(
            [sys.executable, os.path.join(str(ext_root), "install.py")],
            env=env,
            cwd=FAKE_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        calls = []
        if os.path.exists(log):
            with open(log, encoding="utf8") as f:
                calls = [json.loads(line) for line in f if line.strip()]
        return proc, calls


@pytest.fixture
def fake_webui(tmp_path):
    """A fresh, not yet started FakeWebUI whose data directory is ``tmp_path / "webui"``."""
    handle = FakeWebUI(tmp_path / "webui")
    try:
        yield handle
    finally:
        handle.close()
