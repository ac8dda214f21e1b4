"""A horizontal bar chart of one metric per benchmark cell, as a standalone SVG string (stdlib only)."""

from __future__ import annotations

from xml.sax.saxutils import escape

from .results import ResultTable

_ROW_H = 22
_LABEL_W = 360
_BAR_W = 380
_VALUE_W = 150
_TOP = 40
_METRIC_NAMES = {"sampler_its": "sampler it/s", "e2e_its": "end-to-end it/s", "speedup": "speedup vs baseline",
                 "seconds_per_image": "seconds per image", "first_run_s": "first run s"}


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def bar_chart_svg(table: ResultTable, metric: str = "sampler_its", title: str | None = None) -> str:
    """One bar per cell, in run order, scaled to the largest value of ``metric`` (a :class:`CellResult`
    field); cells without a value (skipped, failed) get their status instead of a bar. The baseline bar
    is dark, the best cell's bar green. Labels include the size when the table holds several shapes."""
    results = list(table.results)
    shapes = {r.cell.shape_key for r in results}
    best = table.best(metric) if results and metric in ("sampler_its", "e2e_its") else None
    values = [getattr(r, metric) for r in results]
    top = max((v for v in values if v is not None), default=0.0) or 1.0
    width = _LABEL_W + _BAR_W + _VALUE_W
    height = _TOP + _ROW_H * max(1, len(results)) + 24
    name = _METRIC_NAMES.get(metric, metric)
    heading = title or f"{name} per cell" + (f" ({table.machine['machine']})" if table.machine.get("machine") else "")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="8" y="22" font-size="14" font-weight="bold">{escape(heading)}</text>']
    for i, (r, value) in enumerate(zip(results, values, strict=True)):
        y = _TOP + i * _ROW_H
        label = r.label() + (f" @ {r.cell.size_label()}" if len(shapes) > 1 else "")
        out.append(f'<text x="{_LABEL_W - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        if value is None:
            status = r.status + (f": {r.reason}" if r.reason else "")
            status = status if len(status) <= 60 else status[:57] + "..."
            out.append(f'<text x="{_LABEL_W + 4}" y="{y + 15}" fill="#888888">{escape(status)}</text>')
            continue
        bar = max(1.0, _BAR_W * float(value) / top)
        color = "#2e7d32" if r is best else "#37474f" if r.baseline else "#4c78a8"
        tip = f"{label}: {_fmt(float(value))} {name}"
        out.append(f'<rect x="{_LABEL_W}" y="{y + 3}" width="{bar:.1f}" height="{_ROW_H - 6}" fill="{color}">'
                   f'<title>{escape(tip)}</title></rect>')
        note = " (baseline)" if r.baseline else f" ({r.speedup:.2f}x)" if r.speedup else ""
        out.append(f'<text x="{_LABEL_W + bar + 4:.1f}" y="{y + 15}">{escape(_fmt(float(value)) + note)}</text>')
    out.append(f'<text x="8" y="{height - 8}" fill="#666666" font-size="10">green: best cell; dark: baseline; '
               f'bars scaled to the largest value ({escape(_fmt(top))})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
