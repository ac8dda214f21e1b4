"""The compile cache folder inside the WebUI: which folder, whether Accel may use it, its size, clearing it.

The folder comes from a free-text setting, so it may name ``models/``, the home folder or ``.``. The rules
(:mod:`lib_accel.compile.cache`): Accel uses and clears only a folder it created and marked; clearing deletes
only the entries inductor, triton and Accel write there, never following a link.

Changing ``accel_compile_cache_dir`` while the old folder exists: the new folder is claimed at the next compile
sync (created and marked, or refused with the reason, then compile runs without precompiled graphs); the old
one is left as it is (its caches can be reused by setting it back, or deleted by hand). Size and clear always
concern the folder the setting names now; ``in_use`` tells when inductor in this process still writes to another.

Size: walking the folder costs about 125 ms per 30,000 files, and ``GET /accel/v1/stats`` (polled every second)
and every page load read it, so the measurement is kept and taken again only when it may have changed: a
compile finished (on any module compiled here), the folder was cleared or changed, or a caller asks
(``measure=True``, the panel's Refresh).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

from ...compile.cache import (
    MARKER,
    PRECOMPILED,
    CacheDirRefused,
    cache_size,
    claim,
    clear_cache,
    is_accel_cache,
    resolve_cache_dir,
    use_cache_dir,
)
from ...compile.compiled_module import COMPILING, QUEUED


def compile_activity(modules: Iterable, warmer) -> str:
    """What compiles run or wait on any of ``modules`` (a :class:`~.warm_queue.WarmQueue` ``warmer`` counts
    sizes whose inputs are not built yet); "" when none does. Reads states without taking module locks."""
    busy = [f"{compiled.name}: {state.label} {state.status}" for compiled in list(modules)
            for state in list(compiled.shapes.values()) if state.status in (QUEUED, COMPILING)]
    waiting = warmer.pending() if warmer is not None else 0
    parts = busy[:4] + ([f"{len(busy) - 4} more"] if len(busy) > 4 else [])
    if waiting:
        parts.append(f"{waiting} size(s) waiting to be pre-warmed")
    return "; ".join(parts)


def _finished(modules: Iterable) -> tuple:
    """Changes whenever a compile of any of ``modules`` finishes (what inductor writes is on disk by then)."""
    return tuple((id(compiled), len(compiled.recompiles),
                  tuple((s.label, s.status, s.seconds) for s in list(compiled.shapes.values())
                        if s.status not in (QUEUED, COMPILING)))
                 for compiled in list(modules))


def ownership_refusal(folder: str) -> str:
    """Why Accel neither uses nor clears ``folder`` ("" when it is Accel's, missing or empty)."""
    if not os.path.lexists(folder) or is_accel_cache(folder):
        return ""
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    try:
        with os.scandir(folder) as entries:
            if next(entries, None) is None:
                return ""
    except OSError as e:
        return f"{folder}: {e.strerror or e}"
    return (f"{folder} holds files and was not created by Accel (no {MARKER} marker): Accel neither uses nor "
            f"clears it; set accel_compile_cache_dir to a new or empty folder, or leave it blank")


class CompileCache:
    def __init__(self, owner, modules: Iterable):
        self.owner = owner  # AccelExtension: config(), root, log
        self.modules = modules  # the CompiledModules whose finished compiles make the size stale
        self.in_use: str | None = None  # the folder inductor was pointed at in this process
        self._refused: dict[str, str] = {}  # folder -> why it is not used (said once in the log)
        self._lock = threading.Lock()
        self._memo: tuple | None = None  # (token, measurement)

    def folder(self, config) -> str:
        """The configured folder: ``~`` expanded, a relative path taken from the extension folder."""
        return resolve_cache_dir(config.compile_cache_dir, self.owner.root)

    def use(self, config) -> str:
        """Claim the configured folder and point inductor at it; returns its precompiled-graph folder, or "" (and
        one log line) when the folder is refused: compile then goes on with inductor's caches where they were
        (its temp folder, or the last Accel folder) and no precompiled graphs."""
        folder = self.folder(config)
        if folder == self.in_use and is_accel_cache(folder):
            return os.path.join(folder, PRECOMPILED)
        try:
            done = claim(folder, adopt_cache_only=not (config.compile_cache_dir or "").strip())
            enabled = use_cache_dir(folder)
        except CacheDirRefused as e:
            if self._refused.get(folder) != str(e):
                self.owner.log(f"[Accel] compile cache: not used: {e}; compiling without precompiled graphs")
            self._refused[folder] = str(e)
            return ""
        self._refused.pop(folder, None)
        self.in_use, self._memo = folder, None
        self.owner.log(f"[Accel] compile cache: {folder} ({', '.join(enabled)})"
                       + (f"; folder {done} as Accel's ({MARKER} marker written)" if done else ""))
        return os.path.join(folder, PRECOMPILED)

    def info(self, measure: bool = False) -> dict:
        """``{"dir", "bytes", "refused", "measured_at"[, "in_use"]}`` for the configured folder. ``bytes`` is
        the last measurement unless a compile finished, the folder was cleared or changed, or ``measure``."""
        folder = self.folder(self.owner.config())
        token = (folder, self.in_use, _finished(self.modules))
        with self._lock:
            if measure or self._memo is None or self._memo[0] != token:
                refused = self._refused.get(folder) or ownership_refusal(folder)
                self._memo = (token, {"bytes": 0 if refused else cache_size(folder), "refused": refused,
                                      "measured_at": time.strftime("%H:%M:%S")})
            measured = dict(self._memo[1])
        info = {"dir": folder, **measured}
        if self.in_use and self.in_use != folder:
            info["in_use"] = self.in_use
        return info

    def clear(self) -> dict:
        """Delete Accel's entries in the configured folder; :class:`CacheDirRefused` (a RuntimeError) for a folder
        Accel did not create. ``{"dir", "freed_bytes", "kept", "errors"[, "note"]}``."""
        folder = self.folder(self.owner.config())
        with self._lock:
            try:
                done = clear_cache(folder)
            finally:
                self._memo = None
        result = {"dir": folder, **done}
        if self.in_use and self.in_use != folder:
            result["note"] = (f"inductor in this session still writes to {self.in_use} (the folder set before); "
                              f"it was not cleared")
        return result
