"""Inductor's on-disk caches in a folder Accel owns, so a restart recompiles from cache.

The environment variables must be set before inductor compiles anything in this process (it reads
them when it first needs a cache path); :func:`use_cache_dir` is called before the first compile.
FX-graph caching (torch >= 2.2) and AOT-autograd caching (torch >= 2.5) are switched on when present.
Dynamo's tracing is cached as precompiled graphs where torch supports it (:mod:`.precompile`, saved in a
sub-folder, so :func:`cache_size` and :func:`clear_cache` include them).

One more per-process cost is remembered here: inductor's C++ backend probes each vector instruction set
the CPU reports by compiling and loading a test library in a subprocess (about 1.5 s on a 2-core CPU).
When a probe found every candidate usable, that verdict is saved (keyed by torch, Python, CPU features
and compiler) next to the precompiled graphs, and a process that loads one sets ``cpp.vec_isa_ok`` instead
of probing, which yields the same instruction sets. Any other verdict, or a changed key, probes as usual.

Ownership (the folder is named by a user setting, so it may be anything: ``models/``, the home folder, ``.``):
Accel uses, measures and clears only a folder it created, marked by a :data:`MARKER` file it writes there
(:func:`claim`). An existing folder is adopted only when it is empty; a non-empty folder without the marker
is refused with the reason, never used or cleared. Inside a marked folder :func:`clear_cache` deletes only
the entries Accel and torch write there (:func:`is_cache_entry`: inductor's and triton's sub-folders, the
precompiled graphs, the instruction-set verdict), walking with ``lstat`` and never following a link (a
link is unlinked, its target untouched); the marker and anything else stay. Precompiled graphs are
unpickled only from a marked folder (:func:`trust_refusal`): whoever can write there can run code in the
WebUI, as with inductor's own cache.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import stat
import sys
import time

_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
VEC_ISA_FILE = "accel-vec-isa.json"
MARKER = ".accel-cache"  # JSON {"created_by": "Accel", "version": 1, "created": ...}: Accel made this folder
MARKER_VERSION = 1
PRECOMPILED = "precompiled"
# What inductor (torch 2.1-2.13), triton and Accel write at the top of the cache folder; nothing else is cleared.
_CACHE_DIRS = frozenset({PRECOMPILED, "triton", "fxgraph", "aotautograd", "dynamo", "cache", "locks", "gcc",
                         "autoheuristic", "aoti_eager", "torch_cutlass", "unhashed_kernel_inputs",
                         "precompiled_headers", "bisect"})
_CACHE_DIR_PATTERN = re.compile(r"[a-z0-9]{2}")  # inductor's code cache: <cache>/<hash[1:3]>/
_CACHE_FILES = frozenset({VEC_ISA_FILE, "memoizer_cache.json", "memoizer_cache.lock"})
_CACHE_FILE_PATTERN = re.compile(r"(tmp\w+\.py|" + re.escape(VEC_ISA_FILE) + r"\.\d+\.tmp)")


class CacheDirRefused(RuntimeError):
    """The folder is not Accel's to use or clear; the message says why and what to do."""


def resolve_cache_dir(setting: str, root: str) -> str:
    """The compile cache folder for the ``accel_compile_cache_dir`` setting: blank is ``accel-cache/inductor``
    in the extension folder ``root``; ``~`` is expanded; a relative path is relative to ``root`` (not to
    the WebUI's working directory)."""
    text = (setting or "").strip()
    if not text:
        return os.path.join(root, "accel-cache", "inductor")
    path = os.path.expanduser(text)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))


def is_accel_cache(path: str) -> bool:
    """Whether ``path`` is a folder Accel created (holds Accel's marker as a regular file, not a link)."""
    marker = os.path.join(path, MARKER)
    try:
        if not os.path.isdir(path) or not stat.S_ISREG(os.lstat(marker).st_mode):
            return False
        with open(marker, encoding="utf-8") as f:
            return json.load(f).get("created_by") == "Accel"
    except (OSError, ValueError, AttributeError):
        return False


def is_cache_entry(name: str, is_dir: bool) -> bool:
    """Whether a top-level entry of a marked cache folder is one Accel or torch writes (and clearing deletes)."""
    if is_dir:
        return name in _CACHE_DIRS or bool(_CACHE_DIR_PATTERN.fullmatch(name))
    return name in _CACHE_FILES or bool(_CACHE_FILE_PATTERN.fullmatch(name))


