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

With ``precompile_dir`` set and a torch that supports it (:mod:`.precompile`), each signature's graph is
compiled ahead of time and saved; a later process loads it instead of priming and re-tracing. A loaded
or built graph is checked before every call (:meth:`~.artifact.Artifact.stale_reason`); a stale one
(say the attention forward was swapped) is compiled again like a new signature, never run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .buckets import call_key, call_label
from .dynamo_util import cache_counters, dynamo_graph_count, error_summary, raise_dynamo_limits
from .options import CUDA_GRAPH_MODES, DYNAMIC, MODES, CompileHooks, CompileOptions  # noqa: F401
from .precompile import Precompiler
from .worker import CompileWorker, default_worker

READY, QUEUED, COMPILING, FAILED, OVER_LIMIT = "ready", "queued", "compiling", "failed", "over limit"


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
    precompiled: object = None  # the artifact.Artifact that runs this signature, when precompiled

    def describe(self) -> str:
        if self.status == COMPILING and self.started_at is not None:
            return f"compiling {self.label} for {time.monotonic() - self.started_at:.0f} s"
        if self.status == READY:
            return f"{self.label}: ready (compiled in {self.seconds:.1f} s)"
        return f"{self.label}: {self.status}" + (f" ({self.reason})" if self.reason else "")


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
        self.precompiler = Precompiler(self)

    def __reduce__(self):
        """A pickled or deep-copied module carries no compile state (it runs eager). torch pickles the module's
        attributes, this one included, when it saves a precompiled graph's guards."""
        return _not_compiled, ()

    # -- installation ----------------------------------------------------------------------------------
    @property
    def installed(self) -> bool:
        return self._installed_via is not None

    def install(self) -> None:
        """Install the compiled call, or raise ValueError (unusable backend) or torch's error with nothing
        installed: the module is only touched once ``torch.compile`` has accepted the options."""
        if self.installed:
            return
        problem = self.options.backend_problem()
        if problem:
            raise ValueError(problem)
        via = "_compiled_call_impl" if hasattr(self.module, "_compiled_call_impl") else "forward"
        eager = self.module._call_impl if via == "_compiled_call_impl" else self.module.forward
        compiled = torch.compile(eager, **self.options.torch_compile_kwargs())
        raise_dynamo_limits(self.options.cache_limit)
        self._eager, self._compiled = eager, compiled
        if via == "_compiled_call_impl":  # torch >= 2.2: what Module.compile() sets
            self.module._compiled_call_impl = self
        else:  # torch 2.1: shadow forward on the instance
            self.module.forward = self
        self._installed_via = via
        self.precompiler.warm_up()

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
        before, stale, graph = dynamo_graph_count(), "", state.precompiled
        try:
            with self.hooks.compiled_call_context():
                if graph is None:
                    out = self._compiled(*args, **kwargs)
                elif not (stale := graph.stale_reason(self.module, args, kwargs)):
                    out = graph(self.module, args, kwargs)
        except Exception as e:  # any failure (OOM too) falls back, never fails the image
            self._fail(state, e, "run")
            return self._eager(*args, **kwargs)
        if stale:
            return self._compile_again(state, stale, args, kwargs)
        if graph is None and dynamo_graph_count() != before:
            self._note_recompile(state)
        return out

    def _compile_again(self, state: ShapeState, reason: str, args, kwargs):
        """A precompiled graph no longer matches: compile the signature anew (eager meanwhile)."""
        self.recompiles.append(f"{state.label}: {reason}")
        self.log(f"[Accel] compile: {self.name}: {state.label}: compiled graph no longer matches ({reason[:300]}); "
                 f"compiling again")
        with self._lock:
            state.status, state.precompiled, state.submitted = QUEUED, None, not self.options.background
        if not self.options.background:
            return self._compile_now(state, args, kwargs)
        self.worker.submit(self, state, _detached_copy(args), _detached_copy(kwargs))
        return self._eager(*args, **kwargs)

    def _compile_now(self, state: ShapeState, args, kwargs):
        """Load or compile the graph for ``state`` and run it once; returns the output or None."""
        state.status, state.started_at = COMPILING, time.monotonic()
        try:
            with self.hooks.compiled_call_context():
                path = self.precompiler.path_for(args, kwargs)
                graph = self.precompiler.load(path, state.label, args, kwargs) \
                    if path is not None and os.path.exists(path) else None
                if graph is not None:
                    loaded = time.monotonic()
                    out = graph(self.module, args, kwargs)
                    _synchronize(out)
                    return self._ready(state, graph, "precompiled graph loaded", [
                        ("precompiled graph loaded in", loaded - state.started_at),
                        ("first compiled run", time.monotonic() - loaded)], out)
        except Exception as e:
            self._fail(state, e, "run of the precompiled graph")
            return self._eager(*args, **kwargs) if not self.options.background else None
        self.log(f"[Accel] compile: {self.name}: compiling {state.label} ({self.options.mode}, "
                 f"{self.options.backend}, {self.options.dynamic} shapes)")
        before, note, graph = cache_counters(), "", None
        try:
            with self.hooks.compiled_call_context():
                # Prime: one eager call first, so every lazy Python-side choice (attention kernel per shape,
                # support probes) is made now; the trace then sees plain dict hits, not timing/file/lock
                # code that would split it into many graphs (and miss the on-disk cache on the next start).
                self._eager(*args, **kwargs)
                primed = time.monotonic()
                if path is not None:
                    graph, note = self.precompiler.build(path, state.label, args, kwargs)
                built = time.monotonic()
                out = graph(self.module, args, kwargs) if graph is not None else self._compiled(*args, **kwargs)
            _synchronize(out)
        except Exception as e:
            self._fail(state, e, "compile")
            return self._eager(*args, **kwargs) if not self.options.background else None
        after = cache_counters()
        cache = ", ".join(f"{k} {after[k] - before[k]}" for k in after if after[k] - before[k]) or "no cache"
        steps = [("eager priming", primed - state.started_at)]
        if graph is not None:
            steps += [("compile", built - primed), ("first compiled run", time.monotonic() - built)]
        else:
            steps += [("compile and first compiled run", time.monotonic() - primed)]
        return self._ready(state, graph, "; ".join(filter(None, [cache, note])), steps, out)

    def _ready(self, state: ShapeState, graph, cache: str, steps: list[tuple[str, float]], out):
        state.precompiled, state.cache = graph, cache
        state.seconds = time.monotonic() - state.started_at
        state.status = READY
        self.log(f"[Accel] compile: {self.name}: {state.label} ready in {state.seconds:.1f} s "
                 f"({', '.join(f'{what} {seconds:.1f} s' for what, seconds in steps)}; {cache})")
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


def _not_compiled():
    return None


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
