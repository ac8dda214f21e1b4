"""The in-process steps of ``benchmarks/gpu_check.py`` (each run in its own process by it, under a timeout).

``unet``: the standalone UNet benchmark (:mod:`lib_accel.bench.unet_target`, run by the benchmark engine) with
an "accel-auto" attention cell (Accel's per-shape fastest-kernel runner, as the WebUI's "Accel auto" builds it),
cells in order of value, each started only while the deadline leaves room for it (a skipped cell says "not run:
time budget"), the partial table written after every cell, and the UNet's FLOPs per call counted once per batch
size (torch's FlopCounterMode on the meta device: no memory, no GPU time).

``precompile``: one phase of "cold compile, then warm start in a fresh process": builds the UNet, installs
Accel's CompiledModule with a precompiled-graph folder in a fresh (cold) or reused (warm) Accel cache folder,
and times the first call (compile or load) and steady calls, compiled and eager.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lib_accel.attention import ChunkedAttention, FastestKernel, TimingStore, all_kernels, default_kernel  # noqa: E402
from lib_accel.bench.engine import BenchRunner, CellSkipped  # noqa: E402
from lib_accel.bench.matrix import Cell  # noqa: E402
from lib_accel.bench.unet_model import UNet, UNetConfig, build_unet  # noqa: E402
from lib_accel.bench.unet_target import UNetTarget  # noqa: E402

IMPORT_S = time.perf_counter() - START
ACCEL_AUTO = "accel-auto"


def accel_auto_kernel(log=print) -> FastestKernel:
    """What the WebUI's "Accel auto" runs (lib_accel.webui.optimizations.make_runner), with an in-memory store."""
    candidates = [k for k in all_kernels() if k.is_available() and k.name != "chunked"] + [ChunkedAttention(0.25)]
    return FastestKernel(candidates, default_kernel(), TimingStore(None, log=log), log=log)


