"""Pre-warming compiled sizes (the ``accel_compile_prewarm`` setting and ``POST /accel/v1/compile/warm``).

Bounded at every step, because a warm request is not a generation and must cost no more than one:

* sizes are parsed and bounded by :func:`~lib_accel.compile.buckets.parse_buckets` (what the WebUI can
  generate) and a request names at most :data:`MAX_WARM_SIZES`;
* a size already waiting is not queued twice, and at most :data:`MAX_WARM_SIZES` sizes wait at once;
* example inputs are built on the compile worker thread, one size at a time, each just before its compile is
  queued (the next size is queued behind that compile), so no request and no queue holds more than one size's
  tensors;
* a pre-warm never takes a model past its cache limit: admitting a size past it would mark that size
  "over limit" for good, and the images later generated at that size would run eager;
* a warm request (``POST compile/warm``: not a generation, maybe not even the user's) also leaves
  :func:`generation_reserve` graph slots free, so sizes that images really use always find room; the
  ``accel_compile_prewarm`` setting, the user's own list, may use the whole limit.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import torch

from ...compile import CompiledModule, ShapeBucket, call_key
from ...compile.compiled_module import COMPILING, QUEUED, READY

MAX_WARM_SIZES = 16  # sizes one warm request may name, and sizes that may wait to be built at once


def generation_reserve(cache_limit: int) -> int:
    """Graph slots a warm request leaves for the sizes generations use: a quarter of the limit, at least one."""
    return max(1, cache_limit // 4)


class WarmQueue:
    def __init__(self, log: Callable[[str], None],
                 call_context: Callable[[str], contextlib.AbstractContextManager] | None = None):
        """``call_context(device_type)``: what a real UNet call of the WebUI runs inside besides
        ``devices.autocast()`` (Accel's precision wrapper enters its own autocast), so that a pre-warmed graph is
        specialised on the same autocast state as the images that will use it."""
        self.log = log
        self.call_context = call_context or (lambda device_type: contextlib.nullcontext())
        self._lock = threading.Lock()
        self._pending: set[tuple[int, ShapeBucket]] = set()  # (id of the CompiledModule, size) not built yet

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def queue(self, sd_model, compiled: CompiledModule, buckets: list[ShapeBucket],
              max_pending: int | None = None, reserve: int = 0) -> list[str]:
        """Queue ``buckets`` for background compiles of ``compiled``; returns them as text. With ``max_pending``,
        more sizes than that waiting at once is refused (RuntimeError, nothing queued). ``reserve``: graph slots
        below the cache limit that these sizes must leave free."""
        with self._lock:
            new = [b for b in buckets if (id(compiled), b) not in self._pending]
            waiting = len(self._pending)
            if max_pending is not None and waiting + len(new) > max_pending:
                raise RuntimeError(f"{waiting} size(s) already wait to be compiled and at most {max_pending} may "
                                   f"wait; try again when some have started")
            self._pending.update((id(compiled), b) for b in new)
        if new:
            compiled.worker.call(lambda: self._chain(sd_model, compiled, new, reserve))
        return [str(b) for b in buckets]

    def _chain(self, sd_model, compiled: CompiledModule, buckets: list[ShapeBucket], reserve: int = 0) -> None:
        """Worker thread: admit the first size, then queue the rest behind its compile."""
        bucket, rest = buckets[0], buckets[1:]
        try:
            self._warm_one(sd_model, compiled, bucket, reserve)
        except Exception as e:  # building the inputs failed (out of memory, model unloaded): say so, go on
            self.log(f"[Accel] compile: {compiled.name}: {bucket} not pre-warmed: {type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._pending.discard((id(compiled), bucket))
            if rest:
                compiled.worker.call(lambda: self._chain(sd_model, compiled, rest, reserve))

    def _warm_one(self, sd_model, compiled: CompiledModule, bucket: ShapeBucket, reserve: int = 0) -> None:
        from modules import devices

        if not compiled.installed:
            return
        args, kwargs = example_call(sd_model, compiled.module, bucket.width, bucket.height, 2 * bucket.batch,
                                    devices.device, devices.dtype_unet)
        # the graph's signature includes the grad and autocast state: enter what a real call runs in
        with torch.no_grad(), devices.autocast(), self.call_context(devices.device.type), compiled._lock:
            key = call_key(args, kwargs)
            graphs = sum(1 for s in compiled.shapes.values() if s.status in (READY, QUEUED, COMPILING))
            limit = compiled.options.cache_limit
            if key not in compiled.shapes and graphs >= limit - reserve:
                kept = f", {reserve} kept for the sizes images use" if reserve else ""
                self.log(f"[Accel] compile: {compiled.name}: {bucket} not pre-warmed: {graphs} sizes already use "
                         f"the limit of {limit}{kept}")
                return
            compiled.prewarm(args, kwargs)


def example_call(sd_model, unet, width: int, height: int, batch: int, device, dtype) -> tuple[tuple, dict]:
    """Inputs shaped, typed and laid out as the WebUI's k-diffusion samplers call the UNet (ldm vs sgm).

    v1.10.1's ``sd_hijack_unet.apply_model`` wraps both ``LatentDiffusion.apply_model`` (ldm) and
    ``OpenAIWrapper.forward`` (sgm) and casts x, the (float) timesteps and the conditioning tensors to
    ``devices.dtype_unet``; ldm then calls ``diffusion_model(x, t, context=c)``, sgm
    ``diffusion_model(x, timesteps=t, context=c, y=vector)``. Other samplers may differ (a DDIM ``t`` is an
    integer tensor); such calls compile in the background on first use instead."""
    sdxl = getattr(sd_model, "is_sdxl", False)
    x = torch.zeros(batch, unet.in_channels, height // 8, width // 8, device=device, dtype=dtype)
    t = torch.full((batch,), 999.0, device=device, dtype=dtype)
    attn = next((m for m in unet.modules() if hasattr(m, "attn2")), None)
    context_dim = attn.attn2.to_k.in_features if attn is not None else 768
    context = torch.zeros(batch, 77, context_dim, device=device, dtype=dtype)
    if sdxl:
        y = torch.zeros(batch, unet.adm_in_channels, device=device, dtype=dtype)
        return (x,), {"timesteps": t, "context": context, "y": y}
    return (x, t), {"context": context}
