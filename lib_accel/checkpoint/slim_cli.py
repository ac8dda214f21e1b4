"""``python -m lib_accel slim``: prune a checkpoint and convert it to .safetensors, verified.

Exit codes: 0 done (and verified), 1 refused or failed (one-line reason on stderr, no output written),
3 written but verification failed, 130 interrupted. The plan and results go to stdout; a ``\\r`` progress
bar goes to stderr when it is a terminal and the job is large.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from lib_accel.checkpoint import slim_plan as slim
from lib_accel.checkpoint import slim_verify, slim_write
from lib_accel.checkpoint.loading import CheckpointFormatError, UnsafeCheckpointError

BAR_MIN_BYTES = 32 * 1024 * 1024


class ProgressBar:
    """A dependency-free ``\\r`` bar; callable as ``progress(done_bytes, total_bytes)``; as a context manager it
    ends its line on exit, however the work ends."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30,
                 min_bytes: int = BAR_MIN_BYTES) -> None:
        self.label, self.stream, self.width, self.min_bytes = label, stream or sys.stderr, width, min_bytes
        self._last, self._drawn = 0.0, False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total < self.min_bytes or not self.stream.isatty() or (now - self._last < 0.1 and done < total):
            return
        self._last, self._drawn = now, True
        frac = done / total if total else 1.0
        fill = int(frac * self.width)
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {frac:4.0%} "
                          f"{slim.format_bytes(done)} / {slim.format_bytes(total)}   ")
        self.stream.flush()

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info) -> None:
        self.finish()


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``slim`` subcommand (``func=run``) to a ``python -m lib_accel`` subparsers object."""
    p = subparsers.add_parser(
        "slim", help="prune EMA/optimizer state, convert to fp16/bf16 .safetensors (original untouched)",
        description="Write a slimmer .safetensors copy of a checkpoint next to it "
                    "(name.slim-fp16.safetensors). Pickled checkpoints are loaded without running code; "
                    "the original is never modified.")
    p.add_argument("input", metavar="IN", help=".ckpt/.pt/.pth/.safetensors checkpoint")
    p.add_argument("--dtype", choices=tuple(slim.DTYPES), default="fp16",
                   help="store float32/float64 tensors as fp16 (default), bf16, or keep them")
    ema = p.add_mutually_exclusive_group()
    ema.add_argument("--drop-ema", dest="drop_ema", action="store_true", default=True,
                     help="drop model_ema.* weights (default: the WebUI samples with the non-EMA weights)")
    ema.add_argument("--keep-ema", dest="drop_ema", action="store_false", help="keep model_ema.* weights")
    p.add_argument("--drop-optimizer", action="store_true",
                   help="drop optimizer and other training state (always done; accepted for clarity)")
    p.add_argument("--vae", metavar="PATH", help="bake this VAE's weights in place of first_stage_model.*")
    p.add_argument("--out", metavar="OUT", help="output .safetensors path (default: next to IN)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never IN)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="reload the output and compare it with the source (default: on)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    p.set_defaults(func=run)
    return p


def _fail(message: object, code: int = 1) -> int:
    text = " ".join(str(message).split())
    print(f"accel slim: error: {text}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Plan, write and verify as ``args`` ask; returns the exit code (see module doc)."""
    stage = "planning"
    try:
        plan = slim.plan_slim(args.input, dtype=args.dtype, drop_ema=args.drop_ema, vae=args.vae,
                              output=args.out, overwrite=args.overwrite)
        print("\n".join(plan.describe()))
        if args.dry_run:
            problems = plan.problems()
            for problem in problems:
                print(f"would refuse: {problem}")
            return 1 if problems else 0
        stage = "writing"
        with ProgressBar("slim  ") as bar:
            result = slim_write.run_slim(plan, progress=bar)
        print(result.describe())
        if not args.verify:
            return 0
        stage = "verifying"
        with ProgressBar("verify") as bar:
            report = slim_verify.verify_slim(plan, progress=bar)
        print("\n".join(report.describe()))
        return 0 if report.ok else 3
    except KeyboardInterrupt:
        what = f"the output {plan.output} was kept" if stage == "verifying" else "no output was written"
        return _fail(f"interrupted while {stage}; {what}", 130)
    except FileNotFoundError as e:
        return _fail(e.strerror and f"{e.strerror}: {e.filename}" or e)
    except (UnsafeCheckpointError, CheckpointFormatError, slim.SlimError, OSError) as e:
        return _fail(e)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m lib_accel.checkpoint.slim_cli IN ...``), same as ``python -m lib_accel slim``."""
    parser = argparse.ArgumentParser(prog="python -m lib_accel")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["slim", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
