"""Benchmark results: one row per cell, sorting, the best cell, CSV/JSON/Markdown export (stdlib only).

Columns (all per cell):

* ``sampler_its``: sampler steps per second (UNet denoising only), median over the timed runs;
* ``e2e_its``: steps divided by the whole generation's wall time (text encoder, sampler, VAE, saving);
* ``first_run_s``: the excluded warm-up run, which carries compile, autotuning and cuDNN benchmarking;
* ``peak_torch_mb`` / ``peak_nvml_mb``: allocator peak and device-wide peak used memory (blank on CPU);
* ``max_abs`` / ``psnr_db``: image difference against the baseline cell of the same shape (blank for the
  baseline itself); ``black``: the image is (nearly) all black, i.e. NaNs or a broken VAE.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, fields

from .matrix import Cell

STATUSES = ("ok", "failed", "skipped", "cancelled")
#: the image difference above which a cell is not a candidate for "apply best" (PSNR in dB)
MIN_PSNR_FOR_BEST = 25.0


@dataclass
class CellResult:
    cell: Cell
    status: str = "ok"
    reason: str = ""
    runs: int = 0
    first_run_s: float | None = None
    sampler_its: float | None = None
    sampler_its_stdev: float | None = None
    e2e_its: float | None = None
    seconds_per_image: float | None = None
    peak_torch_mb: float | None = None
    peak_nvml_mb: float | None = None
    max_abs: int | None = None
    psnr_db: float | None = None
    black: bool | None = None
    baseline: bool = False
    speedup: float | None = None  # sampler it/s over the baseline cell of the same shape
    resolved: str = ""  # what the WebUI ran for the cell's attention when it named none itself ("Automatic")

    def label(self) -> str:
        """The cell's label, with "Automatic" shown as what it resolved to: "Automatic (InvokeAI)"."""
        return self.cell.label(f"{self.cell.attention} ({self.resolved})" if self.resolved else None)

    def row(self) -> dict:
        """Flat dict: the cell's fields then the measurements (CSV/JSON/table order)."""
        out = self.cell.as_dict()
        out["label"] = self.label()
        for f in fields(self):
            if f.name != "cell":
                out[f.name] = getattr(self, f.name)
        return out


COLUMNS = tuple(list(Cell.__dataclass_fields__) + ["label"] +
                [f.name for f in fields(CellResult) if f.name != "cell"])


def _fmt(value: object, digits: int | None = 4) -> object:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return value if digits is None else round(value, digits)
    return value


@dataclass
class ResultTable:
    results: list[CellResult] = field(default_factory=list)
    machine: dict = field(default_factory=dict)

    def add(self, result: CellResult) -> None:
        self.results.append(result)
        self._fill_speedups()

    def _fill_speedups(self) -> None:
        base = {r.cell.shape_key: r for r in self.results if r.baseline and r.status == "ok"}
        for r in self.results:
            b = base.get(r.cell.shape_key)
            r.speedup = (r.sampler_its / b.sampler_its) if (b and r.sampler_its and b.sampler_its) else None

    def sorted_results(self, sort_by: str | None = None, descending: bool = True) -> list[CellResult]:
        """Results in run order, or by column ``sort_by`` (cells without a value last)."""
        results = list(self.results)
        if sort_by:
            if sort_by not in COLUMNS:
                raise KeyError(f"unknown column {sort_by!r}")
            def value(r: CellResult) -> object:
                return r.row()[sort_by]
            present = [r for r in results if value(r) is not None]
            missing = [r for r in results if value(r) is None]
            results = sorted(present, key=value, reverse=descending) + missing
        return results

    def rows(self, sort_by: str | None = None, descending: bool = True) -> list[dict]:
        return [r.row() for r in self.sorted_results(sort_by, descending)]

    def best(self, metric: str = "sampler_its") -> CellResult | None:
        """The fastest finished cell whose image is not black and stays within :data:`MIN_PSNR_FOR_BEST`
        of its baseline (identical images count as within)."""
        def eligible(r: CellResult) -> bool:
            if r.status != "ok" or getattr(r, metric) is None or r.black:
                return False
            return r.psnr_db is None or r.psnr_db >= MIN_PSNR_FOR_BEST
        candidates = [r for r in self.results if eligible(r)]
        return max(candidates, key=lambda r: getattr(r, metric)) if candidates else None

    # -- export -----------------------------------------------------------------------------------------------
    def to_csv(self) -> str:
        buf = io.StringIO()
        for key, value in self.machine.items():
            buf.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        return buf.getvalue()

    def to_json(self) -> str:
        data = {"machine": self.machine, "results": [{k: _fmt(v, None) for k, v in r.items()} for r in self.rows()]}
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ResultTable:
        data = json.loads(text)
        table = cls(machine=dict(data.get("machine", {})))
        cell_keys = set(Cell.__dataclass_fields__)
        result_keys = {f.name for f in fields(CellResult)} - {"cell"}
        for row in data.get("results", []):
            cell = Cell(**{k: v for k, v in row.items() if k in cell_keys})
            values = {k: (math.inf if v == "inf" else v) for k, v in row.items() if k in result_keys}
            table.results.append(CellResult(cell=cell, **values))
        table._fill_speedups()
        return table

    def markdown(self, sort_by: str | None = None) -> str:
        """A compact Markdown table (the README's and the CLI's)."""
        lines = ["| " + " | ".join(DISPLAY_HEADERS) + " |", "|" + "---|" * len(DISPLAY_HEADERS)]
        for r in self.sorted_results(sort_by):
            lines.append("| " + " | ".join(display_row(r)) + " |")
        return "\n".join(lines)


def _num(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def quality_text(r: CellResult) -> str:
    if r.black:
        return "BLACK image"
    if r.baseline:
        return "baseline"
    if r.max_abs is None:
        return "–"
    if r.max_abs == 0:
        return "identical"
    return f"max {r.max_abs}/255, {r.psnr_db:.1f} dB"


def display_row(r: CellResult) -> list[str]:
    """The table's cells as strings (UI and Markdown)."""
    peak = r.peak_nvml_mb if r.peak_nvml_mb is not None else r.peak_torch_mb
    status = r.status if not r.reason else f"{r.status}: {r.reason}"
    return [r.label(), r.cell.size_label(), _num(r.sampler_its), _num(r.e2e_its),
            _num(r.speedup, 2, "x"), _num(r.first_run_s, 1), _num(peak, 0), quality_text(r), status]


DISPLAY_HEADERS = ["options", "size", "sampler it/s", "end-to-end it/s", "speedup", "first run s", "peak MB",
                   "vs baseline", "status"]
