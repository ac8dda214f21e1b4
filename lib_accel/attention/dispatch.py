"""Turning a kernel choice into a callable that never fails a generation for a call it cannot run.

:class:`PinnedKernel` runs the user's chosen kernel and, for a call signature it cannot serve (say flash
attention with the VAE's head dim of 512), runs the fallback instead and says so once.
:class:`FastestKernel` ("Accel auto") times every runnable kernel the first time it sees a call bucket
and keeps the fastest; decisions persist through a :class:`~lib_accel.attention.timing.TimingStore`. A
candidate that fails while measured is rejected with its reason, and a stored choice that now fails is
measured again against the others: deciding never fails the call.
Both only decide outside ``torch.compile`` tracing; inside it they replay a decision or use the fallback.

A traced graph bakes their per-shape decisions in (and dynamo guards on them), so a graph precompiled in
one process can only be loaded in another once the same decisions are in place: ``settled_state()``
records them with the graph and ``settle(state)`` re-adopts them, or says why they no longer hold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import features
from .base import AttentionCall, AttentionKernel, KernelUnsupported, call_signature
from .timing import TimingStore, bucket_key, failure_reason, time_candidates

Logger = Callable[[str], None]


class PinnedKernel:
    def __init__(self, kernel: AttentionKernel, fallback: AttentionKernel, log: Logger = print):
        self.kernel = kernel
        self.fallback = fallback
        self.log = log
        self._works: dict[tuple, bool] = {}
        self.fallback_reasons: dict[str, list[str]] = {}

    def settled_state(self) -> dict:
        return {"works": dict(self._works), "kernels": _kernel_states([self.kernel, self.fallback])}

    def settle(self, state: dict) -> str:
        for sig, works in (state.get("works") or {}).items():
            if self._works.setdefault(sig, works) != works:
                return f"{self.kernel.name} {'runs' if self._works[sig] else 'cannot run'} a shape it did not"
        return _settle_kernels([self.kernel, self.fallback], state)

    @property
    def name(self) -> str:
        return self.kernel.name

    def __call__(self, q, k, v, mask=None, scale=None) -> torch.Tensor:
        sig = call_signature(q, k, v, mask)
        works = self._works.get(sig)
        if works:
            return self.kernel(q, k, v, mask, scale)
        if works is None and not features.is_compiling():
            call = AttentionCall.of(q, k, v, mask)
            reasons = self.kernel.reasons(call)
            if not reasons:
                try:
                    out = self.kernel(q, k, v, mask, scale)
                    self._works[sig] = True
                    return out
                except KernelUnsupported as e:
                    reasons = e.reasons
            self._works[sig] = False
            self.fallback_reasons[call.describe()] = reasons
            self.log(f"[Accel] {self.kernel.name} cannot run {call.describe()}: {'; '.join(reasons)}; "
                     f"using {self.fallback.name} for these calls")
        return self.fallback(q, k, v, mask, scale)


class FastestKernel:
    """Picks, per device + dtype + shape bucket, the kernel that measured fastest on real inputs."""

    name = "auto"

    def __init__(self, candidates: list[AttentionKernel], fallback: AttentionKernel, store: TimingStore,
                 log: Logger = print, repeats: int = 3):
        self.candidates = candidates
        self.fallback = fallback
        self.store = store
        self.log = log
        self.repeats = repeats
        self._chosen: dict[tuple, AttentionKernel] = {}
        self._by_name = {k.name: k for k in candidates}
        self._keys: dict[tuple, str] = {}  # call signature -> timing-store bucket key of every decision

    def __call__(self, q, k, v, mask=None, scale=None) -> torch.Tensor:
        sig = call_signature(q, k, v, mask)
        kernel = self._chosen.get(sig)
        if kernel is not None:
            return kernel(q, k, v, mask, scale)
        if features.is_compiling():
            return self._replay(q, k, v, mask)(q, k, v, mask, scale)
        kernel, out = self._decide(q, k, v, mask, scale)
        self._chosen[sig] = kernel
        self._keys[sig] = bucket_key(AttentionCall.of(q, k, v, mask))
        return out if out is not None else kernel(q, k, v, mask, scale)

    def settled_state(self) -> dict:
        chosen = [(sig, self._keys.get(sig, ""), kernel.name) for sig, kernel in self._chosen.items()]
        return {"chosen": chosen, "kernels": _kernel_states(self.candidates)}

    def settle(self, state: dict) -> str:
        """Adopt the recorded choices when each is still this process's choice (the timing store's record)."""
        adopt = []
        for sig, key, name in state.get("chosen") or ():
            current = self._chosen.get(sig)
            record = self.store.get(key) if current is None else {"kernel": current.name}
            now = (record or {}).get("kernel", "unmeasured")
            if now != name or name not in self._by_name:
                return f"Accel auto's kernel for {key.split('|')[-1]} is now {now}, the graph has {name}"
            if current is None:
                adopt.append((sig, key, self._by_name[name]))
        for sig, key, kernel in adopt:
            self._chosen[sig], self._keys[sig] = kernel, key
        return _settle_kernels(self.candidates, state)

    def choice_for(self, q, k, v, mask=None) -> AttentionKernel | None:
        return self._chosen.get(call_signature(q, k, v, mask))

    def _replay(self, q, k, v, mask) -> AttentionKernel:
        record = self.store.get(bucket_key(AttentionCall.of(q, k, v, mask)))
        return self._by_name.get(record.get("kernel"), self.fallback) if record else self.fallback

    def _decide(self, q, k, v, mask, scale) -> tuple[AttentionKernel, torch.Tensor | None]:
        call = AttentionCall.of(q, k, v, mask)
        key = bucket_key(call)
        record = self.store.get(key)
        stored = self._by_name.get(record.get("kernel")) if isinstance(record, dict) else None
        failed = None
        if stored is not None and not stored.reasons(call):
            try:  # the stored choice is run once here: a kernel that now fails is measured against the others
                out = stored(q, k, v, mask, scale)
            except Exception as e:
                failed = stored
                self.log(f"[Accel] auto: {call.describe()}: the stored choice {stored.name} failed "
                         f"({failure_reason(e, q.device)}); measuring again")
            else:
                self.log(f"[Accel] auto: {call.describe()} -> {stored.name} (measured {record.get('measured_at', '')})")
                return stored, out
        runnable = [c for c in self.candidates if c is not failed and not c.reasons(call)]
        if not runnable:
            return self.fallback, None
        result = time_candidates(runnable, q, k, v, mask, scale, self.repeats)
        if result.best is None:
            self.log(f"[Accel] auto: no kernel ran {call.describe()} "
                     f"({'; '.join(f'{n}: {r}' for n, r in result.rejected.items())}); using {self.fallback.name}")
            return self.fallback, None
        self.store.put(key, result.as_record())
        timings = ", ".join(f"{n} {ms:.2f} ms" for n, ms in sorted(result.ms.items(), key=lambda kv: kv[1]))
        self.log(f"[Accel] auto: {call.describe()} -> {result.best} ({timings})")
        return self._by_name[result.best], result.output


def _kernel_states(kernels) -> dict:
    return {k.name: k.settled_state() for k in kernels if hasattr(k, "settled_state")}


def _settle_kernels(kernels, state: dict) -> str:
    states = state.get("kernels") or {}
    for kernel in kernels:
        if kernel.name in states and hasattr(kernel, "settle"):
            reason = kernel.settle(states[kernel.name])
            if reason:
                return reason
    return ""
