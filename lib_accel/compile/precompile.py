"""When a :class:`~lib_accel.compile.CompiledModule` uses precompiled graphs, and what it says when it doesn't.

A restart with inductor's caches alone still re-traces the UNet with dynamo and rebuilds its guards (and,
before that, runs one eager priming call so the trace sees settled Python-side choices). Where torch
offers ahead-of-time dynamo compile (:func:`~lib_accel.compile.artifact.unsupported_reason`), each call
signature's graph is saved as one artifact (:mod:`.artifact`) in ``CompileOptions.precompile_dir`` and
the next process loads it instead: no priming call (nothing is traced), no trace, no guard building from
the code. Older torch, other backends, CUDA-graph modes, a module with hooks or a host that refuses (the
WebUI with hypernetworks loaded) compile as before, with inductor's caches; one log line says why.

Loading a graph unpickles it, so graphs are saved and loaded only in a sub-folder of a cache folder Accel
created (:func:`~lib_accel.compile.cache.trust_refusal`), and a file that is a link is never loaded.
"""

from __future__ import annotations

import os
import threading
import time

import torch

from . import artifact, fingerprint
from .buckets import call_key
from .cache import remember_vec_isa, restore_vec_isa, trust_refusal
from .dynamo_util import error_summary
from .options import DYNAMIC

_WARMED_UP = threading.Event()


class Precompiler:
    """The precompile side of one compiled module (``owner``: module, name, options, hooks, log)."""

    def __init__(self, owner):
        self.owner = owner
        self._said: set[str] = set()

    def _say_once(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self.owner.log(text)

    def warm_up(self) -> None:
        """When saved graphs exist, do inductor's once-per-process setup in a background thread while the
        WebUI finishes loading: its imports and, on CPU, the C++ instruction-set probe (see :mod:`.cache`),
        which a load would otherwise wait for."""
        folder = self.owner.options.precompile_dir
        if _WARMED_UP.is_set() or not folder or not os.path.isdir(folder) or self.refusal():
            return
        if not any(name.endswith(fingerprint.SUFFIX) for name in os.listdir(folder)):
            return
        _WARMED_UP.set()
        on_cpu = all(p.device.type == "cpu" for p in self.owner.module.parameters())
        threading.Thread(target=_warm_up, args=(folder, on_cpu), name="accel-precompile-warm-up", daemon=True).start()

    def refusal(self) -> str:
        """Why graphs of this module and options are not precompiled ("" when they are)."""
        options = self.owner.options
        untrusted = trust_refusal(options.precompile_dir) if options.precompile_dir else ""
        if untrusted:
            return f"{untrusted}; graphs are only saved and loaded in a cache folder Accel created"
        if options.backend != "inductor":
            return f"backend {options.backend} (only inductor's graphs can be saved)"
        try:
            if torch._inductor.list_mode_options(options.mode).get("triton.cudagraphs"):
                return f"mode {options.mode} uses CUDA graphs"
        except AttributeError:
            pass
        return (artifact.unsupported_reason() or artifact.module_refusal(self.owner.module)
                or self.owner.hooks.precompile_refusal())

    def path_for(self, args: tuple, kwargs: dict) -> str | None:
        """The artifact file for this call (whether or not it exists), or None when not precompiling.
        Call it where compiled calls run (inside the hooks' compiled-call context): the forwards it
        fingerprints must be the ones the graph sees."""
        owner, options = self.owner, self.owner.options
        if not options.precompile_dir:
            return None
        try:
            reason = self.refusal()
            if not reason:
                parts = [f"options {options.mode} {options.backend} {options.dynamic}",
                         f"call {call_key(args, kwargs)!r}", f"host {owner.hooks.precompile_key()}"]
                return fingerprint.artifact_path(options.precompile_dir, parts + fingerprint.architecture(owner.module))
        except Exception as e:  # a host hook or an odd module must not fail the compile
            reason = f"{type(e).__name__}: {e}"
        self._say_once(f"[Accel] compile: {owner.name}: precompiled graphs off ({reason}); "
                       f"a restart re-traces the UNet, using inductor's caches only")
        return None

    def load(self, path: str, label: str, args: tuple, kwargs: dict) -> artifact.Artifact | None:
        """The saved graph at ``path`` when it matches this call and the host's state; else None, the
        file removed (it is rewritten by the compile that follows) and one line saying why."""
        owner = self.owner
        untrusted = trust_refusal(owner.options.precompile_dir, path)
        if untrusted:  # not ours: neither loaded nor removed (the compile that follows replaces a link, not its target)
            owner.log(f"[Accel] compile: {owner.name}: {label}: saved precompiled graph not used ({untrusted}); "
                      f"compiling")
            return None
        restore_vec_isa(owner.options.precompile_dir)
        try:
            return artifact.load(path, owner.module, args, kwargs,
                                 prepare=lambda meta: owner.hooks.precompile_prepare(meta.get("host_state") or {}))
        except Exception as e:
            reason = str(e) if isinstance(e, artifact.PrecompileError) else f"{type(e).__name__}: {e}"
            owner.log(f"[Accel] compile: {owner.name}: {label}: saved precompiled graph not used "
                      f"({' '.join(reason.split())[:400]}); compiling")
            try:
                os.remove(path)
            except OSError:
                pass
            return None

    def build(self, path: str, label: str, args: tuple, kwargs: dict) -> tuple[artifact.Artifact | None, str]:
        """Compile ahead of time and save to ``path``; (artifact, note for the log) or (None, why not)."""
        owner, options = self.owner, self.owner.options
        try:
            built = artifact.build(owner.module, args, kwargs, options.mode, DYNAMIC[options.dynamic])
        except Exception as e:
            owner.log(f"[Accel] compile: {owner.name}: {label}: cannot precompile ({error_summary(e)}); "
                      f"compiling with dynamo (a restart re-traces this size)")
            return None, ""
        meta = {"label": label, "name": owner.name, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "host_state": owner.hooks.precompile_state()}
        remember_vec_isa(options.precompile_dir)
        try:
            size = artifact.save(built, path, meta)
        except Exception as e:
            owner.log(f"[Accel] compile: {owner.name}: {label}: precompiled graph not saved "
                      f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); it is used until restart")
            return built, "precompiled graph not saved"
        return built, f"precompiled graph saved, {size / 2**20:.1f} MiB"


def _warm_up(folder: str, on_cpu: bool) -> None:
    try:
        restore_vec_isa(folder)
        import torch._dynamo.aot_compile
        import torch._functorch._aot_autograd.aot_autograd_result
        import torch._inductor.codecache  # noqa: F401
        if on_cpu:
            from torch._inductor import cpu_vec_isa
            cpu_vec_isa.valid_vec_isa_list()
    except Exception:  # an optimisation only: the load does the same work if this fails
        pass
