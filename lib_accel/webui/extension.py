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
from ..runtime.toggles import RuntimeToggles, make_nan_check
from ..singleton import process_singleton
from . import options
from .compile.glue import CompileController, unet_of
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
        self._applied_config: AccelConfig | None = None
        self._noted_overrides: set[tuple[str, str]] = set()
        self._load_logged = False  # the "loaded:" line of this load (start-up or Reload UI) was logged

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

    def applied_config(self) -> AccelConfig | None:
        """The config the runtime toggles were last applied from (None before the first apply).

        It can differ from :meth:`config`: ``override_settings`` put values in ``shared.opts`` for one
        generation without the settings' onchange (see :meth:`note_overrides`), so the infotext reports the
        toggles from here, i.e. what actually ran."""
        return self._applied_config

    def note_overrides(self, override_settings: dict | None) -> list[str]:
        """Say, once per key and value, which ``accel_*`` override_settings this generation does not apply.

        The WebUI sets override_settings with ``opts.set(..., run_callbacks=False)`` and restores them after
        the job, so Accel's onchange never runs for them: only settings read per image
        (:data:`options.PER_GENERATION`) take effect. The toggles, precision and compile settings stay as
        last applied (a checkpoint load during the job applies the overrides, which is then true). Returns
        the messages logged now."""
        applied = self._applied_config or AccelConfig()  # nothing applied yet: the WebUI's own state
        messages = []
        for key, value in (override_settings or {}).items():
            if not options.is_setting(key) or key in options.PER_GENERATION:
                continue
            now = getattr(applied, key[len("accel_"):], None)
            if options.validated(key, value) == now or (key, repr(value)) in self._noted_overrides:
                continue
            self._noted_overrides.add((key, repr(value)))
            messages.append(f"[Accel] override_settings {key}={value!r} is not applied to this generation: Accel "
                            f"applies {key} when the setting changes (Settings, POST /sdapi/v1/options); the "
                            f"image runs with {now!r} as applied, and its infotext says so")
        for message in messages:
            log(message)
        return messages

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
        """Apply the settings and the stage timers, then log what is in place: the counterpart of the unload
        line, once per load (start-up, Reload UI). The stage timers' own app_started callback (the WebUI may
        order it before or after this one) re-applies the same patches; the count does not change. Patches
        added later (a model load, the first compiled call) are counted by the next unload only."""
        from . import live_stats
        self.on_settings_changed()
        live_stats.get().on_app_started(demo, app)
        if not self._load_logged:
            self._load_logged = True
            log(f"[Accel] loaded: {self.patches.count()} patch(es) applied")

    def on_settings_changed(self) -> None:
        with self.queue_held():  # weight conversions and compile installs never race a running generation
            sd_model = loaded_model()
            self.apply_runtime(sd_model)
            if sd_model is not None:
                self.compiler.sync(sd_model)

    def on_script_unloaded(self) -> None:
        """Undo everything; Reload UI re-executes the script and the WebUI re-applies attention."""
        with self._lock:
            self.compiler.unload(loaded_model())
            self.precision.restore(loaded_model())
            changes = self.toggles.undo()
            undone = self.patches.undo_all()
            self._nan_mode = "default"
            self._undo_attention()
            self._load_logged = False
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
            self._applied_config = config
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

    @contextlib.contextmanager
    def queue_held(self):
        """Hold the WebUI's queue lock, marked on this thread (a no-op where it is held already: the benchmark).

        v1.10.1 wraps its own weight-changing onchanges in ``wrap_queued_call`` (``sd_model_checkpoint``,
        ``sd_vae``, ``cross_attention_optimization``), but an ``OptionInfo(onchange=...)`` runs unlocked, on
        the Settings page's or the API's thread, while an image generates: converting the UNet's dtype then
        failed the steps still running. A change made during a generation therefore waits for it to finish
        (one log line says so); the lock is taken before Accel's own lock, the order a model load inside a
        generation takes them in."""
        if getattr(self._thread, "holds_queue_lock", False):
            yield
            return
        from modules import call_queue
        lock = call_queue.queue_lock
        if not lock.acquire(blocking=False):
            log("[Accel] a generation is running: the settings change applies when it has finished")
            lock.acquire()
        try:
            with self.holding_queue_lock():
                yield
        finally:
            lock.release()

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
