"""The kernel contract shared by every attention backend.

Layout: ``q, k, v`` are ``(batch, heads, tokens, head_dim)`` (views are fine; SDPA's layout, and a free
transpose of the ``(batch, tokens, heads, head_dim)`` layout xformers wants). ``mask`` is None, a bool
tensor (True = attend) or an additive float tensor, broadcastable to ``(batch, heads, q_tokens, kv_tokens)``.

A kernel answers two questions with reasons instead of exceptions:

* :meth:`AttentionKernel.unavailable_reasons` - can it run at all here (torch build, CUDA, optional package)?
* :meth:`AttentionKernel.call_reasons` - can it run *this* call (device, dtype, head dim, mask)? Only cheap,
  documented constraints are checked up front; torch's own kernel selection is the final judge, so a call
  may still raise :class:`KernelUnsupported`, whose reasons the dispatcher caches per call signature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KernelUnsupported(RuntimeError):
    """The kernel cannot run this call; ``reasons`` says why (no partial work was done)."""

    def __init__(self, kernel: str, reasons: list[str]):
        super().__init__(f"{kernel}: " + "; ".join(reasons))
        self.kernel = kernel
        self.reasons = reasons


@dataclass(frozen=True)
class AttentionCall:
    """What a support check or timing cache needs to know about one attention call."""

    device_type: str
    device_index: int | None
    dtype: torch.dtype
    batch: int
    heads: int
    q_tokens: int
    kv_tokens: int
    head_dim: int
    value_dim: int
    has_mask: bool

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
           ) -> AttentionCall:
        b, h, m, d = q.shape
        return cls(q.device.type, q.device.index, q.dtype, b, h, m, k.shape[-2], d, v.shape[-1],
                   mask is not None)

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return (f"{self.device_type} {dtype} b{self.batch} h{self.heads} q{self.q_tokens} kv{self.kv_tokens} "
                f"d{self.head_dim}" + (" mask" if self.has_mask else ""))


def call_signature(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> tuple:
    """A cheap hashable key for per-call caches (cheaper than building an :class:`AttentionCall`)."""
    return (q.device, q.dtype, q.shape, k.shape, v.shape[-1], mask is not None)


class AttentionKernel:
    """Base class: subclasses set ``name``/``label``/``memory_saving`` and implement :meth:`run`."""

    name: str = ""
    label: str = ""
    #: True for kernels whose point is bounded memory rather than speed (reported, still timed like others).
    memory_saving: bool = False

    def unavailable_reasons(self) -> list[str]:
        return []

    def call_reasons(self, call: AttentionCall) -> list[str]:
        return []

    def reasons(self, call: AttentionCall) -> list[str]:
        return self.unavailable_reasons() + self.call_reasons(call)

    def is_available(self) -> bool:
        return not self.unavailable_reasons()

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
            ) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                 scale: float | None = None) -> torch.Tensor:
        """Attention of ``q`` over ``k, v``; ``scale`` defaults to ``head_dim ** -0.5``."""
        if scale is None:
            scale = q.shape[-1] ** -0.5
        return self.run(q, k, v, mask, scale)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Turn a bool keep-mask into an additive one (0 where attended, -inf-like elsewhere)."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, torch.finfo(dtype).min)
