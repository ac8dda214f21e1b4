"""Run a benchmark matrix on a target: warm-up excluded, repeated timed runs, memory peaks, image diffs.

A target is anything with this shape (the WebUI in process, its HTTP API, the standalone UNet)::

    describe() -> dict                      # machine, device, versions: written into the results
    apply(cell) -> str | None               # switch the options; raise CellSkipped(reason) if impossible;
                                            # may return what "Automatic" resolved to
    generate(cell, seed) -> Generation      # one generation at the cell's size, batch and steps
    interrupt() -> None                     # optional: stop the generation in flight (cancel)

The engine owns the policy: cells in matrix order, one warm-up (its time is ``first_run_s``: compile and
autotuning land there), then ``repeats`` timed runs; medians are reported. A failing cell is recorded with
its reason and the run goes on; cancel stops between (and, with ``interrupt``, inside) generations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..quality.image_diff import compare_images, to_hwc_uint8
from .matrix import Cell
from .results import CellResult, ResultTable
from .summary import rate, summarize

#: an image whose brightest 8-bit value is at most this is reported as black (NaN latents decode to black)
BLACK_MAX_VALUE = 4


class CellSkipped(Exception):
    """The target cannot run this cell (kernel unavailable, dtype unsupported ...); the message says why."""


@dataclass
class Generation:
    images: list[Any]
    total_s: float  # wall time of the whole generation
    sampler_s: float | None = None  # the denoising loop only, when the target can tell
    peak_torch_bytes: int | None = None
    peak_nvml_bytes: int | None = None
    extra: dict = field(default_factory=dict)


class Target(Protocol):
    def describe(self) -> dict: ...
    def apply(self, cell: Cell) -> str | None: ...
    def generate(self, cell: Cell, seed: int) -> Generation: ...


@dataclass
class Progress:
    cell_index: int
    cells: int
    run: int  # 0 = warm-up, 1..repeats = timed
    runs: int
    cell: Cell
    message: str

    @property
    def fraction(self) -> float:
        done = self.cell_index * self.runs + self.run
        return min(1.0, done / max(1, self.cells * self.runs))


def is_black(image: Any) -> bool:
    return int(to_hwc_uint8(image)[..., :3].max()) <= BLACK_MAX_VALUE


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 2**20


class BenchRunner:
    """Runs cells on a target; thread-safe ``cancel()`` from another thread (the UI's Cancel button)."""

    def __init__(self, target: Any, repeats: int = 2, warmup: int = 1, seed: int = 1234,
                 progress: Callable[[Progress], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        if repeats < 1 or warmup < 0:
            raise ValueError("repeats must be >= 1 and warmup >= 0")
        self.target, self.repeats, self.warmup, self.seed = target, repeats, warmup, seed
        self.progress, self.clock = progress, clock
        self._cancel = threading.Event()
        self.table = ResultTable()

    def cancel(self) -> None:
        self._cancel.set()
        interrupt = getattr(self.target, "interrupt", None)
        if interrupt is not None:
            interrupt()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _report(self, i: int, n: int, run: int, cell: Cell, message: str) -> None:
        if self.progress is not None:
            self.progress(Progress(i, n, run, self.warmup + self.repeats, cell, message))

    def run(self, cells: list[Cell]) -> ResultTable:
        self.table = ResultTable(machine=dict(self.target.describe()))
        baselines: dict[tuple, list[Any]] = {}
        for i, cell in enumerate(cells):
            is_baseline = cell.shape_key not in baselines
            if self.cancelled:
                self.table.add(CellResult(cell, status="cancelled", baseline=is_baseline))
                continue
            result, images = self._run_cell(i, len(cells), cell)
            result.baseline = is_baseline and result.status == "ok"
            if result.status == "ok" and images:
                result.black = is_black(images[0])
                if result.baseline:
                    baselines[cell.shape_key] = images
                elif cell.shape_key in baselines:
                    diff = compare_images(baselines[cell.shape_key][0], images[0])
                    result.max_abs, result.psnr_db = diff.max_abs, diff.psnr_db
            self.table.add(result)
        return self.table

    def _run_cell(self, i: int, n: int, cell: Cell) -> tuple[CellResult, list[Any]]:
        """The cell's result and the last timed run's images."""
        result = CellResult(cell)
        try:
            self._report(i, n, 0, cell, f"applying {cell.label()}")
            resolved = self.target.apply(cell)
            result.resolved = resolved if isinstance(resolved, str) else ""
            gens: list[Generation] = []
            for run in range(self.warmup + self.repeats):
                if self.cancelled:
                    result.status, result.reason = "cancelled", f"after {len(gens)} timed runs"
                    return result, []
                kind = "warm-up" if run < self.warmup else f"run {run - self.warmup + 1}/{self.repeats}"
                self._report(i, n, run, cell, f"{cell.label()} at {cell.size_label()}: {kind}")
                start = self.clock()
                gen = self.target.generate(cell, self.seed)
                if run < self.warmup:
                    result.first_run_s = self.clock() - start
                else:
                    gens.append(gen)
        except CellSkipped as e:
            result.status, result.reason = "skipped", str(e)
            return result, []
        except Exception as e:  # a cell failing must not end the benchmark
            if self.cancelled:
                result.status, result.reason = "cancelled", "interrupted"
            else:
                result.status, result.reason = "failed", f"{type(e).__name__}: {e}"
            return result, []
        self._fill(result, gens)
        return result, gens[-1].images

    def _fill(self, result: CellResult, gens: list[Generation]) -> None:
        cell = result.cell
        result.runs = len(gens)
        total = summarize([g.total_s for g in gens])
        result.e2e_its = rate(cell.steps, total.median)
        result.seconds_per_image = total.median / cell.batch
        samplers = [g.sampler_s for g in gens if g.sampler_s]
        if samplers:
            rates = [cell.steps / s for s in samplers]
            stats = summarize(rates)
            result.sampler_its, result.sampler_its_stdev = stats.median, stats.stdev
        peaks = [g.peak_torch_bytes for g in gens if g.peak_torch_bytes is not None]
        result.peak_torch_mb = _mb(max(peaks)) if peaks else None
        peaks = [g.peak_nvml_bytes for g in gens if g.peak_nvml_bytes is not None]
        result.peak_nvml_mb = _mb(max(peaks)) if peaks else None