def _write_marker(path: str) -> None:
    with open(os.path.join(path, MARKER), "x", encoding="utf-8") as f:
        json.dump({"created_by": "Accel", "version": MARKER_VERSION,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)


def claim(path: str, adopt_cache_only: bool = False) -> str:
    """Make ``path`` Accel's cache folder, or raise :class:`CacheDirRefused`. A missing folder is created and
    marked, an empty one marked, a marked one used as is. With ``adopt_cache_only`` (the default folder inside
    the extension, written by earlier versions without a marker) a folder holding nothing but cache entries is
    adopted too. Returns what was done ("created", "marked", "adopted", "" when already Accel's), for the log."""
    if is_accel_cache(path):
        return ""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise CacheDirRefused(f"{path} is not a folder; set accel_compile_cache_dir to a new or empty folder")
    try:
        done = "marked" if os.path.isdir(path) else "created"
        os.makedirs(path, exist_ok=True)
        with os.scandir(path) as entries:
            found = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        if found and not (adopt_cache_only and all(is_cache_entry(n, d) for n, d in found)):
            raise CacheDirRefused(
                f"{path} already holds {len(found)} file(s) or folder(s) and was not created by Accel (it has no "
                f"valid {MARKER} marker); Accel only uses and clears a compile cache folder it created: set "
                f"accel_compile_cache_dir to a new or empty folder, or leave it blank")
        _write_marker(path)
        return "adopted" if found else done
    except FileExistsError:  # another process marked it meanwhile, or something else appeared there
        if is_accel_cache(path):
            return ""
        raise CacheDirRefused(f"{path} was not created by Accel (something else appeared there meanwhile); "
                              f"set accel_compile_cache_dir to a new or empty folder") from None
    except OSError as e:
        raise CacheDirRefused(f"{path} cannot be used as the compile cache: {e}") from e


def trust_refusal(folder: str, file: str | None = None) -> str:
    """Why pickles in ``folder`` (a sub-folder of the cache, such as ``precompiled``) or its ``file`` must not
    be loaded ("" when they may): the parent must be marked as Accel's, and neither the sub-folder nor the
    file may be a link (a link could lead anywhere)."""
    root = os.path.dirname(os.path.normpath(folder))
    if not is_accel_cache(root):
        return f"{root} was not created by Accel (no {MARKER} marker)"
    if os.path.islink(folder) or (os.path.lexists(folder) and not os.path.isdir(folder)):
        return f"{folder} is a link or not a folder"
    if file is not None:
        try:
            if not stat.S_ISREG(os.lstat(file).st_mode):
                return f"{file} is not a regular file"
        except OSError as e:
            return f"{file}: {e.strerror or e}"
    return ""


def use_cache_dir(path: str) -> list[str]:
    """Point inductor (and triton) at ``path`` once :func:`claim` accepts it (else :class:`CacheDirRefused`,
    nothing changed); returns the cache features enabled, for the log."""
    claim(path)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    os.environ["TRITON_CACHE_DIR"] = os.path.join(path, "triton")
    enabled = ["inductor cache dir"]
    try:
        import torch._inductor.config as inductor_config
        if hasattr(inductor_config, "fx_graph_cache"):
            inductor_config.fx_graph_cache = True
            enabled.append("FX graph cache")
    except ImportError:
        pass
    try:
        import torch._functorch.config as functorch_config
        if hasattr(functorch_config, "enable_autograd_cache"):
            functorch_config.enable_autograd_cache = True
            enabled.append("AOT autograd cache")
    except ImportError:
        pass
    return enabled


def _vec_isa_candidates() -> tuple[str, list] | None:
    """(key, candidate ISAs) on x86 with inductor's C++ backend; None elsewhere."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        import torch
        import torch._inductor.config as inductor_config
        from torch._inductor import cpu_vec_isa
        flags = cpu_vec_isa.x86_isa_checker()
        candidates = [isa for isa in cpu_vec_isa.supported_vec_isa_list if all(f in flags for f in str(isa).split())]
    except (ImportError, AttributeError):
        return None
    compilers = [(c, shutil.which(c)) for c in ("g++", "c++", "clang++", os.environ.get("CXX") or "") if c]
    stamps = [(c, w, os.path.getmtime(w)) for c, w in compilers if w]
    key = repr((torch.__version__, sys.version, sys.executable, flags, [str(c) for c in candidates],
                repr(inductor_config.cpp.cxx), stamps))
    return key, candidates


def restore_vec_isa(path: str) -> bool:
    """Skip inductor's ISA probe when a saved verdict for this machine says every candidate passed."""
    try:
        import torch._inductor.config as inductor_config
        if inductor_config.cpp.vec_isa_ok is not None:
            return False
        with open(os.path.join(path, VEC_ISA_FILE), encoding="utf-8") as f:
            saved = json.load(f)
        found = _vec_isa_candidates()
        if found is None or saved.get("key") != found[0] or not saved.get("all_ok") or not found[1]:
            return False
        inductor_config.cpp.vec_isa_ok = True
        return True
    except (OSError, ValueError, ImportError, AttributeError):
        return False


def remember_vec_isa(path: str) -> None:
    """Save the verdict of the probe this process already ran (never runs one)."""
    try:
        import torch._inductor.config as inductor_config
        from torch._inductor import cpu_vec_isa
        if inductor_config.cpp.vec_isa_ok is not None or not cpu_vec_isa.valid_vec_isa_list.cache_info().currsize:
            return
        found = _vec_isa_candidates()
        if found is None:
            return
        all_ok = all(bool(isa) for isa in found[1])  # cached by inductor: the verdicts it reached
        os.makedirs(path, exist_ok=True)
        target = os.path.join(path, VEC_ISA_FILE)
        tmp = f"{target}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": found[0], "all_ok": all_ok}, f)
        os.replace(tmp, target)
    except (OSError, ImportError, AttributeError):
        pass


