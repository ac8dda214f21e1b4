"""Portable descriptions of what a graph is specialised on: stable across processes, cheap to compute.

:func:`describe` names an object the way another process can recognise it (module, qualified name, a
hash of a function's code; never an address); :func:`architecture` lists a module's structure, forwards
and tensor metadata; :func:`artifact_path` hashes such lists into a file name.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import types

import torch

FORMAT = 1
SUFFIX = ".accel-aot"
_SCALARS = (bool, int, float, str, type(None), torch.dtype)


def _const(value) -> str:
    if isinstance(value, types.CodeType):
        return _code_hash(value)
    if isinstance(value, (frozenset, set)):  # iteration order follows string hashing, which varies per process
        return "{" + ",".join(sorted(_const(v) for v in value)) + "}"
    if isinstance(value, tuple):
        return "(" + ",".join(_const(v) for v in value) + ")"
    return repr(value)


@functools.lru_cache(maxsize=4096)
def _code_hash(code: types.CodeType) -> str:
    """Stable across processes (``marshal`` output is not: it depends on reference counts)."""
    parts = (code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
             getattr(code, "co_qualname", code.co_name), code.co_argcount, code.co_kwonlyargcount, code.co_flags,
             tuple(_const(c) for c in code.co_consts))
    return hashlib.sha256(repr(parts).encode("utf-8", "backslashreplace")).hexdigest()[:16]


def describe(value) -> str:
    """What an identity guard pinned, in a form that means the same in another process."""
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if isinstance(value, types.MethodType):
        return f"{describe(value.__func__)} bound to {describe(type(value.__self__))}"
    if isinstance(value, types.FunctionType):
        return f"function {value.__module__}.{value.__qualname__} {_code_hash(value.__code__)}"
    if isinstance(value, type):
        return f"class {value.__module__}.{value.__qualname__}"
    if callable(value) and hasattr(value, "__qualname__") and not hasattr(value, "__dict__"):
        return f"builtin {getattr(value, '__module__', None)}.{value.__qualname__}"
    if isinstance(value, _SCALARS):
        return repr(value)
    name = getattr(value, "name", None)
    return f"object of {describe(type(value))}" + (f" named {name!r}" if isinstance(name, str) else "")


def _function_fingerprint(fn) -> str:
    """A forward: its description, and its closure's contents one level deep (the attention runner)."""
    text = describe(fn)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            text += f" [{describe(cell.cell_contents)}]"
        except ValueError:  # an empty cell
            text += " [empty]"
    return text


def architecture(module: torch.nn.Module) -> list[str]:
    """Every submodule's class, forward and plain attributes; every parameter's and buffer's metadata."""
    rows, seen = [], {}
    for name, sub in module.named_modules():
        forward = vars(sub).get("forward") or type(sub).forward
        key = id(forward)
        if key not in seen:
            seen[key] = _function_fingerprint(forward)
        attrs = sorted((k, repr(v)) for k, v in vars(sub).items() if not k.startswith("_") and isinstance(v, _SCALARS))
        rows.append(f"M {name} {describe(type(sub))} {seen[key]} {attrs}")
    for kind, items in (("P", module.named_parameters()), ("B", module.named_buffers())):
        for name, t in items:
            rows.append(f"{kind} {name} {tuple(t.shape)} {t.dtype} {t.device} {t.requires_grad}")
    return rows


def artifact_path(folder: str, parts: list[str]) -> str:
    """``folder/<hash of parts>.accel-aot``; ``parts`` name everything the graph is specialised on."""
    head = [f"accel precompile {FORMAT}", f"torch {torch.__version__}", f"python {sys.version}",
            f"machine {platform.machine()} {sys.platform}"]
    digest = hashlib.sha256("\n".join(head + parts).encode("utf-8", "backslashreplace")).hexdigest()
    return os.path.join(folder, digest[:40] + SUFFIX)
