"""Cold and warm compile time, eager vs compiled seconds per step, in a real WebUI (not a test).

    ACCEL_WEBUI_DIR=/path/to/webui ACCEL_WEBUI_PYTHON=/path/to/its/python \
        python benchmarks/compile_webui.py --size 512 --out benchmarks/results/compile-<machine>.csv

Starts the WebUI with this extension (fresh data dir, fresh compile cache), then:
1. eager: s/step = (time of a 6-step image - time of a 2-step image) / 4, which cancels the text encoder,
   the VAE and the HTTP round trip;
2. enables compile for the loaded checkpoint (inline, so the first image waits) and reads the cold
   compile time from the log, then measures compiled s/step the same way;
3. restarts the WebUI on the same data dir and cache, and reads the warm compile time.

Both times are the "[Accel] compile: ... ready in N s (step s, ...)" line: from the start of the compile
(the first UNet call at that size) until the graph has run once. Its steps are recorded too: cold =
eager priming + compile (trace and inductor, or dynamo's lazy compile) + first compiled run; warm =
loading the precompiled graph (where torch supports it; else priming + re-trace from inductor's caches)
+ first compiled run. "compile work" is everything but the first compiled run (a denoising step the
image needs anyway).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]
from webui_process import WebUI  # noqa: E402

from lib_accel.features import device_label  # noqa: E402

READY = re.compile(r"\[Accel\] compile: .*: (\S+), UNet batch (\d+)[^\n]* ready in ([\d.]+) s \(([^)]*)\)")
STEP = re.compile(r"([a-z][a-z ]*?) (?:in )?([\d.]+) s\b")


def timed_image(ui: WebUI, size: int, steps: int) -> float:
    start = time.perf_counter()
    ui.txt2img(width=size, height=size, steps=steps, seed=3)
    return time.perf_counter() - start


def seconds_per_step(ui: WebUI, size: int) -> float:
    timed_image(ui, size, 2)  # warm caches (and any pending compile)
    short = min(timed_image(ui, size, 2) for _ in range(2))
    long = min(timed_image(ui, size, 6) for _ in range(2))
    return (long - short) / 4


def compile_seconds(ui: WebUI, mark: int, timeout: float = 1800) -> tuple[float, dict[str, float], str]:
    """(ready-in seconds, {step: seconds}, the parenthesised details) of the last compile since ``mark``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = READY.findall(ui.log_since(mark))
        if found:
            details = found[-1][3]
            print(f"  compile: {details}", flush=True)
            steps = {name.strip(): float(value) for name, value in STEP.findall(details.split(";")[0])}
            return float(found[-1][2]), steps, details
        time.sleep(1)
    raise TimeoutError("no compile finished; log:\n" + ui.log_tail())


def torch_version(root: Path) -> str:
    import subprocess
    python = os.environ.get("ACCEL_WEBUI_PYTHON", sys.executable)
    return subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
                          cwd=root).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--attention", default="Accel auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = Path(os.environ["ACCEL_WEBUI_DIR"]).resolve()
    data = Path(tempfile.mkdtemp(prefix="accel-bench-compile-"))
    cache = data / "compile-cache"
    rows = []

    ui = WebUI(root, data)
    ui.start()
    try:
        ui.set_options(cross_attention_optimization=args.attention, accel_compile_cache_dir=str(cache))
        eager = seconds_per_step(ui, args.size)
        title = ui.get("/sdapi/v1/options")["sd_model_checkpoint"]  # set once the model has loaded
        print(f"eager: {eager:.2f} s/step", flush=True)
        mark = ui.log_mark()
        ui.set_options(accel_compile_background=False, accel_compile_prewarm="", accel_compile_checkpoints=[title],
                       accel_compile_enabled=True)
        timed_image(ui, args.size, 2)
        cold, cold_steps, cold_details = compile_seconds(ui, mark)
        print(f"cold compile: {cold:.1f} s", flush=True)
        compiled = seconds_per_step(ui, args.size)
        print(f"compiled: {compiled:.2f} s/step", flush=True)
    finally:
        ui.stop()

    ui = WebUI(root, data)  # same data dir (settings) and cache dir: a restart
    ui.start()
    try:
        mark = ui.log_mark()
        timed_image(ui, args.size, 2)
        warm, warm_steps, warm_details = compile_seconds(ui, mark)
        print(f"warm compile after restart: {warm:.1f} s", flush=True)
    finally:
        ui.stop()

    machine = f"{device_label('cpu')} ({platform.machine()}, no GPU)"
    cold_work = cold - cold_steps.get("first compiled run", 0.0)  # priming + compile
    warm_work = warm - warm_steps.get("first compiled run", 0.0)  # loading the precompiled graph
    rows.append({"machine": machine, "size": args.size, "attention": args.attention, "eager_s_per_step": eager,
                 "compiled_s_per_step": compiled, "speedup": eager / compiled, "cold_compile_s": cold,
                 "warm_compile_s": warm, "warm_over_cold": warm / cold,
                 "cold_compile_work_s": cold_work, "warm_compile_work_s": warm_work,
                 "warm_over_cold_compile_work": warm_work / cold_work,
                 "cold_steps": cold_details, "warm_steps": warm_details, "torch": torch_version(root),
                 "webui_log": str(ui.log_path)})
    for key, value in rows[0].items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            f.write(f"# date: {time.strftime('%Y-%m-%d')}\n# command: python benchmarks/compile_webui.py "
                    f"--size {args.size}\n")
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
