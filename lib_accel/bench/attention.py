"""``python -m lib_accel bench attention``: every available kernel on SD1.5's (or SDXL's) attention shapes.

For each image size the SD1.5 UNet attends at four token counts (latent/1, /2, /4 and the mid block
at /8) with 8 heads of 40, 80, 160, 160 dims, once over itself and once over the 77 prompt tokens, and
the VAE decoder attends once over the latent pixels with a single 512-dim head (``--model sdxl``: SDXL's
UNet attends at latent/2 with 10 heads of 64 in 10 blocks and at latent/4 with 20 heads of 64 in 60 blocks,
cross-attention over 77 tokens; same VAE). Calls per UNet step
weight the per-shape times into a per-step total. Speedups are against an emulation of what the WebUI
runs by default on the device ("Automatic": InvokeAI-style 32 MiB slices on CPU, Doggettx-style
free-memory splitting on CUDA); errors are max |out - float64 reference| on sampled query rows.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass

import torch

from .. import features
from ..attention import ChunkedAttention, all_kernels, reference_attention
from ..attention.base import AttentionCall, AttentionKernel, KernelUnsupported
from ..attention.timing import synchronize
from ..info import default_device, format_table

WORK_DIR = "accel-bench"  # relative to the current folder; committed results are copied deliberately
MAX_SIZE = 4096
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_REFERENCE_ROWS = 128


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    heads: int
    q_tokens: int
    kv_tokens: int
    head_dim: int
    calls_per_step: int  # per UNet step (VAE: per image)


def sd15_shapes(size: int, batch: int = 1) -> list[Shape]:
    latent = size // 8
    shapes = []
    # (token side, head dim, transformer blocks per UNet step): 2 down + 3 up per level, 1 in the mid block
    for side, dim, blocks in ((latent, 40, 5), (latent // 2, 80, 5), (latent // 4, 160, 5), (latent // 8, 160, 1)):
        tokens = side * side
        shapes.append(Shape(f"{size}px self {tokens}t d{dim}", 2 * batch, 8, tokens, tokens, dim, blocks))
        shapes.append(Shape(f"{size}px cross {tokens}t d{dim}", 2 * batch, 8, tokens, 77, dim, blocks))
    shapes.append(Shape(f"{size}px vae {latent * latent}t d512", batch, 1, latent * latent, latent * latent, 512, 0))
    return shapes


def sdxl_shapes(size: int, batch: int = 1) -> list[Shape]:
    """SDXL's UNet: transformer depth 2 at latent/2 (2 down + 3 up blocks) and depth 10 at latent/4
    (2 down + 3 up + the mid block), head dim 64; the VAE as in SD1.5."""
    latent = size // 8
    shapes = []
    for side, heads, blocks in ((latent // 2, 10, 2 * 5), (latent // 4, 20, 10 * 6)):
        tokens = side * side
        shapes.append(Shape(f"sdxl {size}px self {tokens}t h{heads}", 2 * batch, heads, tokens, tokens, 64, blocks))
        shapes.append(Shape(f"sdxl {size}px cross {tokens}t h{heads}", 2 * batch, heads, tokens, 77, 64, blocks))
    shapes.append(Shape(f"sdxl {size}px vae {latent * latent}t d512", batch, 1, latent * latent, latent * latent,
                        512, 0))
    return shapes


SHAPE_SETS = {"sd15": sd15_shapes, "sdxl": sdxl_shapes}


def webui_default_kernel(device: torch.device) -> AttentionKernel:
    if device.type == "cuda":
        return ChunkedAttention(memory_fraction=0.4, name="webui-default", label="Doggettx-style split (emulated)")
    return ChunkedAttention(memory_fraction=1.0, budget_bytes=32 << 20, name="webui-default",
                            label="InvokeAI-style 32 MiB slices (emulated)")


def _materialised_bytes(kernel: AttentionKernel, shape: Shape, dtype: torch.dtype) -> int:
    """Memory of a full score matrix, for kernels that build one (math); fused/chunked kernels do not."""
    if kernel.name != "sdpa-math":
        return 0
    return shape.batch * shape.heads * shape.q_tokens * shape.kv_tokens * max(4, torch.finfo(dtype).bits // 8) * 2


def _time(kernel, q, k, v, min_seconds: float, max_repeats: int) -> float:
    kernel(q, k, v)  # warm-up (and first-use kernel selection)
    synchronize(q.device)
    samples = []
    start = time.perf_counter()
    while len(samples) < max_repeats and (len(samples) < 2 or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        kernel(q, k, v)
        synchronize(q.device)
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return samples[len(samples) // 2] * 1000.0


def run_bench(sizes: list[int], dtype: torch.dtype, device: torch.device, kernels: list[str] | None = None,
              min_seconds: float = 0.5, max_repeats: int = 10, log=print, model: str = "sd15") -> list[dict]:
    from ..attention.chunked import free_memory_bytes
    torch.manual_seed(0)
    candidates = [webui_default_kernel(device)] + [k for k in all_kernels() if k.is_available() or kernels]
    if kernels:
        candidates = [k for k in candidates if k.name in kernels or k.name == "webui-default"]
    rows = []
    for size in sizes:
        for shape in SHAPE_SETS[model](size):
            q = torch.randn(shape.batch, shape.heads, shape.q_tokens, shape.head_dim, device=device, dtype=dtype)
            k = torch.randn(shape.batch, shape.heads, shape.kv_tokens, shape.head_dim, device=device, dtype=dtype)
            v = torch.randn_like(k)
            idx = torch.linspace(0, shape.q_tokens - 1, min(_REFERENCE_ROWS, shape.q_tokens)).long().to(device)
            ref = reference_attention(q[:, :, idx], k, v)
            call = AttentionCall.of(q, k, v)
            base_ms = None
            for kernel in candidates:
                row = {"size": size, "shape": shape.name, "kernel": kernel.name, "ms": None, "speedup": None,
                       "max_abs_err": None, "calls_per_step": shape.calls_per_step, "note": ""}
                need = _materialised_bytes(kernel, shape, dtype)
                reasons = kernel.reasons(call)
                if need > free_memory_bytes(device) // 2:
                    reasons = reasons + [f"needs ~{need / 2**30:.1f} GiB for the score matrix"]
                if not reasons:
                    try:
                        with torch.no_grad():
                            row["ms"] = _time(kernel, q, k, v, min_seconds, max_repeats)
                            out = kernel(q, k, v)[:, :, idx]
                        row["max_abs_err"] = float((out.double().cpu() - ref).abs().max())
                    except KernelUnsupported as e:
                        reasons = e.reasons
                    except RuntimeError as e:
                        if "out of memory" not in str(e).lower():
                            raise
                        reasons = ["out of memory"]
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                row["note"] = "; ".join(reasons)[:160]
                if kernel.name == "webui-default":
                    base_ms = row["ms"]
                if row["ms"] and base_ms:
                    row["speedup"] = base_ms / row["ms"]
                rows.append(row)
                log(_progress(row))
            del q, k, v
    return rows


def _progress(row: dict) -> str:
    if row["ms"] is None:
        return f"  {row['shape']:<28} {row['kernel']:<16} skipped: {row['note']}"
    return f"  {row['shape']:<28} {row['kernel']:<16} {row['ms']:9.2f} ms  err {row['max_abs_err']:.2e}"


def per_step_totals(rows: list[dict]) -> list[dict]:
    """Per size and kernel: attention milliseconds per UNet step, when the kernel ran every UNet shape."""
    totals: dict[tuple[int, str], list] = {}
    for r in rows:
        if r["calls_per_step"] == 0:
            continue
        entry = totals.setdefault((r["size"], r["kernel"]), [0.0, True])
        if r["ms"] is None:
            entry[1] = False
        else:
            entry[0] += r["ms"] * r["calls_per_step"]
    out = []
    for (size, kernel), (ms, complete) in totals.items():
        base = totals.get((size, "webui-default"))
        speedup = base[0] / ms if complete and base and base[1] and ms else None
        out.append({"size": size, "kernel": kernel, "ms_per_step": ms if complete else None, "speedup": speedup})
    return out


def render(rows: list[dict]) -> str:
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    def ratio(x):
        return "-" if x is None else f"{x:.2f}x"
    table = format_table([[r["shape"], r["kernel"], fmt(r["ms"], ".2f"), ratio(r["speedup"]),
                           fmt(r["max_abs_err"], ".1e"), r["note"][:60]] for r in rows],
                         ["shape", "kernel", "ms", "vs webui", "max abs err", "note"])
    totals = format_table([[t["size"], t["kernel"], fmt(t["ms_per_step"], ".1f"), ratio(t["speedup"])]
                           for t in per_step_totals(rows)], ["size", "kernel", "attention ms / UNet step", "vs webui"])
    return f"{table}\n\n{totals}\n"


def write_csv(rows: list[dict], path: str, meta: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        for key, value in meta.items():
            f.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


def register(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="time every attention kernel on SD1.5 (or SDXL) attention shapes",
                              description=__doc__)
    p.add_argument("--model", choices=list(SHAPE_SETS), default="sd15", help="whose attention shapes")
    p.add_argument("--sizes", default="512,1024", help="image sizes in pixels (multiples of 8), comma separated")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default=None, help="cpu or cuda[:N]; default: cuda when available, else cpu")
    p.add_argument("--kernels", default="", help="comma-separated kernel names; default: every available kernel")
    p.add_argument("--min-seconds", type=float, default=0.5, help="time each cell at least this long")
    p.add_argument("--out", default=None,
                   help=f"CSV path; default: {WORK_DIR}/attention-<device>-<dtype>-<time>.csv in the current folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists (refused otherwise)")
    p.set_defaults(func=main)


class UsageError(ValueError):
    """A bad command-line value; the message names the option."""


def parse_sizes(text: str) -> list[int]:
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit() or int(part) % 8 or not 64 <= int(part) <= MAX_SIZE:
            raise UsageError(f"--sizes: {part!r} is not an image size (a multiple of 8 from 64 to {MAX_SIZE})")
        sizes.append(int(part))
    if not sizes:
        raise UsageError("--sizes: no size given")
    return sizes


def parse_kernels(text: str) -> list[str] | None:
    names = [k.strip() for k in text.split(",") if k.strip()]
    known = [k.name for k in all_kernels()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--kernels: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return names or None


def parse_device(text: str | None) -> torch.device:
    if not text:
        return default_device()
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise UsageError(f"--device: {text!r} is not a device ({e})") from None
    if device.type == "cuda" and not features.cuda().available:
        raise UsageError(f"--device {text}: {features.cuda().reason}")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: {text!r}: only cpu and cuda are benchmarked")
    return device


def main(args: argparse.Namespace) -> int:
    try:
        device = parse_device(args.device)
        sizes, kernels = parse_sizes(args.sizes), parse_kernels(args.kernels)
        if args.min_seconds < 0:
            raise UsageError("--min-seconds must be 0 or more")
        if args.out and os.path.exists(args.out) and not args.overwrite:
            raise UsageError(f"--out {args.out} exists: pass --overwrite to replace it")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    label = features.device_label(device)
    print(f"Accel attention benchmark ({args.model} shapes) on {label}, torch {torch.__version__}, {dtype}")
    rows = run_bench(sizes, dtype, device, kernels, args.min_seconds, model=args.model)
    print("\n" + render(rows))
    slug = "".join(c if c.isalnum() else "-" for c in label).strip("-").lower()[:60]
    dtype_name = str(dtype).replace("torch.", "")
    model = "" if args.model == "sd15" else f"{args.model}-"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out or os.path.join(WORK_DIR, f"attention-{model}{slug}-{dtype_name}-{stamp}.csv")
    meta = {"device": label, "torch": torch.__version__, "dtype": dtype_name,
            "date": time.strftime("%Y-%m-%d"), "command": "python -m lib_accel bench attention " +
            " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                     if k in ("model", "sizes", "dtype", "kernels") and v)}
    write_csv(rows, path, meta)
    print(f"wrote {path}")
    return 0



