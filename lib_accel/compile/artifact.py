"""Precompiled graph artifacts: dynamo's trace, its guards and inductor's code for one call, on disk.

Inductor's FX-graph and AOT-autograd caches (:mod:`.cache`) spare a restart the code generation, but dynamo
still re-traces the UNet and rebuilds its guards. Where torch can compile a function ahead of time
(``torch.compile(fn, fullgraph=True).aot_compile(...)`` and ``torch.compiler.load_compiled_function``,
detected by :func:`unsupported_reason`), Accel saves one artifact per call signature and loads it in the
next process instead of tracing. Nothing is used unless it provably matches:

* the file name hashes what Accel sees before tracing: torch, Python, machine, compile options, the call
  signature (shapes, dtypes, devices, grad/autocast), the module's architecture (every submodule's class,
  forward code and plain attributes, every parameter's and buffer's name, shape, dtype and device) and
  the host's key (the WebUI's attention choice and options);
* torch's own serialisable guards travel with the artifact and are checked at load and on every call
  (tensor metadata, global state, module attributes, option values read through globals);
* guards torch cannot serialise (identity of functions, classes, modules: the attention runner in a
  forward's closure, module-level functions the UNet calls) are recorded at save time as portable
  descriptions (module, qualified name, code hash), compared at load, and re-checked by identity before
  every call in-process; so is every submodule class's ``forward``, which dynamo does not guard at all
  (the WebUI swaps ``CrossAttention.forward`` to change the attention optimization).

A missing, stale or corrupt artifact is never used: :class:`PrecompileError` carries the reason and the
caller compiles normally (and rewrites the file). Weights are graph inputs (read at run time), so
in-place weight loads and LoRA reach a loaded graph exactly as they reach a freshly compiled one.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import tempfile
import types

import torch

from . import torch_pickling
from .fingerprint import FORMAT, SUFFIX, describe

_UNSERIALISABLE = ("DICT_VERSION", "NN_MODULE", "ID_MATCH", "FUNCTION_MATCH", "CLASS_MATCH", "MODULE_MATCH",
                   "CLOSURE_MATCH", "WEAKREF_ALIVE")
_BUILTINS_ALIAS = re.compile(r"G\['(__builtins_dict___\d+)'\]")


class PrecompileError(RuntimeError):
    """Why a precompiled graph was not built, saved or used."""


def unsupported_reason() -> str:
    """Why this torch cannot save and load precompiled graphs ("" when it can)."""
    try:
        import torch._dynamo.config as dynamo_config
        from torch._dynamo.aot_compile import AOTCompiledFunction
        from torch._dynamo.types import GuardFilterEntry  # noqa: F401  (the guard filter's argument type)
    except ImportError:
        return f"torch {torch.__version__} has no ahead-of-time dynamo compile (torch.compile(...).aot_compile)"
    needed = ("guard_check", "disable_guard_check", "prepare_f_locals", "serialize", "deserialize")
    missing = [name for name in needed if not hasattr(AOTCompiledFunction, name)]
    if missing or not hasattr(torch.compiler, "load_compiled_function"):
        lacking = ", ".join(missing) or "load_compiled_function"
        return f"torch {torch.__version__}'s ahead-of-time compile lacks {lacking}"
    if not getattr(dynamo_config, "enable_aot_compile", False):
        return "torch._dynamo.config.enable_aot_compile is off"
    return ""


def module_refusal(module: torch.nn.Module) -> str:
    """Why a call of ``module`` runs more than ``module.forward`` (hooks, which :func:`call_forward` skips)
    or an instance-level forward ("" when neither)."""
    if "forward" in vars(module):
        return "the module has an instance forward"
    if any(getattr(module, name, None) for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                     "_backward_pre_hooks")):
        return "the module has hooks"
    has_global = getattr(torch.nn.modules.module, "_has_any_global_hook", None)
    if has_global is not None and has_global():
        return "global module hooks are registered"
    return ""


# -- identity guards Accel checks itself ---------------------------------------------------------------------
def _closure_vars() -> dict:
    try:
        from torch._dynamo.guards import _get_closure_vars
        return dict(_get_closure_vars())
    except ImportError:
        return {}


class _Recorder:
    """guard_filter_fn: keeps every guard torch can serialise, notes the others for :class:`_IdentityGuard`."""

    def __init__(self):
        self.dropped: list[tuple[str, str]] = []

    def __call__(self, entries):
        try:
            from torch._dynamo.guards import CheckFunctionManager
            unserialisable = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
        except (ImportError, AttributeError):
            unserialisable = set(_UNSERIALISABLE)
        self.dropped, keep, seen = [], [], set()
        for entry in entries:
            types_ = {entry.guard_type, *(getattr(entry, "derived_guard_types", None) or ())}
            drop = bool(types_ & unserialisable)
            # the guard's full source (L['self']..., G[...]); the entry's own name may be relative
            name = getattr(getattr(entry, "orig_guard", None), "name", None) or entry.name
            if drop and (name, entry.guard_type) not in seen:
                seen.add((name, entry.guard_type))
                self.dropped.append((name, entry.guard_type))
            keep.append(not drop)
        return keep


class _IdentityGuard:
    def __init__(self, name: str, guard_type: str):
        self.name, self.guard_type = name, guard_type
        self.code = compile(name, f"<guard {name[:60]}>", "eval")
        self.expected = None
        self.description = ""

    def value(self, scope: dict, closure_vars: dict):
        return eval(self.code, scope, closure_vars)  # a dynamo guard source expression, as torch itself evaluates

    def same(self, value) -> bool:
        if self.guard_type == "CLOSURE_MATCH" and isinstance(value, types.FunctionType) \
                and isinstance(self.expected, types.FunctionType):
            return value.__code__ is self.expected.__code__
        return value is self.expected


class Artifact:
    """A precompiled graph for one call signature; call :meth:`stale_reason` before each call."""

    def __init__(self, fn, guards: list[_IdentityGuard], live_globals: dict, origin: str, meta: dict | None = None):
        self.fn = fn
        self.meta = meta or {}
        self.guards = guards
        self.live_globals = live_globals
        self.origin = origin  # "built" or "loaded"
        self.closure_vars = _closure_vars()
        self.forwards: list[tuple[type, object]] = []  # (class, its forward) of every submodule class
        fn.disable_guard_check()  # checked in stale_reason, which tells a stale graph from a failing one

    def _scope(self, module, args, kwargs) -> dict:
        g = dict(self.fn.fn.__globals__)
        g.update(self.live_globals)
        for guard in self.guards:  # dynamo's alias for the builtins of the traced frame
            for alias in _BUILTINS_ALIAS.findall(guard.name):
                g.setdefault(alias, builtins.__dict__)
        return {"L": self.fn.prepare_f_locals(module, *args, **kwargs), "G": g, "__builtins__": builtins.__dict__}

    def pin(self, module, args, kwargs, recorded: dict[str, str] | None = None) -> None:
        """Capture the identity-guarded objects now; with ``recorded`` (from a file) they must match it."""
        scope = self._scope(module, args, kwargs)
        for guard in self.guards:
            try:
                value = guard.value(scope, self.closure_vars)
            except Exception as e:
                raise PrecompileError(f"cannot evaluate guard {guard.name}: {type(e).__name__}: {e}") from e
            description = describe(value)
            if recorded is not None and recorded.get(guard.name) != description:
                raise PrecompileError(f"{guard.name} is {description}, the saved graph has "
                                      f"{recorded.get(guard.name, 'no such guard')}")
            guard.expected, guard.description = value, description
        # dynamo does not guard a submodule class's forward (the WebUI swaps CrossAttention.forward when the
        # attention optimization changes); the file name covers them across processes, this within one
        classes = {type(sub) for sub in module.modules()}
        self.forwards = [(cls, cls.forward) for cls in sorted(classes, key=lambda c: (c.__module__, c.__qualname__))]

    def stale_reason(self, module, args, kwargs) -> str:
        """"" when this graph may run for these inputs; else which guard fails."""
        for cls, forward in self.forwards:
            if cls.forward is not forward:
                return f"{cls.__qualname__}.forward changed to {describe(cls.forward)} (was {describe(forward)})"
        scope = self._scope(module, args, kwargs)
        for guard in self.guards:
            try:
                value = guard.value(scope, self.closure_vars)
            except Exception as e:
                return f"{guard.name} cannot be read ({type(e).__name__})"
            if not guard.same(value):
                return f"{guard.name} changed to {describe(value)} (was {guard.description})"
        if not self.fn.guard_check(module, *args, **kwargs):
            manager = self.fn._artifacts.guard_manager
            verbose = manager.check_verbose(scope["L"]) if hasattr(manager, "check_verbose") else None
            return f"guard failed: {' '.join(str(getattr(verbose, 'verbose_code_parts', verbose)).split())[:300]}"
        return ""

    def __call__(self, module, args, kwargs):
        return self.fn(module, *args, **kwargs)


def call_forward(module, *args, **kwargs):
    """What is compiled: ``module.forward``, looked up when traced. Not ``type(module).forward`` itself: the
    WebUI wraps ``UNetModel.forward`` in a closure, and torch cannot save guards on the traced function's
    own closure variables (those of functions it calls are reached through the class, and saved)."""
    return module.forward(*args, **kwargs)


def build(module: torch.nn.Module, args: tuple, kwargs: dict, mode: str = "default",
          dynamic: bool | None = False) -> Artifact:
    """Trace ``module.forward`` in one graph and compile it with inductor, ready to save."""
    forward = call_forward
    recorder = _Recorder()
    options = dict(torch._inductor.list_mode_options(mode, dynamic)) if mode != "default" else {}
    options["guard_filter_fn"] = recorder
    compiled = torch.compile(forward, fullgraph=True, dynamic=dynamic, options=options)
    with torch_pickling.fixed_picklers():  # the guards are pickled while compiling
        fn = compiled.aot_compile(((module, *args), kwargs))
    artifact = Artifact(fn, [_IdentityGuard(n, t) for n, t in recorder.dropped], forward.__globals__, "built")
    artifact.pin(module, args, kwargs)
    return artifact


def save(artifact: Artifact, path: str, meta: dict) -> int:
    """Write ``artifact`` atomically; returns its size in bytes."""
    from torch._dynamo.aot_compile import AOTCompiledFunction
    try:
        with torch_pickling.fixed_picklers():
            data = AOTCompiledFunction.serialize(artifact.fn).serialized_data
    except Exception as e:
        raise PrecompileError(f"torch could not serialise the graph: {type(e).__name__}: {e}") from e
    blob = pickle.dumps({"format": FORMAT, "torch": torch.__version__, "meta": meta, "artifact": data,
                         "guards": [(g.name, g.guard_type, g.description) for g in artifact.guards]})
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return len(blob)


def load(path: str, module: torch.nn.Module, args: tuple, kwargs: dict, prepare=None) -> Artifact:
    """The saved graph for these inputs, checked against them; :class:`PrecompileError` says why not.
    ``prepare(meta)`` runs before torch builds the guards (re-adopting saved host state); it returns why
    the graph cannot be used, or ""."""
    try:
        with open(path, "rb") as f:
            blob = pickle.load(f)  # Accel's own file in its own cache folder, like inductor's cached pickles
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise PrecompileError("unknown file format")
        if blob.get("torch") != torch.__version__:
            raise PrecompileError(f"saved by torch {blob.get('torch')}")
        reason = prepare(blob.get("meta") or {}) if prepare is not None else ""
        if reason:
            raise PrecompileError(reason)
        forward = call_forward
        torch_pickling.register()  # files name its picklers' methods
        fn = torch.compiler.load_compiled_function(io.BytesIO(blob["artifact"]), f_globals=forward.__globals__)
        artifact = Artifact(fn, [_IdentityGuard(n, t) for n, t, _ in blob["guards"]], forward.__globals__, "loaded",
                            blob.get("meta"))
    except PrecompileError:
        raise
    except Exception as e:
        raise PrecompileError(f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
    artifact.pin(module, args, kwargs, recorded={n: d for n, _t, d in blob["guards"]})
    reason = artifact.stale_reason(module, args, kwargs)
    if reason:
        raise PrecompileError(reason)
    return artifact
