"""Live generation statistics: sampler speed from per-step callbacks and per-stage times of each image.

Hot-path contract: :meth:`StatsCollector.step_started` and :meth:`StatsCollector.step_finished` run inside the
sampler loop, once per denoiser call. They read a clock, store a few numbers and append to a bounded ring
buffer under an uncontended lock; they never touch tensor data, so they never make the CPU wait for the GPU.
On CUDA they also re-record one timing event per sampling pass (``Event.record`` only enqueues a marker).
Everything else (rates, summaries) is computed when someone asks, on the asking thread.

Vocabulary: a *call* is one denoiser call (one UNet evaluation of cond+uncond); a *step* is one sampler step
as the WebUI's progress bar counts it (second-order samplers make two calls per step); a *pass* is one run of
the sampler (hires fix makes two per image); an *image* is one batch iteration of ``process_images``, opened
by :meth:`StatsCollector.begin_image` and closed by :meth:`StatsCollector.end_image`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

STAGES = ("text_encoder", "unet", "vae_decode")
RING_SIZE = 64          # step end times kept per pass for the live rate
RATE_WINDOW_S = 3.0     # the live rate looks at most this far back (but always at >= 2 calls)
IDLE_AFTER_S = 3.0      # without an open image, "running" means a step ended this recently
MAX_PASSES = 8          # passes kept per image (an image without end_image never grows beyond this)

Clock = Callable[[], float]
EventFactory = Callable[[], Any]


def format_rate(its: float | None) -> str:
    """``"3.21 it/s"``, or ``"2.86 s/it"`` below 1 it/s (as the WebUI's console progress bar), ``"-"`` if unknown."""
    if its is None or not math.isfinite(its) or its <= 0:
        return "-"
    if its >= 1.0:
        return f"{its:.2f} it/s"
    return f"{1.0 / its:.2f} s/it"


def cuda_event_factory() -> Any:
    import torch
    return torch.cuda.Event(enable_timing=True)


@dataclass(eq=False)
class PassRecord:
    """One sampler run. ``ratio`` is denoiser calls per sampler step (2 for Heun, DPM2 ...)."""

    steps: int
    ratio: float = 1.0
    calls: int = 0
    index: int = -1
    first_start: float | None = None
    first_end: float | None = None
    last_end: float | None = None
    ends: deque = field(default_factory=lambda: deque(maxlen=RING_SIZE))
    start_event: Any = None
    end_event: Any = None

    def current_step(self) -> int:
        """The 1-based sampler step now running (or last run)."""
        step = int(max(self.index, 0) / self.ratio) + 1
        return min(step, self.steps) if self.steps > 0 else step

    def rate(self, window_s: float = RATE_WINDOW_S) -> float | None:
        """Sampler steps per second over the most recent calls (steady state: the first call's warm-up is
        excluded once two calls have ended)."""
        ends = list(self.ends)
        if len(ends) >= 2:
            recent = [t for t in ends if t >= ends[-1] - window_s]
            if len(recent) < 2:
                recent = ends[-2:]
            span = recent[-1] - recent[0]
            calls = len(recent) - 1
        elif len(ends) == 1 and self.first_start is not None:
            span, calls = ends[0] - self.first_start, 1
        else:
            return None
        return calls / span / self.ratio if span > 0 else None

    def mean_rate(self) -> float | None:
        """Steps per second over the whole pass, from the first call's end to the last one's."""
        if self.calls >= 2 and self.first_end is not None and self.last_end is not None:
            span = self.last_end - self.first_end
            return (self.calls - 1) / span / self.ratio if span > 0 else None
        return self.rate()

    def seconds(self) -> float:
        """Time the pass took: GPU time between its timing events when there are any, else wall time."""
        gpu = _event_seconds(self.start_event, self.end_event)
        if gpu is not None:
            return gpu
        if self.first_start is None or self.last_end is None:
            return 0.0
        return max(0.0, self.last_end - self.first_start)

    def summary(self) -> dict:
        rate = self.mean_rate()
        return {"steps": self.steps, "calls": self.calls, "calls_per_step": self.ratio,
                "seconds": round(self.seconds(), 4), "its": rate, "rate": format_rate(rate)}


def _event_seconds(start: Any, end: Any) -> float | None:
    if start is None or end is None:
        return None
    try:
        end.synchronize()  # normally long complete: the image has been decoded by now
        return float(start.elapsed_time(end)) / 1000.0
    except Exception:  # an event that never recorded, a device reset: fall back to wall time
        return None


@dataclass(eq=False)
class ImageRecord:
    started: float
    opened: bool = True  # False when opened implicitly by a step (no begin_image)
    stages: dict[str, float] = field(default_factory=dict)
    passes: deque = field(default_factory=lambda: deque(maxlen=MAX_PASSES))

    def summary(self, now: float, complete: bool) -> dict:
        stages = {name: round(self.stages.get(name, 0.0), 4) for name in STAGES}
        stages["unet"] = round(sum(p.seconds() for p in self.passes), 4)
        passes = [p.summary() for p in self.passes]
        return {"complete": complete, "seconds": round(max(0.0, now - self.started), 4), "stages": stages,
                "passes": passes, "rate": " + ".join(p["rate"] for p in passes) or "-"}


class StatsCollector:
    """Thread-safe: the sampler thread writes, API/UI threads read with :meth:`snapshot`."""

    def __init__(self, clock: Clock = time.perf_counter, event_factory: EventFactory | None = cuda_event_factory):
        self.clock = clock
        self.event_factory = event_factory
        self._lock = threading.Lock()
        self._current: ImageRecord | None = None
        self._last_image: dict | None = None
        self._last_activity: float | None = None
        self._pass: PassRecord | None = None
        self.images = 0

    # -- hot path (sampler thread) -----------------------------------------------------------------------
    def step_started(self, index: int | None, expected_calls: int | None, steps: int | None,
                     cuda: bool = False) -> None:
        """A denoiser call begins. ``index`` is the 0-based call number in this pass (``denoiser.step``; None:
        the next one); ``expected_calls``/``steps`` are ``denoiser.total_steps``/``denoiser.steps``. An index
        not above the previous call's starts a new pass."""
        now = self.clock()
        with self._lock:
            image = self._current
            if image is None:
                image = self._current = ImageRecord(now, opened=False)
            rec = self._pass
            if index is None:
                index = rec.index + 1 if rec is not None else 0
            if rec is None or index <= rec.index:
                steps = int(steps or expected_calls or 0)
                ratio = expected_calls / steps if expected_calls and steps else 1.0
                rec = self._pass = PassRecord(steps, max(ratio, 1.0))
                image.passes.append(rec)
            rec.index = index
            if rec.first_start is None:
                rec.first_start = now
                if cuda and self.event_factory is not None:
                    rec.start_event = self._record(None)
            self._last_activity = now

    def step_finished(self, cuda: bool = False) -> None:
        """The denoiser call that :meth:`step_started` announced has returned its result to the sampler."""
        now = self.clock()
        with self._lock:
            rec = self._pass
            if rec is None or rec.first_start is None:
                return
            rec.calls += 1
            if rec.first_end is None:
                rec.first_end = now
            rec.ends.append(now)
            rec.last_end = now
            if rec.start_event is not None:
                rec.end_event = self._record(rec.end_event)
            self._last_activity = now

    def _record(self, event: Any) -> Any:
        try:
            event = event if event is not None else self.event_factory()
            event.record()
            return event
        except Exception:
            return None

    # -- per image (generation thread, once per image) -----------------------------------------------------
    def begin_image(self) -> None:
        now = self.clock()
        with self._lock:
            if self._current is not None and self._current.opened:
                self._finish(now, complete=False)
            self._current = ImageRecord(now)
            self._pass = None
            self._last_activity = now

    def end_image(self) -> dict | None:
        """Close the open image; returns its summary (also kept as ``last_image``), None if none was open."""
        now = self.clock()
        with self._lock:
            if self._current is None:
                return None
            return self._finish(now, complete=True)

    def abort_image(self) -> dict | None:
        """Close the open image, if any, as incomplete: its generation raised before ``end_image`` (which the
        WebUI calls only on success). Afterwards ``running`` is false. Returns its summary, None if none was open."""
        now = self.clock()
        with self._lock:
            if self._current is None:
                return None
            return self._finish(now, complete=False)

    def _finish(self, now: float, complete: bool) -> dict:
        summary = self._current.summary(now, complete)
        self._last_image = summary
        self._current = None
        self._pass = None
        self.images += 1
        self._last_activity = now
        return summary

    def add_stage(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name`` of the open image (ignored when no image is open)."""
        with self._lock:
            if self._current is not None and self._current.opened:
                self._current.stages[name] = self._current.stages.get(name, 0.0) + seconds

    def image_open(self) -> bool:
        current = self._current
        return current is not None and current.opened

    @contextlib.contextmanager
    def stage(self, name: str, sync: Callable[[], None] | None = None) -> Iterator[None]:
        """Time the ``with`` body as stage ``name``. ``sync`` (e.g. ``torch.cuda.synchronize``) runs before and
        after, so queued GPU work is charged to the right stage; it is skipped when no image is open."""
        if not self.image_open():
            yield
            return
        if sync is not None:
            sync()
        start = self.clock()
        try:
            yield
        finally:
            if sync is not None:
                with contextlib.suppress(Exception):
                    sync()
            self.add_stage(name, self.clock() - start)

    # -- readers (any thread) -------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The live view: running, step/total, rate, and the stages of the current and the last image."""
        now = self.clock()
        with self._lock:
            rec = self._pass
            current = self._current
            recent = self._last_activity is not None and now - self._last_activity < IDLE_AFTER_S
            running = bool(current is not None and (current.opened or recent))
            its = rec.rate() if rec is not None else None
            out = {
                "running": running,
                "step": rec.current_step() if rec is not None else None,
                "total": rec.steps if rec is not None else None,
                "pass": len(current.passes) if current is not None else 0,
                "its": its,
                "seconds_per_step": (1.0 / its) if its else None,
                "rate": format_rate(its),
                "current_image": current.summary(now, complete=False) if current is not None else None,
                "last_image": self._last_image,
                "images": self.images,
                "idle_s": round(now - self._last_activity, 3) if self._last_activity is not None else None,
            }
        return out

    def reset(self) -> None:
        with self._lock:
            self._current = None
            self._pass = None
            self._last_image = None
            self._last_activity = None
            self.images = 0
