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
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys

_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
VEC_ISA_FILE = "accel-vec-isa.json"


def use_cache_dir(path: str) -> list[str]:
    """Point inductor (and triton) at ``path``; returns the cache features enabled, for the log."""
    os.makedirs(path, exist_ok=True)
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


def cache_size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def clear_cache(path: str) -> int:
    """Delete the cache folder's contents (keeping the folder); returns bytes freed."""
    if not os.path.isdir(path):
        return 0
    freed = cache_size(path)
    for entry in os.listdir(path):
        full = os.path.join(path, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.remove(full)
            except OSError:
                pass
    return freed
