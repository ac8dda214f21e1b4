"""``python -m lib_accel bench unet``: the benchmark matrix on a standalone SD1.5-shaped UNet (no WebUI).

The UNet has SD1.5's shape and random weights (:mod:`.unet_model`); the axes are attention kernel,
torch.compile mode, channels-last and precision (see :mod:`.unet_target` for what each cell runs).
Prints the engine's Markdown table and the best cell; writes CSV, JSON, Markdown and an SVG bar chart
on request (``--out PREFIX`` writes all four). A bad matrix exits with status 2 and the reason.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from .matrix import Cell, MatrixError
from .webui_cli import add_matrix_arguments, matrix_from_args, print_progress, report

_LIST_OPTIONS = ("attention", "compile", "compile_attention", "channels_last", "precision", "size", "batch",
                 "steps")


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Add the ``name`` subcommand to ``subparsers`` (``python -m lib_accel bench``)."""
    p = subparsers.add_parser(name, help="attention x compile x channels-last x precision on a standalone "
                                         "SD1.5-shaped UNet with random weights", description=__doc__)
    add_matrix_arguments(p, "", vae=False)
    p.set_defaults(compile="off", channels_last="off,on", precision="default,bf16", size=None, steps="3")
    p.add_argument("--compile-attention", default="",
                   help="compile only the cells of these kernels (default: every kernel), to trim the matrix")
    p.add_argument("--weight-seed", type=int, default=0, help="seed of the random UNet weights")
    p.add_argument("--tiny", action="store_true", help="a tiny UNet (tests, smoke runs) instead of SD1.5's")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--out", default=None, help="path prefix: writes PREFIX.csv, .json, .md and .svg")
    p.add_argument("--markdown", type=Path, help="write the Markdown report (header, table, best cell)")
    p.add_argument("--svg", type=Path, help="write a bar chart of sampler it/s per cell")
    p.add_argument("--note", default="", help="a line for the report header (e.g. 'CPU shared with ...')")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.epilog = ("Defaults: every kernel that runs on the device (the first is the baseline), compile off, "
                "channels-last off,on, precision default,bf16, 512x512 (128x128 with --tiny), batch 1, 3 steps.\n"
                "Cost on a 2-core CPU: --tiny runs the default matrix in about 5 s; the SD1.5-shaped UNet takes about "
                "4-10 s per step and cell (a few minutes for the default matrix). Compile only when asked: "
                "--compile off,default adds one cold compile per compiled cell (about 100 s each for SD1.5 on CPU, "
                "about 40 s each for --tiny).\n")
    p.set_defaults(func=run)


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.replace(";", ",").split(",") if t.strip())


def build_cells(args: argparse.Namespace, device) -> list[Cell]:
    """The matrix's cells, trimmed by ``--compile-attention``; MatrixError on a bad option. Fills in
    ``args.attention`` and ``args.size`` when they were left to their defaults."""
    from .unet_target import attention_names, known_attention_names
    args.attention = args.attention or ",".join(attention_names(device))
    args.size = args.size or ("128x128" if args.tiny else "512x512")
    known = known_attention_names()
    for name in _names(args.attention) + _names(args.compile_attention):
        if name not in known:
            raise MatrixError(f"unknown attention kernel {name!r} (one of {', '.join(known)})")
    compile_only = _names(args.compile_attention)
    if not set(compile_only) <= set(_names(args.attention)):
        raise MatrixError(f"--compile-attention {','.join(compile_only)} names kernels missing from --attention")
    if args.repeats < 1 or args.warmup < 0:
        raise MatrixError("--repeats must be at least 1 and --warmup at least 0")
    cells = matrix_from_args(args).cells()
    if compile_only:
        cells = [c for c in cells if c.compile == "off" or c.attention in compile_only]
    return cells


def command_line(args: argparse.Namespace) -> str:
    """The options as a reproducible ``python -m lib_accel bench unet ...`` line (outputs left out)."""
    parts = ["python -m lib_accel bench unet"]
    for key in _LIST_OPTIONS + ("repeats", "warmup", "seed", "weight_seed", "device"):
        value = getattr(args, key)
        if value not in (None, ""):
            parts.append(f"--{key.replace('_', '-')} {shlex.quote(str(value))}")
    if args.tiny:
        parts.append("--tiny")
    return " ".join(parts)


def report_markdown(table, command: str) -> str:
    """The Markdown report: header (command, machine), the engine's table, the best cell."""
    lines = ["# Standalone UNet benchmark", "", f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in table.machine.items() if key != "command"]
    lines += ["", table.markdown(), "", best_line(table), ""]
    return "\n".join(lines)


def best_line(table) -> str:
    best = table.best()
    if best is None:
        return "Best: no cell finished with a usable image."
    vs = f", {best.speedup:.2f}x the baseline" if best.speedup else ""
    return f"Best: {best.label()} at {best.cell.size_label()}: {best.sampler_its:.3f} sampler it/s{vs}."


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def run(args: argparse.Namespace) -> int:
    """Run the matrix; 0 when at least one cell finished, 1 when none did, 2 for a bad matrix."""
    import torch

    from .. import features
    from .chart_svg import bar_chart_svg
    from .engine import BenchRunner
    from .unet_model import UNetConfig
    from .unet_target import UNetTarget

    if args.device == "cuda" and not features.cuda().available:
        print(f"error: --device cuda, but {features.cuda().reason}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if features.cuda().available else "cpu"))
    try:
        cells = build_cells(args, device)
    except MatrixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    quiet = args.quiet

    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    target = UNetTarget(UNetConfig.tiny() if args.tiny else UNetConfig.sd15(), device, args.weight_seed, log=log)
    runner = BenchRunner(target, repeats=args.repeats, warmup=args.warmup, seed=args.seed,
                         progress=None if quiet else print_progress)
    start, load_start = time.perf_counter(), _load()
    try:
        table = runner.run(cells)
    except KeyboardInterrupt:
        runner.cancel()
        print("cancelled", file=sys.stderr)
        table = runner.table
    command = command_line(args)
    table.machine.update({"command": command, "date": time.strftime("%Y-%m-%d"),
                          "wall time": f"{time.perf_counter() - start:.0f} s for {len(cells)} cells",
                          "load average": f"{load_start} at the start, {_load()} at the end (1 min; {os.cpu_count()} "
                                          "CPUs): above the thread count means other work shared the CPU"})
    if args.note:
        table.machine["note"] = args.note
    if args.out:
        args.out_csv = args.out_csv or Path(args.out + ".csv")
        args.out_json = args.out_json or Path(args.out + ".json")
        args.markdown = args.markdown or Path(args.out + ".md")
        args.svg = args.svg or Path(args.out + ".svg")
    report(table, args)
    for path, text in ((args.markdown, report_markdown(table, command)), (args.svg, bar_chart_svg(table))):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if not any(r.status == "ok" for r in table.results):
        print("error: no cell finished (see the status column)", file=sys.stderr)
        return 1
    return 0
