"""Measuring attention kernels on real inputs, and remembering the winners across restarts.

A decision is keyed by device model, torch version, dtype and the exact attention shape (SD uses a
handful per resolution), so a new GPU, a torch upgrade or a new resolution is measured afresh.
The store is a small JSON file written atomically; a corrupt or unreadable file is ignored (and
rewritten on the next decision), never fatal.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field

import torch

from .. import features
from .base import AttentionCall, AttentionKernel, KernelUnsupported

_AGREEMENT_ATOL = {torch.float32: 2e-3, torch.float64: 1e-6}
_AGREEMENT_ATOL_HALF = 6e-2


def bucket_key(call: AttentionCall) -> str:
    device = torch.device(call.device_type, call.device_index) if call.device_index is not None else \
        torch.device(call.device_type)
    return f"{features.device_label(device)}|torch {torch.__version__}|{call.describe()}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TimingResult:
    ms: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    output: torch.Tensor | None = None

    @property
    def best(self) -> str | None:
        return min(self.ms, key=self.ms.get) if self.ms else None

    def as_record(self) -> dict:
        return {"kernel": self.best, "ms": {k: round(v, 4) for k, v in self.ms.items()},
                "rejected": dict(self.rejected), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _time_once(kernel: AttentionKernel, q, k, v, mask, scale) -> float:
    start = time.perf_counter()
    kernel(q, k, v, mask, scale)
    synchronize(q.device)
    return (time.perf_counter() - start) * 1000.0


def time_candidates(kernels: list[AttentionKernel], q, k, v, mask, scale, repeats: int = 3) -> TimingResult:
    """Run each kernel once (checking it works and agrees with the first that did), then time them.

    A kernel that refuses the call, runs out of memory, returns non-finite values or disagrees with the
    others beyond the dtype's tolerance is rejected with the reason. Timing is round-robin (one call of
    each kernel per round, ``repeats`` rounds, median per kernel), so a burst of load from elsewhere on
    the machine hits every kernel alike instead of crowning whichever was timed during a quiet moment.
    """
    result = TimingResult()
    atol = _AGREEMENT_ATOL.get(q.dtype, _AGREEMENT_ATOL_HALF)
    runnable = []
    with torch.no_grad():
        for kernel in kernels:
            try:
                out = kernel(q, k, v, mask, scale)
                synchronize(q.device)
            except KernelUnsupported as e:
                result.rejected[kernel.name] = "; ".join(e.reasons)
                continue
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if "out of memory" not in str(e).lower():
                    raise
                result.rejected[kernel.name] = "out of memory"
                if q.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if not bool(torch.isfinite(out).all()):
                result.rejected[kernel.name] = "non-finite output"
                continue
            if result.output is None:
                result.output = out
            else:
                err = float((out.float() - result.output.float()).abs().max())
                if err > atol:
                    result.rejected[kernel.name] = f"disagrees with {runnable[0].name} by {err:.3g}"
                    continue
            del out
            runnable.append(kernel)
        samples: dict[str, list[float]] = {kernel.name: [] for kernel in runnable}
        for _ in range(max(1, repeats)):
            for kernel in runnable:
                samples[kernel.name].append(_time_once(kernel, q, k, v, mask, scale))
    result.ms = {name: statistics.median(values) for name, values in samples.items()}
    return result


class TimingStore:
    """Decisions by bucket key, optionally persisted to ``path`` (None keeps them in memory only)."""

    def __init__(self, path: str | None = None):
        self.path = path
        self._data: dict[str, dict] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict]:
        if self._data is None:
            self._data = {}
            if self.path and os.path.exists(self.path):
                try:
                    with open(self.path, encoding="utf-8") as f:
                        loaded = json.load(f)
                    if isinstance(loaded, dict):
                        self._data = {k: v for k, v in loaded.items() if isinstance(v, dict) and "kernel" in v}
                except (OSError, ValueError):
                    self._data = {}
        return self._data

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._load().get(key)

    def put(self, key: str, record: dict) -> None:
        with self._lock:
            self._load()[key] = record
            self._save()

    def entries(self) -> dict[str, dict]:
        with self._lock:
            return dict(self._load())

    def clear(self) -> None:
        with self._lock:
            self._data = {}
            if self.path and os.path.exists(self.path):
                os.remove(self.path)

    def _save(self) -> None:
        if not self.path:
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".accel-timings-", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only extension folder costs a re-measure after restart, nothing more
