"""Inductor's on-disk caches in a folder Accel owns, so a restart recompiles from cache.

The environment variables must be set before inductor compiles anything in this process (it reads
them when it first needs a cache path); :func:`use_cache_dir` is called before the first compile.
FX-graph caching (torch >= 2.2) and AOT-autograd caching (torch >= 2.5) are switched on when present;
what cannot be cached (dynamo's tracing) is re-done on every start.
"""

from __future__ import annotations

import os
import shutil

_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


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
