"""Peak memory of writing a slimmed checkpoint: the `safetensors` package's writer against Accel's streaming one.

A slim reads an fp32 checkpoint tensor by tensor (`safetensors.safe_open`) and writes an fp16 copy. The
package's `save_file` takes a dict of every output tensor, so the whole fp16 model is in memory before it
writes (and it may copy each tensor to bytes while serialising); Accel's writer writes the header from the plan,
then converts and writes one tensor at a time. Each variant runs in a fresh process; the figure is the peak of
its anonymous resident memory (RssAnon, sampled every 5 ms; the memory-mapped source is page cache, not counted)
minus the same reading after importing torch. Linux only.

    python benchmarks/safetensors_writer_memory.py --gib 2

The source is a synthetic fp32 file of about ``--gib`` GiB in tensors of SD-like sizes (written once into
``--dir``, default a temporary folder, removed afterwards). Results scale linearly with the model: the table
also states the figure for an SDXL fp32 -> fp16 slim (6.94 GB of fp16 output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDXL_FP16_OUTPUT_BYTES = 6_940_000_000  # about: sd_xl_base_1.0 (UNet, both text encoders, VAE) in fp16

_CHILD = r"""
import json, os, sys, threading, time
sys.path.insert(0, {root!r})
import torch
from safetensors import safe_open
from safetensors.torch import save_file

def anon_kib():
    with open("/proc/self/status") as s:
        return next(int(l.split()[1]) for l in s if l.startswith("RssAnon:"))

base, peak, done = anon_kib(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anon_kib())
        time.sleep(0.005)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
src, out, how = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
with safe_open(src, framework="pt") as f:
    keys = list(f.keys())
    if how == "package":
        tensors = {{k: f.get_tensor(k).to(torch.float16) for k in keys}}
        save_file(tensors, out)
        del tensors
    else:
        from lib_accel.checkpoint import safetensors_io
        specs = []
        for k in keys:
            sl = f.get_slice(k)
            specs.append(safetensors_io.TensorSpec(k, torch.float16, tuple(sl.get_shape())))
        with open(out, "wb") as o:
            safetensors_io.write_safetensors(o, specs, lambda k: f.get_tensor(k).to(torch.float16))
done.set()
sampler.join()
print(json.dumps({{"base_kib": base, "peak_kib": max(peak[0], anon_kib()), "seconds": time.perf_counter() - start,
                  "out_bytes": os.path.getsize(out)}}))
"""


def make_source(path: str, gib: float) -> int:
    """A synthetic fp32 checkpoint of about ``gib`` GiB, streamed to disk one tensor at a time."""
    import torch
    sys.path.insert(0, ROOT)
    from lib_accel.checkpoint import safetensors_io
    shapes = [(1280, 1280, 3, 3), (640, 640, 3, 3), (1280, 1280), (320, 320, 3, 3), (1280,)]
    specs, total = [], 0
    while total < gib * 2**30:
        shape = shapes[len(specs) % len(shapes)]
        specs.append(safetensors_io.TensorSpec(f"model.diffusion_model.t{len(specs)}.weight", torch.float32, shape))
        total += specs[-1].nbytes
    shape_of = {s.name: s.shape for s in specs}
    with open(path, "wb") as f:
        safetensors_io.write_safetensors(f, specs, lambda k: torch.randn(shape_of[k]) * 0.02)
    return os.path.getsize(path)


def measure(src: str, out: str, how: str) -> dict:
    code = _CHILD.format(root=ROOT)
    result = subprocess.run([sys.executable, "-c", code, src, out, how], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    os.remove(out)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the synthetic fp32 source (default: 2)")
    parser.add_argument("--dir", default=None, help="working folder (default: a temporary folder)")
    args = parser.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="accel-st-mem-")
    src = os.path.join(work, "source-fp32.safetensors")
    size = make_source(src, args.gib)
    rows = []
    for how in ("accel-stream", "package", "accel-stream", "package"):
        r = measure(src, os.path.join(work, f"out-{how}.safetensors"), how)
        extra = (r["peak_kib"] - r["base_kib"]) * 1024
        rows.append((how, extra, r["out_bytes"], r["seconds"]))
    os.remove(src)
    if not args.dir:
        os.rmdir(work)
    print(f"# safetensors writer memory, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}, source {size / 2**30:.2f} GiB fp32 -> fp16")
    print("| writer | peak extra anonymous RSS | output | extra / output | SDXL fp16 slim (6.94 GB out) | seconds |")
    print("|---|---|---|---|---|---|")
    for how, extra, out, secs in rows:
        ratio = extra / out
        print(f"| {how} | {extra / 2**30:.2f} GiB | {out / 2**30:.2f} GiB | {ratio:.2f}x | "
              f"{ratio * SDXL_FP16_OUTPUT_BYTES / 2**30:.1f} GiB | {secs:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
