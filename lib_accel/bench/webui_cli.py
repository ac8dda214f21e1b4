"""``python -m lib_accel bench webui --url http://127.0.0.1:7860``: the benchmark matrix against a running
WebUI's API (started with ``--api``, Accel installed). Prints the table and the best cell; writes CSV/JSON;
``--apply-best`` keeps the winner's settings, otherwise every setting is put back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .engine import BenchRunner, Progress
from .matrix import (
    COMPILE_CHOICES,
    PRECISION_CHOICES,
    Matrix,
    MatrixError,
    cell_settings,
    parse_bools,
    parse_ints,
    parse_sizes,
)

DEFAULT_PROMPT = "a photograph of a lighthouse on a cliff at sunset, detailed, 35mm"


def _list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_matrix_arguments(p: argparse.ArgumentParser, attention_default: str, vae: bool = True) -> None:
    """The axes and run options shared by the webui and unet benchmarks (``vae``: offer the VAE axis)."""
    p.add_argument("--attention", default=attention_default, help="comma-separated attention titles (first = baseline)")
    p.add_argument("--compile", default="off", help=f"comma-separated of {', '.join(COMPILE_CHOICES)}")
    p.add_argument("--channels-last", default="off", help="off, on or off,on")
    p.add_argument("--precision", default="default",
                   help=f"UNet precision, comma-separated of {', '.join(PRECISION_CHOICES)}")
    if vae:
        p.add_argument("--vae-precision", default="default",
                       help=f"VAE precision, comma-separated of {', '.join(PRECISION_CHOICES)}")
    p.add_argument("--size", default="512x512", help="comma-separated WIDTHxHEIGHT, e.g. 512x512,1024x768")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--steps", default="20", help="comma-separated step counts")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per cell (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per cell (compile lands here)")
    p.add_argument("--seed", type=int, default=1234, help="image seed (the same in every cell)")
    p.add_argument("--out-csv", type=Path, help="write the results as CSV")
    p.add_argument("--out-json", type=Path, help="write the results as JSON")


def matrix_from_args(args: argparse.Namespace) -> Matrix:
    return Matrix(attention=_list(args.attention), compile=_list(args.compile),
                  channels_last=parse_bools(_list(args.channels_last)), precision=_list(args.precision),
                  vae=_list(getattr(args, "vae_precision", "default")),
                  sizes=parse_sizes(args.size), batches=parse_ints(args.batch, "batch sizes"),
                  steps=parse_ints(args.steps, "steps"))


def print_progress(p: Progress) -> None:
    print(f"[{p.fraction:6.1%}] cell {p.cell_index + 1}/{p.cells}: {p.message}", file=sys.stderr, flush=True)


def report(table, args: argparse.Namespace) -> None:
    """Print the table and the best cell; write the requested files."""
    for key, value in table.machine.items():
        print(f"{key}: {value}")
    print()
    print(table.markdown())
    best = table.best()
    print()
    print(f"best: {best.label()} at {best.cell.size_label()}: {best.sampler_its or best.e2e_its:.3f} it/s"
          if best else "best: none (no cell finished with a usable image)")
    for path, text in ((args.out_csv, table.to_csv()), (args.out_json, table.to_json())):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    p = subparsers.add_parser(name, help="benchmark option combinations on a running WebUI (its --api)",
                              description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:7860", help="the WebUI's address (started with --api)")
    p.add_argument("--api-auth", help="USER:PASSWORD when the WebUI runs with --api-auth")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt of every image")
    p.add_argument("--sampler", default="Euler a", help="the WebUI sampler name of every image")
    p.add_argument("--apply-best", action="store_true", help="keep the fastest usable cell's settings")
    add_matrix_arguments(p, "Automatic,Accel auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .http_target import ApiError, HttpTarget
    try:
        matrix = matrix_from_args(args)
        cells = matrix.cells()
    except MatrixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    target = HttpTarget(args.url, args.prompt, auth=args.api_auth, sampler_name=args.sampler)
    runner = BenchRunner(target, repeats=args.repeats, warmup=args.warmup, seed=args.seed, progress=print_progress)
    keep = None
    try:
        table = runner.run(cells)
        best = table.best()
        if args.apply_best and best is not None:
            keep = cell_settings(best.cell, target.options().get("sd_model_checkpoint"))
            print(f"applying best: {keep}")
    except ApiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        runner.cancel()
        print("cancelled", file=sys.stderr)
        table = runner.table
    finally:
        try:
            target.restore(keep)
        except ApiError as e:
            print(f"warning: could not restore the settings: {e}", file=sys.stderr)
    report(table, args)
    return 0
