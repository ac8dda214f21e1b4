"""One place that detects the optional pieces Accel can use, lazily and once.

Every probe returns a :class:`Feature` with a human-readable reason when the piece is missing, so the
UI, the API and ``python -m lib_accel info`` can say *why* something is off instead of failing. Nothing
here runs at import time: importing xformers or triton costs seconds and may initialise CUDA.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Feature:
    name: str
    available: bool
    version: str = ""
    reason: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "available": self.available, "version": self.version, "reason": self.reason}


def _import_feature(name: str, module: str, dist_hint: str) -> tuple[Feature, object | None]:
    if importlib.util.find_spec(module) is None:
        return Feature(name, False, reason=f"{module} is not installed (pip package {dist_hint})"), None
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # a broken install must never break the extension
        return Feature(name, False, reason=f"import {module} failed: {type(e).__name__}: {e}".strip()), None
    return Feature(name, True, version=str(getattr(mod, "__version__", ""))), mod


@functools.cache
def cuda() -> Feature:
    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = "torch was built without CUDA" if not built else "no CUDA device is visible to torch"
        return Feature("cuda", False, reason=why)
    name = torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    return Feature("cuda", True, version=f"{torch.version.cuda} ({name}, sm{major}{minor})")


@functools.cache
def sdpa() -> Feature:
    if not callable(getattr(torch.nn.functional, "scaled_dot_product_attention", None)):
        return Feature("sdpa", False, reason=f"torch {torch.__version__} has no scaled_dot_product_attention")
    api = "torch.nn.attention.sdpa_kernel" if sdpa_kernel_api() == "new" else "torch.backends.cuda.sdp_kernel"
    return Feature("sdpa", True, version=f"torch {torch.__version__}; kernel choice via {api}")


@functools.cache
def sdpa_kernel_api() -> str:
    """``"new"`` (torch.nn.attention.sdpa_kernel, torch >= 2.2), ``"old"`` (backends.cuda.sdp_kernel) or ``""``."""
    try:
        from torch.nn.attention import sdpa_kernel  # noqa: F401
        return "new"
    except ImportError:
        pass
    return "old" if hasattr(torch.backends.cuda, "sdp_kernel") else ""


@functools.cache
def sdpa_backend_names() -> tuple[str, ...]:
    """SDPA backends this torch can select explicitly: a subset of flash, efficient, cudnn, math."""
    if sdpa_kernel_api() == "new":
        from torch.nn.attention import SDPBackend
        mapping = {"FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "efficient",
                   "CUDNN_ATTENTION": "cudnn", "MATH": "math"}
        return tuple(v for k, v in mapping.items() if hasattr(SDPBackend, k))
    if sdpa_kernel_api() == "old":
        return ("flash", "efficient", "math")
    return ()


@functools.cache
def _xformers() -> tuple[Feature, object | None]:
    feat, mod = _import_feature("xformers", "xformers", "xformers")
    if mod is None:
        return feat, None
    try:
        ops = importlib.import_module("xformers.ops")
    except Exception as e:
        return Feature("xformers", False, feat.version, f"import xformers.ops failed: {e}"), None
    return feat, ops


def xformers() -> Feature:
    return _xformers()[0]


def xformers_ops():
    """The ``xformers.ops`` module, or None (see :func:`xformers` for why)."""
    return _xformers()[1]


@functools.cache
def triton() -> Feature:
    return _import_feature("triton", "triton", "triton")[0]


@functools.cache
def _pynvml() -> tuple[Feature, object | None]:
    feat, mod = _import_feature("pynvml", "pynvml", "nvidia-ml-py")
    if mod is None:
        return feat, None
    try:
        mod.nvmlInit()
    except Exception as e:
        return Feature("pynvml", False, feat.version, f"NVML could not start: {e}"), None
    return feat, mod


def pynvml() -> Feature:
    return _pynvml()[0]


def pynvml_module():
    """The initialised ``pynvml`` module, or None."""
    return _pynvml()[1]


@functools.cache
def _pil() -> tuple[Feature, object | None]:
    feat, _ = _import_feature("Pillow", "PIL", "pillow")
    if not feat.available:
        return feat, None
    return feat, importlib.import_module("PIL.Image")


def pil_image_module():
    """``PIL.Image`` or None: the HTTP benchmark decodes the WebUI's PNGs with it (the WebUI ships it)."""
    return _pil()[1]


def compile_support() -> Feature:
    """Whether ``torch.compile`` with inductor can be used for a model on ``device_type``'s default device."""
    if not hasattr(torch, "compile"):
        return Feature("torch.compile", False, reason=f"torch {torch.__version__} has no torch.compile")
    if platform.system() == "Windows":
        return Feature("torch.compile", False, reason="inductor does not support Windows")
    if cuda().available and not triton().available:
        return Feature("torch.compile", False, reason=f"CUDA needs triton for inductor: {triton().reason}")
    return Feature("torch.compile", True, version=f"torch {torch.__version__}")


#: what the Settings page offers before torch._dynamo is imported (``list_backends()`` hides eager/aot_eager)
USUAL_COMPILE_BACKENDS = ("inductor", "cudagraphs", "aot_eager", "eager")


def compile_backends(load: bool = False) -> tuple[str, ...]:
    """Backend names for ``torch.compile``. Importing ``torch._dynamo`` costs about 2 s, so unless ``load`` is
    true or dynamo is imported already this is the static :data:`USUAL_COMPILE_BACKENDS`; torch's own list
    (plus the usual ones) otherwise. A dynamo that fails to import leaves the static list."""
    if not load and "torch._dynamo" not in sys.modules:
        return USUAL_COMPILE_BACKENDS
    try:
        import torch._dynamo
        names = list(torch._dynamo.list_backends())
    except Exception:  # an unusable dynamo must not break the Settings page
        return USUAL_COMPILE_BACKENDS
    return tuple(dict.fromkeys(["inductor", *names, *USUAL_COMPILE_BACKENDS]))


_probe: list[Callable[[], bool]] = []  # a plain cache: dynamo warns when it traces through functools.cache


def tracing_probe() -> Callable[[], bool]:
    """torch's "is dynamo tracing this code": constant True inside a traced region, False in eager code on every
    thread. Not ``torch.compiler.is_compiling()`` where newer torch has ``is_dynamo_compiling``: the former reads a
    process-wide flag there, True on every thread while any thread compiles."""
    if _probe:
        return _probe[0]
    probe = getattr(getattr(torch, "compiler", None), "is_dynamo_compiling", None)
    if probe is None:  # torch 2.1/2.2: dynamo's own check, per traced frame
        import torch._dynamo as dynamo
        from torch._dynamo import external_utils
        probe = getattr(external_utils, "is_compiling", None) or dynamo.is_compiling
    _probe.append(probe)
    return probe


def is_compiling() -> bool:
    """True while dynamo traces the calling code; kernels must not time or log from inside a traced region."""
    return bool(tracing_probe()())


def all_features() -> list[Feature]:
    return [cuda(), sdpa(), xformers(), triton(), pynvml(), compile_support()]


def device_label(device: torch.device | str) -> str:
    """A stable name for timing caches: the GPU model for CUDA, the CPU model and thread count otherwise."""
    device = torch.device(device)
    return _device_label(device.type, device.index, torch.get_num_threads())


@functools.lru_cache(maxsize=32)
def _device_label(device_type: str, index: int | None, threads: int) -> str:
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{torch.cuda.get_device_name(index)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{device.type}:{cpu} x{threads}"