class CheckTarget(UNetTarget):
    """UNetTarget plus the accel-auto kernel, a chosen compile backend and a deadline for starting cells."""

    def __init__(self, *args, deadline: float, backend: str = "inductor", compile_guess_s: float = 90.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline, self.compile_backend, self.compile_guess_s = deadline, backend, compile_guess_s
        self.auto = accel_auto_kernel(log=self.log)
        self.compile_seconds: list[float] = []  # first runs of compiled cells (they carry the compile)
        self._timing_first: float | None = None

    def apply(self, cell: Cell) -> None:
        left = self.deadline - time.time()
        need = 10.0 + (max(self.compile_seconds, default=self.compile_guess_s) if cell.compile != "off" else 0.0)
        if left < need:
            raise CellSkipped(f"not run: time budget ({left:.0f} s left, this cell needs about {need:.0f} s)")
        super().apply(cell)
        self._timing_first = time.perf_counter() if cell.compile != "off" else None

    def generate(self, cell: Cell, seed: int):
        gen = super().generate(cell, seed)
        if self._timing_first is not None:
            self.compile_seconds.append(time.perf_counter() - self._timing_first)
            self._timing_first = None
        return gen

    def _kernel(self, cell: Cell, dtype: torch.dtype):
        return self.auto if cell.attention == ACCEL_AUTO else super()._kernel(cell, dtype)



def plan_cells(part: str, size: tuple[int, int], batches: list[int], steps: int, precision: str, modes: list[str],
               extra_modes: list[str], low_precision: str) -> list[Cell]:
    """Cells in order of value. ``core``: per batch the WebUI-default baseline first (the engine's baseline is a
    shape's first cell), the WebUI's sdp, Accel auto, Accel auto + channels-last; then compiled Accel auto per mode
    at the first batch. ``extra`` (run after the compile phases): per other batch its baseline again and compiled
    Accel auto per mode; then the first batch's baseline again, more modes, channels-last + compile, and Accel auto
    in another precision."""
    w, h = size

    def cell(attention: str, mode: str = "off", cl: bool = False, batch: int = batches[0], prec: str = precision):
        return Cell(attention, mode, cl, prec, w, h, batch, steps)

    if part == "core":
        cells = [cell(a, "off", cl, b) for b in batches
                 for a, cl in (("webui-default", False), ("sdpa", False), (ACCEL_AUTO, False), (ACCEL_AUTO, True))]
        return cells + [cell(ACCEL_AUTO, mode) for mode in modes]
    cells = [c for b in batches[1:] for c in [cell("webui-default", batch=b)] + [cell(ACCEL_AUTO, m, batch=b)
                                                                               for m in modes]]
    cells += [cell("webui-default")] + [cell(ACCEL_AUTO, mode) for mode in extra_modes]
    cells += [cell(ACCEL_AUTO, modes[0], True)] if modes else []
    return cells + ([cell(ACCEL_AUTO, prec=low_precision)] if low_precision and low_precision != precision else [])


def unet_flops(config: UNetConfig, batch: int, width: int, height: int) -> int:
    """FLOPs of one UNet forward (matmuls, convolutions, attention), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        model = UNet(config)
        x = torch.empty(batch, config.in_channels, height // 8, width // 8)
        t = torch.empty(batch)
        context = torch.empty(batch, config.context_tokens, config.context_dim)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, context)
    return int(counter.get_total_flops())


def run_unet(args: argparse.Namespace) -> int:
    config = UNetConfig.tiny() if args.tiny else UNetConfig.sd15()
    device = torch.device(args.device)
    w, h = (int(v) for v in args.size.split("x"))
    batches = [int(b) for b in args.batches.split(",")]
    out = Path(args.out)
    flops = {str(b): unet_flops(config, b, w, h) for b in batches}
    target = CheckTarget(config, device, 0, deadline=args.deadline, backend=args.backend,
                         compile_guess_s=args.compile_guess_s, log=lambda m: print(m, file=sys.stderr, flush=True))
    runner = BenchRunner(target, repeats=args.repeats, warmup=1, seed=1234)
    cells = plan_cells(args.part, (w, h), batches, args.steps, args.precision, _names(args.modes),
                       _names(args.extra_modes), args.low_precision)

    def dump(final: bool = False) -> None:
        data = json.loads(runner.table.to_json())
        data.update(flops_per_call=flops, markdown=runner.table.markdown(), cells_planned=len(cells),
                    complete=final, wall_s=round(time.perf_counter() - START, 1), compile_backend=args.backend,
                    part=args.part,
                    accel_auto_choices=sorted({c[2] for c in target.auto.settled_state()["chosen"]}))
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, out)

    def progress(p) -> None:
        print(f"[unet] cell {p.cell_index + 1}/{p.cells}: {p.message}", file=sys.stderr, flush=True)
        dump()

    runner.progress = progress
    table = runner.run(cells)
    dump(final=True)
    print(table.markdown())
    return 0 if any(r.status == "ok" for r in table.results) else 1


def run_precompile(args: argparse.Namespace) -> int:
    from lib_accel.attention import get_kernel
    from lib_accel.compile import CompiledModule, CompileOptions, CompileWorker
    from lib_accel.compile.cache import use_cache_dir

    enabled = use_cache_dir(args.cache)  # a fresh folder for the cold phase, the same one for the warm phase
    config = UNetConfig.tiny() if args.tiny else UNetConfig.sd15()
    device, dtype = torch.device(args.device), {"fp16": torch.float16, "bf16": torch.bfloat16,
                                                "fp32": torch.float32}[args.precision]
    w, h = (int(v) for v in args.size.split("x"))
    built = time.perf_counter()
    unet = build_unet(config, 0, device, dtype)
    unet.attention = get_kernel("sdpa")
    built = time.perf_counter() - built
    logs: list[str] = []
    compiled = CompiledModule(unet, "unet", CompileOptions(backend=args.backend, background=False,
                                                           precompile_dir=os.path.join(args.cache, "precompiled")),
                              log=logs.append, worker=CompileWorker("gpu-check"))
    compiled.install()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, h // 8, w // 8, generator=g).to(device, dtype)
    t = torch.full((1,), 500.0, device=device)
    ctx = torch.randn(1, config.context_tokens, config.context_dim, generator=g).to(device, dtype)
    with torch.inference_mode():
        first = time.perf_counter()
        unet(x, t, ctx)
        _sync(device)
        first = time.perf_counter() - first
        compiled_ms, eager_ms = _per_call_ms(lambda: unet(x, t, ctx), device), \
            _per_call_ms(lambda: compiled._eager(x, t, ctx), device)
    [state] = compiled.shapes.values()
    result = {"phase": args.phase, "device": str(device), "dtype": args.precision, "size": args.size,
              "backend": args.backend, "import_s": round(IMPORT_S, 2), "build_s": round(built, 2),
              "first_call_s": round(first, 2), "status": state.status, "reason": state.reason,
              "ready_in_s": state.seconds, "cache": state.cache, "precompile_refusal": compiled.precompiler.refusal(),
              "compiled_ms": compiled_ms, "eager_ms": eager_ms, "cache_features": enabled, "log": logs,
              "process_s": round(time.perf_counter() - START, 2)}
    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0 if state.status == "ready" else 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _per_call_ms(call, device: torch.device, repeats: int = 5) -> float:
    call()
    _sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return round(sorted(samples)[len(samples) // 2], 3)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    u = sub.add_parser("unet")
    u.add_argument("--part", choices=("core", "extra"), default="core", help="which cells (see plan_cells)")
    u.add_argument("--modes", default="default,reduce-overhead")
    u.add_argument("--extra-modes", default="max-autotune-no-cudagraphs")
    u.add_argument("--batches", default="1,4")
    u.add_argument("--steps", type=int, default=20)
    u.add_argument("--repeats", type=int, default=2)
    u.add_argument("--low-precision", default="bf16")
    u.add_argument("--deadline", type=float, default=math.inf, help="epoch seconds after which no cell starts")
    u.add_argument("--compile-guess-s", type=float, default=90.0, help="assumed compile time before one is measured")
    pc = sub.add_parser("precompile")
    pc.add_argument("--phase", choices=("cold", "warm"), required=True)
    pc.add_argument("--cache", required=True)
    for q in (u, pc):
        q.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        q.add_argument("--precision", default="fp16")
        q.add_argument("--size", default="512x512")
        q.add_argument("--tiny", action="store_true")
        q.add_argument("--backend", default="inductor")
        q.add_argument("--out", required=True)
    args = p.parse_args(argv)
    return run_unet(args) if args.step == "unet" else run_precompile(args)


if __name__ == "__main__":
    sys.exit(main())
