"""Attention kernels (SDPA variants, xformers, chunked), their dispatch and the forward adapters."""

from .base import AttentionCall, AttentionKernel, KernelUnsupported
from .chunked import ChunkedAttention, reference_attention
from .dispatch import FastestKernel, PinnedKernel
from .forwards import ForwardHooks, make_attnblock_forward, make_cross_attention_forward
from .registry import all_kernels, default_kernel, describe_kernels, get_kernel
from .timing import TimingStore

__all__ = [
    "AttentionCall", "AttentionKernel", "ChunkedAttention", "FastestKernel", "ForwardHooks", "KernelUnsupported",
    "PinnedKernel", "TimingStore", "all_kernels", "default_kernel", "describe_kernels", "get_kernel",
    "make_attnblock_forward", "make_cross_attention_forward", "reference_attention",
]