def _is_link(st: os.stat_result) -> bool:
    """A symbolic link, or a Windows junction (which ``S_ISLNK`` does not report)."""
    junction = getattr(stat, "IO_REPARSE_TAG_MOUNT_POINT", -1)
    return stat.S_ISLNK(st.st_mode) or getattr(st, "st_reparse_tag", 0) == junction


def _entry_size(path: str) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if _is_link(st) or not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                total += _entry_size(entry.path)
    except OSError:
        pass
    return total


def _remove(path: str) -> None:
    """Delete ``path``: a link or file is unlinked; a real folder is emptied (never through a link) and removed."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    if _is_link(st):  # a junction: removing it leaves its target alone
        os.rmdir(path)
        return
    with os.scandir(path) as entries:
        children = [entry.path for entry in entries]
    for child in children:
        _remove(child)
    os.rmdir(path)


def _cache_entries(path: str) -> tuple[list[str], list[str]]:
    """(paths of the cache entries, names of everything else) at the top of the marked folder ``path``."""
    ours, kept = [], []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name == MARKER:
                continue
            (ours if is_cache_entry(entry.name, entry.is_dir(follow_symlinks=False)) else kept).append(entry)
    return [e.path for e in ours], sorted(e.name for e in kept)


def cache_size(path: str) -> int:
    """Bytes in the cache entries of Accel's folder ``path`` (0 when it is missing or not Accel's); links are
    not followed. Walks every file: callers cache the result."""
    if not is_accel_cache(path):
        return 0
    try:
        return sum(_entry_size(p) for p in _cache_entries(path)[0])
    except OSError:
        return 0


def clear_cache(path: str) -> dict:
    """Delete the cache entries of Accel's folder ``path``, keeping the folder, its marker and anything else.
    Returns ``{"freed_bytes", "kept": [names not deleted], "errors": [...]}``; raises :class:`CacheDirRefused`
    for a folder Accel did not create (nothing is deleted)."""
    if not os.path.lexists(path) or (os.path.isdir(path) and not os.listdir(path)):
        return {"freed_bytes": 0, "kept": [], "errors": []}  # nothing to delete (an empty folder is marked on use)
    if not is_accel_cache(path):
        raise CacheDirRefused(f"{path} was not created by Accel (it has no {MARKER} marker), so Accel deletes "
                              f"nothing in it; Accel only clears a compile cache folder it created")
    ours, kept = _cache_entries(path)
    freed, errors = 0, []
    for entry in ours:
        size = _entry_size(entry)
        try:
            _remove(entry)
            freed += size
        except OSError as e:
            freed += size - _entry_size(entry)
            errors.append(f"{os.path.basename(entry)}: {e.strerror or e}")
    return {"freed_bytes": freed, "kept": kept, "errors": errors}
