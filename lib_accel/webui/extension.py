"""The one object that owns Accel's state inside the WebUI and answers its callbacks.

``scripts/accel.py`` registers :func:`get`'s bound methods at module level. Because Reload UI re-executes
script files but keeps library modules imported, the owner outlives a reload: ``on_script_unloaded``
undoes every patch, flag and attention forward Accel installed, and the next load re-applies them, so
a reload never leaves two of anything.
"""

from __future__ import annotations

import contextlib
import os
import threading

from ..attention import TimingStore
from ..config import AccelConfig
from ..runtime_toggles import RuntimeToggles, make_nan_check
from ..singleton import process_singleton
from . import options
from .compile_glue import CompileController, unet_of
from .patching import PatchOwner
from .precision_glue import PrecisionController

EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMINGS_FILE = "accel-timings.json"


def log(message: str) -> None:
    print(message, flush=True)


def loaded_model():
    """The loaded ``sd_model`` or None, without triggering a load (``shared.sd_model`` would)."""
    from modules import sd_models
    return getattr(sd_models.model_data, "sd_model", None)


class AccelExtension:
    log = staticmethod(log)

    def __init__(self, root: str = EXTENSION_ROOT):
        self.root = root
        self.patches = PatchOwner()
        self.toggles = RuntimeToggles()
        self._store: TimingStore | None = None
        self._lock = threading.RLock()
        self.applied_optimization = None
        self.last_changes: list[str] = []
        self._nan_mode = "default"
        self.compiler = CompileController(self)
        self.precision = PrecisionController(self)
        self._thread = threading.local()

    # -- context for optimizations ---------------------------------------------------------------------
    def config(self) -> AccelConfig:
        return options.read_config()

    def timing_store(self) -> TimingStore:
        path = os.path.join(self.root, TIMINGS_FILE) if self.config().autotune_persist else None
        if self._store is None or self._store.path != path:
            self._store = TimingStore(path)
        return self._store

    def on_applied(self, optimization) -> None:
        self.applied_optimization = optimization

    # -- WebUI callbacks ---------------------------------------------------------------------------------
    def on_ui_settings(self) -> None:
        options.add_settings(self.on_settings_changed)

    def on_list_optimizers(self, res: list) -> None:
        from .optimizations import build_optimizations
        res.extend(build_optimizations(self))

    def on_model_loaded(self, sd_model) -> None:
        self.precision.on_model_loaded(sd_model)
        self.apply_runtime(sd_model)
        self.compiler.sync(sd_model)

    def on_app_started(self, demo, app) -> None:
        self.on_settings_changed()

    def on_settings_changed(self) -> None:
        sd_model = loaded_model()
        self.apply_runtime(sd_model)
        if sd_model is not None:
            self.compiler.sync(sd_model)

    def on_script_unloaded(self) -> None:
        """Undo everything; Reload UI re-executes the script and the WebUI re-applies attention."""
        with self._lock:
            self.compiler.uninstall_all(loaded_model())
            self.precision.restore(loaded_model())
            changes = self.toggles.undo()
            undone = self.patches.undo_all()
            self._nan_mode = "default"
            self._undo_attention()
        if changes or undone:
            log(f"[Accel] unloaded: {undone} patch(es) and {len(changes)} setting(s) undone")

    # -- work ----------------------------------------------------------------------------------------------
    def apply_runtime(self, sd_model) -> list[str]:
        """Apply toggles and the NaN-check mode from the current settings to ``sd_model`` (may be None)."""
        from modules import devices, shared
        with self._lock:
            config = self.config()
            unet = unet_of(sd_model)
            webui_cl = bool(getattr(shared.cmd_opts, "opt_channelslast", False))
            changes = self.toggles.apply(config, unet, webui_channels_last=webui_cl)
            webui_check = self.patches.original(devices, "test_for_nans")
            if config.nan_check == "default":
                self.patches.undo(devices, "test_for_nans")
            else:
                self.patches.patch(devices, "test_for_nans", make_nan_check(config.nan_check, webui_check))
            if config.nan_check != self._nan_mode:
                changes.append(f"NaN check: {config.nan_check}")
                self._nan_mode = config.nan_check
            changes += self.precision.apply(sd_model, config)
            self.last_changes = changes
        if changes:
            log("[Accel] " + "; ".join(changes))
        return changes

    @contextlib.contextmanager
    def holding_queue_lock(self):
        """Mark this thread as the holder of the WebUI's queue lock (the benchmark), so work that would take
        it (a weight reload) does not deadlock."""
        self._thread.holds_queue_lock = True
        try:
            yield
        finally:
            self._thread.holds_queue_lock = False

    def queue_locked(self):
        """The WebUI's queue lock, or a no-op when this thread already holds it."""
        if getattr(self._thread, "holds_queue_lock", False):
            return contextlib.nullcontext()
        from modules import call_queue
        return call_queue.queue_lock

    def _undo_attention(self) -> None:
        from modules import sd_hijack
        current = sd_hijack.current_optimizer
        if current is not None and current is self.applied_optimization:
            current.undo()
            sd_hijack.current_optimizer = None  # initialize_rest() re-applies when it finds None
        self.applied_optimization = None


get = process_singleton(AccelExtension)  # cheap to create: no I/O, no CUDA
