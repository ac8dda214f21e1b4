"""torch.compile of a UNet in place: static graphs per call signature, background compiles, eager fallback."""

from .buckets import ShapeBucket, call_key, call_label, parse_buckets
from .compiled_module import (
    COMPILING,
    FAILED,
    MODES,
    OVER_LIMIT,
    QUEUED,
    READY,
    CompiledModule,
    CompileHooks,
    CompileOptions,
)
from .worker import CompileWorker, default_worker

__all__ = [
    "COMPILING", "FAILED", "MODES", "OVER_LIMIT", "QUEUED", "READY", "CompileHooks", "CompileOptions",
    "CompileWorker", "CompiledModule", "ShapeBucket", "call_key", "call_label", "default_worker", "parse_buckets",
]
