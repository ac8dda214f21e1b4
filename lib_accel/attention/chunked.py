"""Memory-bounded attention and the float64 reference every kernel is tested against.

:class:`ChunkedAttention` splits the queries so that one chunk's score matrix
(``batch * heads * chunk * kv_tokens`` elements, plus its softmax) fits a byte budget. The budget is a
fraction of the memory free *now* on the tensors' device (CUDA: driver-free plus torch's cached-but-unused
blocks; CPU: ``MemAvailable``), capped so CPU chunks stay cache-friendly. It is slower than fused
kernels on a GPU with room to spare, and the safe choice on 4-6 GB cards, at 1024²+ and on CPU.
Softmax always runs in float32, so fp16/bf16 inputs do not overflow.
"""

from __future__ import annotations

import time

import torch

from .. import features
from .base import AttentionKernel, additive_mask

# On CPU, big score chunks lose to cache misses: at SD1.5 512² (4096 tokens, 2 cores) a 256 MiB cap ran
# 3x slower than 32 MiB chunks (844 vs 276 ms per call, benchmarks/results/attention-*.csv), as InvokeAI found.
_CPU_CHUNK_CAP = 32 << 20
_MEMINFO_TTL_S = 1.0
_meminfo_cache: tuple[float, int] = (0.0, 0)


def free_memory_bytes(device: torch.device) -> int:
    """Bytes that one allocation on ``device`` could take now, without evicting anything."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)
        cached = stats.get("reserved_bytes.all.current", 0) - stats.get("active_bytes.all.current", 0)
        return int(free + max(cached, 0))
    return _cpu_available_bytes()


def _cpu_available_bytes() -> int:
    global _meminfo_cache
    now = time.monotonic()
    if now - _meminfo_cache[0] < _MEMINFO_TTL_S:
        return _meminfo_cache[1]
    available = 4 << 30  # when /proc is missing (macOS, Windows), assume a modest 4 GiB
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    _meminfo_cache = (now, available)
    return available


class ChunkedAttention(AttentionKernel):
    """Query-chunked attention whose peak extra memory is bounded by ``budget_bytes`` or a free-memory share.

    ``memory_fraction`` is the share of free memory one chunk may use; ``budget_bytes`` (if given) is a
    hard cap that wins over it. The chunk never drops below one query row, so the bound is best effort
    for enormous key counts.
    """

    memory_saving = True

    def __init__(self, memory_fraction: float = 0.25, budget_bytes: int | None = None, name: str = "chunked",
                 label: str = "Chunked (memory-bounded)"):
        if not 0.0 < memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
        self.memory_fraction = memory_fraction
        self.budget_bytes = budget_bytes
        self.name = name
        self.label = label
        self._last_budget: int | None = None

    def budget(self, device: torch.device) -> int:
        """Bytes one chunk may use. Inside a ``torch.compile`` trace no memory is queried (it would break
        the graph): the budget measured by the last eager call is reused, or the CPU cap."""
        if features.is_compiling():
            budget = self._last_budget or _CPU_CHUNK_CAP
            return budget if self.budget_bytes is None else min(budget, self.budget_bytes)
        budget = int(free_memory_bytes(device) * self.memory_fraction)
        if device.type != "cuda":
            budget = min(budget, _CPU_CHUNK_CAP)
        self._last_budget = max(budget, 1)
        if self.budget_bytes is not None:
            budget = min(budget, self.budget_bytes)
        return max(budget, 1)

    def settled_state(self) -> dict:
        """The budget a trace reuses (see :mod:`.dispatch`: precompiled graphs)."""
        return {"last_budget": self._last_budget}

    def settle(self, state: dict) -> str:
        if self._last_budget is None and state.get("last_budget") is not None:
            self._last_budget = state["last_budget"]  # as an eager call would measure; dynamo's guard checks it
        return ""

    def chunk_size(self, q: torch.Tensor, k: torch.Tensor) -> int:
        b, h, m, _ = q.shape
        n = k.shape[-2]
        # scores in the input dtype + float32 probabilities + the probabilities cast back
        per_row = b * h * n * (2 * q.element_size() + 4)
        return max(1, min(m, self.budget(q.device) // per_row))

    def run(self, q, k, v, mask, scale):
        m = q.shape[-2]
        step = self.chunk_size(q, k)
        mask = additive_mask(mask, torch.float32)
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        kt = k.transpose(-1, -2)
        for start in range(0, m, step):
            end = min(start + step, m)
            scores = torch.matmul(q[..., start:end, :], kt)
            probs = scores.float().mul_(scale)
            del scores
            if mask is not None:
                probs += mask[..., start:end, :] if mask.shape[-2] == m else mask
            probs = probs.softmax(dim=-1).to(v.dtype)
            out[..., start:end, :] = torch.matmul(probs, v)
            del probs
        return out


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                        scale: float | None = None) -> torch.Tensor:
    """Plain attention in float64 on the CPU: the numerical ground truth for tests and benchmarks."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    q, k, v = (t.detach().to("cpu", torch.float64) for t in (q, k, v))
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        mask = mask.to("cpu")
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    return torch.matmul(scores.softmax(dim=-1), v)
