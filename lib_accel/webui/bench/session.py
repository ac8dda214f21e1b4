"""One benchmark run inside the WebUI, driven by the Accel tab: start, progress, cancel, results, apply best.

Plain Python (no gradio) so the panel's behaviour is testable: :mod:`lib_accel.webui.bench.panel` only wires
components to these methods. The run holds the WebUI's queue lock from start to end, so generations from
other tabs wait instead of interleaving with (and distorting) the measurements; settings changed by the run
are put back afterwards, and "apply best" writes the winner's settings and saves them.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from ...bench.engine import BenchRunner, Progress
from ...bench.matrix import SIZE_PRESETS, Matrix, MatrixError, cell_settings, parse_bools, parse_ints, parse_sizes
from ...bench.results import DISPLAY_HEADERS, ResultTable, display_row

RESULTS_DIR = "accel-bench"


class BenchSession:
    def __init__(self, owner: Any, target_factory: Any = None):
        self.owner = owner
        self.target_factory = target_factory
        self.runner: BenchRunner | None = None
        self.thread: threading.Thread | None = None
        self.progress: Progress | None = None
        self.table: ResultTable | None = None
        self.error: str | None = None
        self.started_at: float | None = None
        self.files: list[str] = []
        self.checkpoint: str | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    # -- matrix from the form ------------------------------------------------------------------------------
    @staticmethod
    def build_matrix(attention: list[str], compile_modes: list[str], channels_last: list[str],
                     precision: list[str], presets: list[str], custom_sizes: str, batches: str,
                     steps: str, vae: list[str] | None = None) -> Matrix:
        """The form's choices as a Matrix (MatrixError names a bad one); ``vae`` None: the VAE as configured."""
        sizes = [SIZE_PRESETS[p] for p in presets if p in SIZE_PRESETS]
        if custom_sizes and custom_sizes.strip():
            sizes += [s for s in parse_sizes(custom_sizes) if s not in sizes]
        if not sizes:
            raise MatrixError("choose at least one size")
        matrix = Matrix(attention=tuple(attention or ()), compile=tuple(compile_modes or ()),
                        channels_last=parse_bools(channels_last or ()), precision=tuple(precision or ()),
                        vae=("default",) if vae is None else tuple(vae),
                        sizes=tuple(sizes), batches=parse_ints(batches, "batch sizes"),
                        steps=parse_ints(steps, "steps"))
        matrix.validate()
        return matrix

    # -- run -------------------------------------------------------------------------------------------------
    def start(self, matrix: Matrix, repeats: int = 2, warmup: int = 1, prompt: str | None = None) -> str:
        """Start in a thread; returns a status line (also when refusing: one run at a time)."""
        with self._lock:
            if self.running:
                return "A benchmark is already running; cancel it or wait."
            cells = matrix.cells()
            from .target import DEFAULT_PROMPT, WebUITarget
            target = (self.target_factory or WebUITarget)(self.owner, prompt=prompt or DEFAULT_PROMPT)
            self.checkpoint = target.checkpoint_title()
            self.runner = BenchRunner(target, repeats=int(repeats), warmup=int(warmup), progress=self._on_progress)
            self.table, self.error, self.progress, self.files = None, None, None, []
            self.started_at = time.monotonic()
            self.thread = threading.Thread(target=self._run, args=(target, cells), name="accel-bench", daemon=True)
            self.thread.start()
            return f"Started: {len(cells)} cells x {int(warmup) + int(repeats)} generations."

    def _on_progress(self, progress: Progress) -> None:
        self.progress = progress

    def _run(self, target: Any, cells: list) -> None:
        from modules import call_queue
        runner = self.runner
        try:
            with call_queue.queue_lock, self.owner.holding_queue_lock():
                try:
                    self.table = runner.run(cells)
                finally:
                    target.restore()
        except Exception as e:  # reported in the panel; the WebUI keeps running
            self.error = f"{type(e).__name__}: {e}"
            self.table = runner.table
        self.files = self._write_files()

    def cancel(self) -> str:
        if not self.running or self.runner is None:
            return "Nothing is running."
        self.runner.cancel()
        return "Cancelling after the current generation (interrupted)..."

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    # -- views -----------------------------------------------------------------------------------------------
    def status_markdown(self) -> str:
        if self.started_at is None:
            return "Not run yet."
        elapsed = time.monotonic() - self.started_at
        if self.running:
            p = self.progress
            if p is None:
                return f"Starting ({elapsed:.0f} s)..."
            bar = "█" * int(p.fraction * 20) + "░" * (20 - int(p.fraction * 20))
            return f"`{bar}` {p.fraction:.0%} · cell {p.cell_index + 1}/{p.cells} · {p.message} · {elapsed:.0f} s"
        if self.error:
            return f"**Stopped with an error:** {self.error}"
        table = self.table
        done = sum(r.status == "ok" for r in table.results) if table else 0
        cancelled = sum(r.status == "cancelled" for r in table.results) if table else 0
        best = table.best() if table else None
        line = f"Finished in {elapsed:.0f} s: {done} cells measured" + (f", {cancelled} cancelled" if cancelled else "")
        if best is not None:
            line += f". **Best: {best.label()}** at {best.cell.size_label()} ({best.sampler_its or 0:.2f} it/s)"
        return line

    def rows(self, sort_by: str | None = None) -> list[list[str]]:
        table = self.table or (self.runner.table if self.runner else None)
        if table is None:
            return []
        return [display_row(r) for r in table.sorted_results(sort_by)]

    def chart_rows(self) -> list[dict]:
        """``{"cell": label, "it/s": value}`` for the bar chart (sampler it/s, else end-to-end)."""
        table = self.table or (self.runner.table if self.runner else None)
        out = []
        for r in (table.results if table else []):
            value = r.sampler_its or r.e2e_its
            if r.status == "ok" and value:
                out.append({"cell": f"{r.label()} | {r.cell.size_label()}", "it/s": round(value, 3)})
        return out

    def _write_files(self) -> list[str]:
        if self.table is None or not self.table.results:
            return []
        folder = os.path.join(self.owner.root, RESULTS_DIR)
        os.makedirs(folder, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        paths = []
        for ext, text in (("csv", self.table.to_csv()), ("json", self.table.to_json())):
            path = os.path.join(folder, f"accel-bench-{stamp}.{ext}")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            paths.append(path)
        return paths

    def apply_best(self) -> str:
        """Write the best cell's settings (attention, channels-last, precision, compile) and save them."""
        if self.running:
            return "Wait for the benchmark to finish."
        best = self.table.best() if self.table else None
        if best is None:
            return "No finished cell with a usable image to apply."
        from modules import call_queue, shared

        from .target import write_settings
        settings = cell_settings(best.cell, self.checkpoint)
        if best.cell.compile != "off":
            settings["accel_compile_background"] = True  # the benchmark's inline compile is not for daily use
            settings.pop("accel_compile_prewarm", None)
        with call_queue.queue_lock, self.owner.holding_queue_lock():
            write_settings(settings)
        shared.opts.save(shared.config_filename)
        listed = ", ".join(f"{k} = {v}" for k, v in settings.items())
        return f"Applied and saved: {listed}"

    def headers(self) -> list[str]:
        return list(DISPLAY_HEADERS)
