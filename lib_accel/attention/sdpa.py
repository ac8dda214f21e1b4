"""``torch.nn.functional.scaled_dot_product_attention`` with an explicit kernel choice.

torch >= 2.2 chooses kernels with ``torch.nn.attention.sdpa_kernel``; torch 2.1 only has the (now
deprecated) ``torch.backends.cuda.sdp_kernel`` flags. :func:`sdpa_backend_context` hides the difference.
Restricting SDPA to one backend makes torch raise instead of silently falling back to the math kernel;
the warnings it emits on the way name the failed constraints, and they become the kernel's reasons.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings

import torch
import torch.nn.functional as F

from .. import features
from .base import AttentionCall, AttentionKernel, KernelUnsupported

_ENUM_NAMES = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
               "math": "MATH"}
_CUDA_ONLY = {"efficient", "cudnn"}
# How torch words "the backends you allowed cannot run this" (2.1-2.3, 2.4+).
_NO_KERNEL_MARKERS = ("No available kernel", "No viable backend")


def sdpa_backend_context(backend: str, api: str | None = None):
    """A context manager that lets SDPA use only ``backend`` (flash, efficient, cudnn or math).

    ``api`` is :func:`features.sdpa_kernel_api`'s answer; kernels pass the value they looked up when built,
    so nothing cached is called inside a ``torch.compile`` trace."""
    api = features.sdpa_kernel_api() if api is None else api
    if api == "new":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel([getattr(SDPBackend, _ENUM_NAMES[backend])])
    if api == "old":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.backends.cuda.sdp_kernel(enable_flash=backend == "flash", enable_math=backend == "math",
                                                  enable_mem_efficient=backend == "efficient")
    return contextlib.nullcontext()


class SdpaKernel(AttentionKernel):
    """SDPA restricted to one backend, or torch's own choice when ``backend`` is None."""

    def __init__(self, backend: str | None):
        self.backend = backend
        self._api = features.sdpa_kernel_api()
        self.name = f"sdpa-{backend}" if backend else "sdpa"
        self.label = {None: "SDPA (torch picks the kernel)", "flash": "SDPA flash attention",
                      "efficient": "SDPA memory-efficient", "cudnn": "SDPA cuDNN", "math": "SDPA math"}[backend]

    def unavailable_reasons(self) -> list[str]:
        feat = features.sdpa()
        if not feat.available:
            return [feat.reason]
        if self.backend and self.backend not in features.sdpa_backend_names():
            return [f"torch {torch.__version__} cannot select the {self.backend} SDPA backend"]
        if self.backend in _CUDA_ONLY and not features.cuda().available:
            return [f"the {self.backend} SDPA backend needs CUDA ({features.cuda().reason})"]
        return []

    def call_reasons(self, call: AttentionCall) -> list[str]:
        reasons = []
        if self.backend in _CUDA_ONLY and call.device_type != "cuda":
            reasons.append(f"runs on CUDA only, not {call.device_type}")
        if self.backend in ("flash", "cudnn") and call.dtype == torch.float32 and call.device_type == "cuda":
            reasons.append("needs fp16 or bf16 inputs on CUDA")
        if self.backend == "flash" and call.has_mask and call.device_type == "cuda":
            reasons.append("takes no attention mask on CUDA")
        if call.head_dim != call.value_dim and self.backend in ("flash", "cudnn"):
            reasons.append("needs equal query and value head dims")
        return reasons

    def run(self, q, k, v, mask, scale):
        if self.backend is None:
            return _sdpa(q, k, v, mask, scale)
        if features.is_compiling():  # no try/except or warning capture inside a traced graph
            with sdpa_backend_context(self.backend, self._api):
                return _sdpa(q, k, v, mask, scale)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_backend_context(self.backend, self._api):
                    return _sdpa(q, k, v, mask, scale)
            except RuntimeError as e:
                if not any(marker in str(e) for marker in _NO_KERNEL_MARKERS):
                    raise
                reasons = [_clean_warning(w.message) for w in caught] or [str(e).splitlines()[0]]
                raise KernelUnsupported(self.name, reasons) from None


def _clean_warning(message) -> str:
    text = str(message).strip()
    # torch prefixes the reason with the C++ source location; keep the sentence.
    return text.split(") ", 1)[-1] if text.startswith("(Triggered internally") else text.splitlines()[0]


def _has_scale_keyword() -> bool:
    """The ``scale=`` keyword arrived in torch 2.1; before, SDPA always scales by ``head_dim ** -0.5``."""
    try:
        return "scale" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError, AttributeError):
        return True


_SCALE_KW = _has_scale_keyword()  # a signature lookup: microseconds, no I/O


def _sdpa(q, k, v, mask, scale):
    if _SCALE_KW:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=scale)
    if abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        q = q * (scale * q.shape[-1] ** 0.5)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)
