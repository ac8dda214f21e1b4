"""Every attention kernel Accel knows, built once, with availability and reasons for reports."""

from __future__ import annotations

import functools

from .base import AttentionCall, AttentionKernel
from .chunked import ChunkedAttention
from .sdpa import SdpaKernel
from .xformers_kernel import XformersKernel


@functools.cache
def _kernels() -> tuple[AttentionKernel, ...]:
    return (
        SdpaKernel(None),
        SdpaKernel("flash"),
        SdpaKernel("efficient"),
        SdpaKernel("cudnn"),
        SdpaKernel("math"),
        XformersKernel(),
        ChunkedAttention(),
    )


def all_kernels() -> list[AttentionKernel]:
    return list(_kernels())


def get_kernel(name: str) -> AttentionKernel:
    for kernel in _kernels():
        if kernel.name == name:
            return kernel
    raise KeyError(f"unknown attention kernel {name!r}; known: {', '.join(k.name for k in _kernels())}")


def default_kernel() -> AttentionKernel:
    """What Accel falls back to when a chosen kernel cannot run a call: SDPA, else the chunked path."""
    sdpa = get_kernel("sdpa")
    return sdpa if sdpa.is_available() else get_kernel("chunked")


def describe_kernels(call: AttentionCall | None = None) -> list[dict]:
    """One row per kernel: name, label, available (here / for ``call``) and the reasons it is not."""
    rows = []
    for kernel in _kernels():
        reasons = kernel.reasons(call) if call is not None else kernel.unavailable_reasons()
        rows.append({"name": kernel.name, "label": kernel.label, "available": not reasons,
                     "memory_saving": kernel.memory_saving, "reasons": reasons})
    return rows
