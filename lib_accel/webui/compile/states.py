"""What the Compile section and ``GET /accel/v1/compile`` say about each checkpoint, and the log line per change.

Every state is derived when it is asked for, from what is installed now and the current settings; nothing
is remembered from an earlier load except what only a load can tell: why the checkpoint loaded now was
refused (its refusal depends on the model, e.g. ``--medvram``). So:

* the loaded checkpoint is "compiled" exactly while a compiled call is installed on its UNet, else "eager"
  or "refused", with the reason (compile is off, not whitelisted, or the refusal of its last sync);
* a checkpoint that is not loaded shows what would happen if it were loaded now: "will compile" (when
  loaded), "eager" (compile is off / not in the compile whitelist) or "refused" (a reason that holds for
  any checkpoint: no torch.compile, an unusable backend, a bad pre-warm size, Lora's functional mode...);
* a whitelist entry that names no listed checkpoint is "not found".

:class:`CompileStates` also logs each transition of the loaded checkpoint once (compiled, eager with its
reason, refused with its reason; a switch back or a re-enable is a transition like any other), and nothing
when the state shown did not change. Compile staying off across model loads is not a transition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

COMPILED, EAGER, REFUSED, WILL_COMPILE, NOT_FOUND = "compiled", "eager", "refused", "will compile", "not found"
OFF = "compile is off"
NOT_LISTED = "not in the compile whitelist"
WHEN_LOADED = "compiles when it is loaded"
NOT_INSTALLED = "not installed: the settings apply at the next model load or settings change"
UNLISTED = "whitelisted, but no checkpoint of that name is listed"


def matches_whitelist(info: Any, whitelist: Iterable[str]) -> bool:
    """Whitelisted by title ("name [hash]") or by name alone, so a re-hashed file stays whitelisted."""
    if info is None:
        return False
    names = {getattr(info, "title", None), getattr(info, "name", None), getattr(info, "model_name", None)}
    return any(entry in names or entry.split(" [")[0] in names for entry in whitelist)


def config_reason(info: Any, config: Any) -> str:
    """Why the settings alone keep ``info`` eager ("" when compile is on and it is whitelisted)."""
    if not config.compile_enabled:
        return OFF
    if not matches_whitelist(info, config.compile_checkpoints):
        return NOT_LISTED
    return ""


def title_of(info: Any) -> str:
    return getattr(info, "title", None) or "unknown checkpoint"


def _key(info: Any) -> str:
    return getattr(info, "filename", None) or title_of(info)


def options_text(options: Any) -> str:
    """How a compiled UNet runs: mode, backend, shape policy."""
    return f"{options.mode}, {options.backend}, {options.dynamic} shapes"


class CompileStates:
    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self._seen: dict[str, Any] = {}  # filename -> checkpoint info of every checkpoint loaded this session
        self._refused: tuple[str, str] | None = None  # (title, reason): the last sync refused the loaded one
        self._announced: tuple[str, str, str, str] | None = None  # (title, status, reason, options) last logged

    # -- transitions -----------------------------------------------------------------------------------
    def settle(self, info: Any, status: str, reason: str = "", options: Any = None, ready: int = 0) -> bool:
        """Record what a sync did for the loaded checkpoint ``info`` and log it when the state shown changed;
        True when a line was logged. ``ready``: graphs the UNet already holds (a switch back reuses them)."""
        title = title_of(info)
        if info is not None:
            self._seen[_key(info)] = info
        self._refused = (title, reason) if status == REFUSED else None
        detail = options_text(options) if status == COMPILED and options is not None else ""
        state = (title, status, reason, detail)
        quiet = reason == OFF and (self._announced is None or self._announced[2] == OFF)
        if state == self._announced or quiet:  # compile never on, or still off: nothing changed
            self._announced = state
            return False
        self._announced = state
        if status == COMPILED:
            kept = f"; {ready} compiled size(s) ready from before" if ready else ""
            self.log(f"[Accel] compile: {title} runs compiled ({detail}{kept})")
        elif status == REFUSED:
            self.log(f"[Accel] compile: {title} not compiled: {reason}")
        else:
            self.log(f"[Accel] compile: {title} runs eager ({reason})")
        return True

    def forget_installed(self) -> None:
        """Accel unloaded: everything was uninstalled, so the next sync's state is a transition again."""
        self._announced = None
        self._refused = None

    # -- states ----------------------------------------------------------------------------------------
    def loaded_state(self, info: Any, installed: bool, config: Any) -> dict:
        """The loaded checkpoint: compiled exactly while a compiled call is installed on its UNet."""
        if installed:
            return {"status": COMPILED, "reason": "", "loaded": True}
        reason = config_reason(info, config)
        if reason:
            return {"status": EAGER, "reason": reason, "loaded": True}
        if self._refused is not None and self._refused[0] == title_of(info):
            return {"status": REFUSED, "reason": self._refused[1], "loaded": True}
        return {"status": EAGER, "reason": NOT_INSTALLED, "loaded": True}

    def checkpoints(self, loaded_info: Any, loaded: dict | None, config: Any, listed: Iterable[Any],
                    refusal: Callable[[], str]) -> dict[str, dict]:
        """``{title: {"status", "reason", "loaded"}}``: the loaded checkpoint first, then those loaded before
        this session, then whitelisted ones from ``listed`` (the WebUI's checkpoints), then whitelist entries
        naming none of them. ``refusal()`` says why no checkpoint would compile now ("" when one would)."""
        infos: dict[str, Any] = {}
        if loaded_info is not None:
            infos[_key(loaded_info)] = loaded_info
        for key, info in self._seen.items():
            infos.setdefault(key, info)
        whitelist = tuple(config.compile_checkpoints or ())
        for info in listed:
            if matches_whitelist(info, whitelist):
                infos.setdefault(_key(info), info)
        states: dict[str, dict] = {}
        general: str | None = None
        for info in infos.values():
            if info is loaded_info and loaded is not None:
                states[title_of(info)] = dict(loaded)
                continue
            reason = config_reason(info, config)
            if not reason:
                general = refusal() if general is None else general
            state = {"status": EAGER, "reason": reason} if reason else \
                {"status": REFUSED, "reason": f"would not compile: {general}"} if general else \
                {"status": WILL_COMPILE, "reason": WHEN_LOADED}
            states.setdefault(title_of(info), {**state, "loaded": False})
        for entry in whitelist:
            if not any(matches_whitelist(info, (entry,)) for info in infos.values()):
                states.setdefault(entry, {"status": NOT_FOUND, "reason": UNLISTED, "loaded": False})
        return states
