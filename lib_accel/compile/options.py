"""What a compile is asked for (:class:`CompileOptions`) and what the host plugs in (:class:`CompileHooks`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

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
    precompile_dir: str = ""  # where precompiled graphs are saved and loaded ("" = not at all)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown compile mode {self.mode!r}; one of {', '.join(MODES)}")
        if self.dynamic not in DYNAMIC:
            raise ValueError(f"unknown dynamic policy {self.dynamic!r}; one of {', '.join(DYNAMIC)}")
        if self.cache_limit < 1:
            raise ValueError("cache_limit must be at least 1")

    def backend_problem(self) -> str:
        """Why torch.compile cannot use this backend here ("" when it can). An unknown name is found before
        anything is installed (dynamo only says so from ``torch.compile`` itself); a known backend that fails
        later, at its first compile, is a compile failure like any other (eager fallback)."""
        return backend_problem(self.backend)

    def torch_compile_kwargs(self) -> dict:
        kwargs = {"backend": self.backend, "dynamic": DYNAMIC[self.dynamic]}
        if self.mode != "default" and self.backend == "inductor":
            kwargs["mode"] = self.mode
        return kwargs


def backend_problem(backend: str) -> str:
    """See :meth:`CompileOptions.backend_problem` (imports dynamo: call it when compiling anyway)."""
    try:
        from torch._dynamo.backends.registry import lookup_backend
    except ImportError:  # a torch without dynamo's registry: torch.compile itself is the check
        return ""
    try:
        lookup_backend(backend)
    except Exception as e:
        try:
            from torch._dynamo import list_backends
            listed = ", ".join(list_backends())
        except Exception:
            listed = "none listed"
        text = " ".join(str(e).split())[:200]
        return f"compile backend {backend!r} is not usable here ({type(e).__name__}: {text}); torch lists: {listed}"
    return ""


class CompileHooks:
    """What the host (the WebUI adapter) plugs in; the defaults do nothing."""

    def before_call(self) -> None:
        """Runs before every call, compiled or not (e.g. apply pending LoRA weights in place)."""

    def compiled_call_context(self):
        """Active around compiled calls and compiles (e.g. torch's own Linear/Conv forwards)."""
        return contextlib.nullcontext()

    def precompile_refusal(self) -> str:
        """Why graphs must not be precompiled now ("" when they may)."""
        return ""

    def precompile_key(self) -> str:
        """Host state a graph bakes in that the module does not show (e.g. the attention choice); part of a
        precompiled graph's file name, so a graph saved under other state is never looked up."""
        return ""

    def precompile_state(self) -> dict:
        """Host decisions a graph just compiled bakes in (lazily made Python-side choices it was primed with);
        saved with the graph and handed to :meth:`precompile_prepare` before it is loaded elsewhere."""
        return {}

    def precompile_prepare(self, state: dict) -> str:
        """Re-adopt a saved graph's ``state`` in place of the eager priming call; why not, when it no longer
        holds ("" when it does)."""
        return ""
