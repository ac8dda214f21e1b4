"""Torch's own layer forwards for Accel's compiles and compiled UNet calls, on their thread only.

The built-in Lora extension replaces the class ``forward`` of ``torch.nn.Linear``, ``Conv2d``, ``GroupNorm``,
``LayerNorm`` and ``MultiheadAttention`` with forwards that apply the selected networks' weights in place,
lazily (``networks.network_<Layer>_forward``), and keeps torch's in ``networks.originals``. A compile must
not trace that Python (it would be frozen into the graph, or break it at every layer), and the eager priming
call a compile makes must not apply weights from the compile thread. Swapping the class forwards back to
torch's for the length of a compile would change them for the whole process: an image generating meanwhile
would lose the text-encoder part of its LoRA (the UNet part is applied by :class:`.hooks.LoraBridge` before each
call, the text encoder relies on Lora's forwards).

So each of those classes gets, once, a dispatching forward (through the :class:`PatchOwner`) that runs
torch's forward while dynamo traces and on a thread inside :func:`torch_forwards`, and the forward it
replaced (Lora's) everywhere else: what any other thread runs is unchanged. The dispatcher for one pair of
forwards is one object, so graphs that record the class forwards stay valid across calls.

Unload and Reload UI: Lora undoes its patches with ``modules.patches`` too, and either extension may unload
first. :func:`remove` restores what the dispatcher replaced only while the dispatcher is still installed;
when Lora has already put torch's forward back, Accel's record is dropped instead of restoring Lora's stale
forward over it (whose ``originals`` would then point at itself after Lora's next load).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ... import features

LAYERS = ("Linear", "Conv2d", "GroupNorm", "LayerNorm", "MultiheadAttention")
_local = threading.local()
_install_lock = threading.Lock()
_dispatchers: dict[tuple, Callable] = {}


def in_torch_forwards() -> bool:
    """True on a thread inside :func:`torch_forwards`."""
    return getattr(_local, "depth", 0) > 0


def _dispatcher(name: str, torch_forward: Callable, other_forward: Callable) -> Callable:
    key = (name, torch_forward, other_forward)
    if key not in _dispatchers:
        tracing = features.tracing_probe()

        def accel_thread_forward(self, *args, **kwargs):
            # tracing() is a constant True while dynamo traces, so the thread-local is never traced
            if tracing() or getattr(_local, "depth", 0):
                return torch_forward(self, *args, **kwargs)
            return other_forward(self, *args, **kwargs)

        accel_thread_forward.__qualname__ = f"accel_thread_forward_{name}"
        accel_thread_forward._accel_dispatch = (torch_forward, other_forward)
        _dispatchers[key] = accel_thread_forward
    return _dispatchers[key]


def _installed(cls: type) -> tuple | None:
    return getattr(cls.__dict__.get("forward"), "_accel_dispatch", None)


def ensure_installed(originals: Any, patches: Any) -> int:
    """Put the dispatcher on every layer class whose torch forward ``originals`` (Lora's ``LoraPatches``) holds;
    returns how many classes dispatch. Idempotent and cheap when already in place."""
    count = 0
    with _install_lock:
        for name in LAYERS:
            cls = getattr(torch.nn, name)
            torch_forward = getattr(originals, f"{name}_forward", None)
            mine = _installed(cls)
            if torch_forward is None:  # Lora's patches are undone: nothing to bypass
                _remove_one(cls, patches)
                continue
            count += 1
            if mine is not None and mine[0] is torch_forward:
                continue
            _remove_one(cls, patches)
            current = cls.__dict__.get("forward", cls.forward)
            patches.patch(cls, "forward", _dispatcher(name, torch_forward, current))
    return count


def _remove_one(cls: type, patches: Any) -> None:
    if not patches.is_patched(cls, "forward"):
        return
    if _installed(cls) is not None:
        patches.undo(cls, "forward")  # ours is on top: give back what it replaced
    else:
        patches.forget(cls, "forward")  # someone (Lora's undo) replaced ours: leave theirs


def remove(patches: Any) -> None:
    """Take the dispatchers off (unload); see the module docstring for why this never clobbers Lora's undo."""
    with _install_lock:
        for name in LAYERS:
            _remove_one(getattr(torch.nn, name), patches)


@contextlib.contextmanager
def torch_forwards(originals: Any, patches: Any) -> Iterator[None]:
    """On this thread only, layers run torch's forwards (``originals``); other threads are unaffected."""
    ensure_installed(originals, patches)
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1
