"""Compiling a module in place, one static graph per call signature, without ever failing or stalling a call.

:class:`CompiledModule` installs itself as the module's ``_compiled_call_impl`` (what
``nn.Module.compile()`` sets, torch >= 2.2) or, on torch 2.1, as an instance ``forward``. Either way the
module object, its parameters and its ``state_dict`` keys are unchanged (no ``_orig_mod.`` prefix), so the
WebUI's later weight loads, LoRA and hypernetworks keep working on the same tensors.

Per call signature (:func:`~lib_accel.compile.buckets.call_key`):

* ``ready``   - the compiled graph runs. A failure at run time (OOM included) marks the signature
  ``failed`` and the call is re-run eagerly: the user sees one message, never a failed image.
* unseen      - with ``background=True`` the call runs eagerly now and a copy of its inputs is queued for
  the :class:`CompileWorker`, so a new resolution or batch size never stalls generation; with
  ``background=False`` it compiles inline (the first image at that size waits).
* ``queued`` / ``compiling`` - eager until the worker is done.
* ``failed`` / ``over limit`` - eager, for good (the limit bounds graphs per module: ``cache_limit``).

Dynamo guards on grad mode and autocast; the worker compiles under the state captured from the call
that queued the signature, so the graph it builds is the one the next real call hits.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .buckets import call_key, call_label
from .worker import CompileWorker, default_worker

READY, QUEUED, COMPILING, FAILED, OVER_LIMIT = "ready", "queued", "compiling", "failed", "over limit"
DYNAMIC = {"static": False, "dynamic": True, "auto": None}
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class CompileOptions:
    mode: str = "default"
    backend: str = "inductor"
    dynamic: str = "static"
    cache_limit: int = 8
    background: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown compile mode {self.mode!r}; one of {', '.join(MODES)}")
        if self.dynamic not in DYNAMIC:
            raise ValueError(f"unknown dynamic policy {self.dynamic!r}; one of {', '.join(DYNAMIC)}")
        if self.cache_limit < 1:
            raise ValueError("cache_limit must be at least 1")

    def torch_compile_kwargs(self) -> dict:
        kwargs = {"backend": self.backend, "dynamic": DYNAMIC[self.dynamic]}
        if self.mode != "default" and self.backend == "inductor":
            kwargs["mode"] = self.mode
        return kwargs


class CompileHooks:
    """What the host (the WebUI adapter) plugs in; the defaults do nothing."""

    def before_call(self) -> None:
        """Runs before every call, compiled or not (e.g. apply pending LoRA weights in place)."""

    def compiled_call_context(self):
        """Active around compiled calls and compiles (e.g. torch's own Linear/Conv forwards)."""
        return contextlib.nullcontext()


@dataclass
class ShapeState:
    label: str
    status: str
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    seconds: float | None = None
    reason: str = ""
    calls: int = 0
    submitted: bool = False
    cache: str = ""

    def describe(self) -> str:
        if self.status == COMPILING and self.started_at is not None:
            return f"compiling {self.label} for {time.monotonic() - self.started_at:.0f} s"
        if self.status == READY:
            return f"{self.label}: ready (compiled in {self.seconds:.1f} s)"
        return f"{self.label}: {self.status}" + (f" ({self.reason})" if self.reason else "")


def cache_counters() -> dict[str, int]:
    """Inductor FX-graph and AOT-autograd cache hits/misses so far (zeros where this torch has none)."""
    from torch._dynamo.utils import counters
    return {"FX graph cache hit": counters["inductor"]["fxgraph_cache_hit"],
            "FX graph cache miss": counters["inductor"]["fxgraph_cache_miss"],
            "AOT autograd cache hit": counters["aot_autograd"]["autograd_cache_hit"],
            "AOT autograd cache miss": counters["aot_autograd"]["autograd_cache_miss"]}


def dynamo_graph_count() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def raise_dynamo_limits(graphs: int) -> None:
    """Let dynamo keep at least ``graphs`` graphs per code object, so our bound is the one that bites."""
    import torch._dynamo.config as config
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(config, name) and getattr(config, name) < graphs + 2:
            setattr(config, name, graphs + 2)
    if hasattr(config, "accumulated_cache_size_limit") and config.accumulated_cache_size_limit < 4 * graphs:
        config.accumulated_cache_size_limit = 4 * graphs


class CompiledModule:
    def __init__(self, module: torch.nn.Module, name: str, options: CompileOptions,
                 hooks: CompileHooks | None = None, log: Callable[[str], None] = print,
                 worker: CompileWorker | None = None):
        self.module = module
        self.name = name
        self.options = options
        self.hooks = hooks or CompileHooks()
        self.log = log
        self.worker = worker or default_worker()
        self.shapes: dict[tuple, ShapeState] = {}
        self.recompiles: list[str] = []
        self._lock = threading.RLock()
        self._compiled = None
        self._installed_via: str | None = None

    # -- installation ----------------------------------------------------------------------------------
    @property
    def installed(self) -> bool:
        return self._installed_via is not None

    def install(self) -> None:
        if self.installed:
            return
        raise_dynamo_limits(self.options.cache_limit)
        if hasattr(self.module, "_compiled_call_impl"):  # torch >= 2.2: what Module.compile() sets
            self._eager = self.module._call_impl
            self.module._compiled_call_impl = self
            self._installed_via = "_compiled_call_impl"
        else:  # torch 2.1: shadow forward on the instance
            self._eager = self.module.forward
            self.module.forward = self
            self._installed_via = "forward"
        self._compiled = torch.compile(self._eager, **self.options.torch_compile_kwargs())

    def uninstall(self) -> None:
        """Back to eager (compiled graphs stay in dynamo's cache, so re-installing is cheap)."""
        if self._installed_via == "_compiled_call_impl":
            self.module._compiled_call_impl = None
        elif self._installed_via == "forward":
            del self.module.forward
        self._installed_via = None

    def set_options(self, options: CompileOptions) -> None:
        """New options: forget per-signature state (graphs of the old options are not reused)."""
        if options == self.options:
            return
        was = self.installed
        self.uninstall()
        with self._lock:
            self.options = options
            self.shapes.clear()
        if was:
            self.install()

    # -- calls -----------------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        self.hooks.before_call()
        key = call_key(args, kwargs)
        state = self.shapes.get(key)
        if state is not None and state.status == READY:
            state.calls += 1
            return self._run_compiled(state, args, kwargs)
        if state is None:
            state = self._admit(key, args, kwargs)
            if state.status == QUEUED and not state.submitted:
                if not self.options.background:
                    return self._compile_now(state, args, kwargs)
                state.submitted = True
                self.worker.submit(self, state, _detached_copy(args), _detached_copy(kwargs))
        return self._eager(*args, **kwargs)

    def prewarm(self, args: tuple, kwargs: dict) -> ShapeState:
        """Queue a compile for this call signature on the worker (whatever ``background`` says); the
        grad/autocast state of the caller is what the graph is built for."""
        state = self._admit(call_key(args, kwargs), args, kwargs)
        if state.status == QUEUED and not state.submitted:
            state.submitted = True
            self.worker.submit(self, state, _detached_copy(args), _detached_copy(kwargs))
        return state

    def _admit(self, key: tuple, args: tuple, kwargs: dict) -> ShapeState:
        with self._lock:
            if key in self.shapes:
                return self.shapes[key]
            label = call_label(args, kwargs)
            graphs = sum(1 for s in self.shapes.values() if s.status in (READY, QUEUED, COMPILING))
            if graphs >= self.options.cache_limit:
                state = ShapeState(label, OVER_LIMIT, reason=f"limit of {self.options.cache_limit} graphs reached")
                self.log(f"[Accel] compile: {self.name} already has {graphs} compiled shapes (the limit); {label} "
                         f"runs eager. Raise the compile cache limit or pre-warm the sizes you use.")
            else:
                state = ShapeState(label, QUEUED)
            self.shapes[key] = state
            return state

    def _run_compiled(self, state: ShapeState, args, kwargs):
        before = dynamo_graph_count()
        try:
            with self.hooks.compiled_call_context():
                out = self._compiled(*args, **kwargs)
        except Exception as e:  # any failure (OOM too) falls back, never fails the image
            self._fail(state, e, "run")
            return self._eager(*args, **kwargs)
        if dynamo_graph_count() != before:
            self._note_recompile(state)
        return out

    def _compile_now(self, state: ShapeState, args, kwargs):
        """Compile (= first call of the compiled callable) for ``state``; returns the output or None."""
        state.status, state.started_at = COMPILING, time.monotonic()
        self.log(f"[Accel] compile: {self.name}: compiling {state.label} ({self.options.mode}, "
                 f"{self.options.backend}, {self.options.dynamic} shapes)")
        before = cache_counters()
        try:
            with self.hooks.compiled_call_context():
                # Prime: one eager call first, so every lazy Python-side choice (attention kernel per shape,
                # support probes) is made now; the trace then sees plain dict hits, not timing/file/lock
                # code that would split it into many graphs (and miss the on-disk cache on the next start).
                self._eager(*args, **kwargs)
                out = self._compiled(*args, **kwargs)
            _synchronize(out)
        except Exception as e:
            self._fail(state, e, "compile")
            return self._eager(*args, **kwargs) if not self.options.background else None
        state.seconds = time.monotonic() - state.started_at
        state.status = READY
        after = cache_counters()
        state.cache = ", ".join(f"{k} {after[k] - before[k]}" for k in after if after[k] - before[k]) or "no cache"
        self.log(f"[Accel] compile: {self.name}: {state.label} ready in {state.seconds:.1f} s "
                 f"(includes one eager and the first compiled run; {state.cache})")
        return out

    def _fail(self, state: ShapeState, error: BaseException, stage: str) -> None:
        state.status = FAILED
        state.reason = f"{stage} failed: {error_summary(error)}"
        if "out of memory" in str(error).lower() and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.log(f"[Accel] compile: {self.name}: {state.label} runs eager from now on; {state.reason}")

    def _note_recompile(self, state: ShapeState) -> None:
        from torch._dynamo.utils import guard_failures
        reasons = [r for failures in guard_failures.values() for r in failures]
        reason = str(reasons[-1])[:300] if reasons else "guard failure (reason not recorded by this torch)"
        self.recompiles.append(f"{state.label}: {reason}")
        self.log(f"[Accel] compile: {self.name}: unexpected recompile for {state.label}: {reason}")

    # -- reporting -------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self._lock:
            shapes = [{"label": s.label, "status": s.status, "seconds": s.seconds, "reason": s.reason,
                       "calls": s.calls, "cache": s.cache, "text": s.describe()} for s in self.shapes.values()]
        return {"name": self.name, "installed": self.installed, "mode": self.options.mode,
                "backend": self.options.backend, "dynamic": self.options.dynamic,
                "cache_limit": self.options.cache_limit, "shapes": shapes, "recompiles": list(self.recompiles),
                "busy": any(s["status"] in (QUEUED, COMPILING) for s in shapes)}

    def wait_idle(self, timeout: float) -> bool:
        """Block until no signature is queued or compiling (tests, benchmarks); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.snapshot()["busy"]:
                return True
            time.sleep(0.05)
        return False


def error_summary(error: BaseException) -> str:
    """One line naming the root cause (dynamo wraps backend errors; the inner one says what happened)."""
    inner = getattr(error, "inner_exception", None) or error.__cause__
    root = inner if isinstance(inner, BaseException) else error
    text = " ".join(str(root).split())[:300]
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def _detached_copy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_detached_copy(v) for v in value)
    if isinstance(value, list):
        return [_detached_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _detached_copy(v) for k, v in value.items()}
    return value


def _synchronize(out) -> None:
    if isinstance(out, torch.Tensor) and out.device.type == "cuda":
        torch.cuda.synchronize(out.device)
