"""Measuring attention kernels on real inputs, and remembering the winners across restarts.

A decision is keyed by device model, torch version, dtype and the exact attention shape (SD uses a
handful per resolution), so a new GPU, a torch upgrade or a new resolution is measured afresh.
The store is a small JSON file written atomically; a corrupt or unreadable file is ignored (and
rewritten on the next decision), never fatal. Each entry is validated on load (:func:`valid_record`):
a hand-edited or foreign file with a list where a kernel name belongs, or nesting too deep for the JSON
parser, costs a re-measure of those shapes and one log line, never an image or the Accel tab.

Measuring never fails a generation either: a candidate that raises anything (out of memory on any run, a
cuDNN frontend error, a Triton compile error) is rejected with its reason and the others are compared.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
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


def failure_reason(error: BaseException, device: torch.device) -> str:
    """Why a candidate failed, in one line (after an OOM, the CUDA cache is emptied for the next candidate)."""
    if isinstance(error, KernelUnsupported):
        return "; ".join(error.reasons)
    text = " ".join(str(error).split())
    if "out of memory" in text.lower():
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return "out of memory"
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def time_candidates(kernels: list[AttentionKernel], q, k, v, mask, scale, repeats: int = 3) -> TimingResult:
    """Run each kernel once (checking it works and agrees with the first that did), then time them.

    A kernel that refuses the call, raises anything (out of memory, a backend error), returns non-finite
    values or disagrees with the others beyond the dtype's tolerance is rejected with the reason; a kernel
    that fails in a timed round is rejected too and its samples dropped. Only ``Exception`` is caught: an
    interrupt (the WebUI's is a ``BaseException``) still stops the job. Timing is round-robin (one call of
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
                finite = bool(torch.isfinite(out).all())
            except Exception as e:
                result.rejected[kernel.name] = failure_reason(e, q.device)
                continue
            if not finite:
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
            for kernel in list(runnable):
                try:
                    samples[kernel.name].append(_time_once(kernel, q, k, v, mask, scale))
                except Exception as e:
                    result.rejected[kernel.name] = "failed while timed: " + failure_reason(e, q.device)
                    runnable.remove(kernel)
                    del samples[kernel.name]
    result.ms = {name: statistics.median(values) for name, values in samples.items()}
    return result


def valid_record(record: object) -> bool:
    """An entry as :meth:`TimingResult.as_record` writes it: ``kernel`` a name, ``ms`` finite numbers by name,
    ``rejected`` reasons by name, ``measured_at`` text (the last three optional)."""
    if not isinstance(record, dict) or not isinstance(record.get("kernel"), str):
        return False
    ms, rejected = record.get("ms", {}), record.get("rejected", {})
    if not isinstance(ms, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ms.values()):
        return False
    if not isinstance(rejected, dict) or not all(isinstance(v, str) for v in rejected.values()):
        return False
    return isinstance(record.get("measured_at", ""), str)


class TimingStore:
    """Decisions by bucket key, optionally persisted to ``path`` (None keeps them in memory only)."""

    def __init__(self, path: str | None = None, log: Callable[[str], None] = print):
        self.path = path
        self.log = log
        self._data: dict[str, dict] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict]:
        if self._data is None:
            self._data = {}
            if self.path and os.path.exists(self.path):
                self._data = self._read(self.path)
        return self._data

    def _read(self, path: str) -> dict[str, dict]:
        """The file's valid entries; what was dropped is logged once (the next decision rewrites the file)."""
        try:
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: nesting deeper than json parses
            self.log(f"[Accel] timing cache {path} is unreadable ({type(e).__name__}); ignoring it, "
                     "shapes are measured again")
            return {}
        if not isinstance(loaded, dict):
            self.log(f"[Accel] timing cache {path} holds a {type(loaded).__name__}, not entries by shape; "
                     "ignoring it, shapes are measured again")
            return {}
        kept = {k: v for k, v in loaded.items() if valid_record(v)}
        if len(kept) != len(loaded):
            dropped = [k for k in loaded if k not in kept]
            self.log(f"[Accel] timing cache {path}: dropped {len(dropped)} malformed entr"
                     f"{'y' if len(dropped) == 1 else 'ies'} (first: {dropped[0][:120]!r}); those shapes are "
                     "measured again")
        return kept

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
