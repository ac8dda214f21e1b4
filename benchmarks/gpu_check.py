"""One prepared GPU check: ``python benchmarks/gpu_check.py OUTDIR [--budget-s 420] [--smoke]``, from the repo root.

Runs, in order of value, each step in its own process group under the time left of the budget (killed at the
deadline, so the check never overruns; a step without enough time left is listed as "not run: time budget"):
``python -m lib_accel info --json``; the CUDA test tier (``pytest tests/gpu``); ``bench attention`` at SD1.5
512²/1024² and SDXL 1024² in fp16, against the WebUI-default emulation; the standalone SD1.5-shaped UNet at 512²,
20 steps, fp16 (batch 1 and 4: WebUI-default baseline, the WebUI's sdp, Accel auto, channels-last; batch 1:
compile default and reduce-overhead), peak VRAM, FLOPs per call; a cold compile, then a warm start in a fresh
process loading the precompiled graph; the UNet's batch-4 compiles and other extras while time remains; bf16
attention. Writes four files into OUTDIR: summary.md, results.json, results.csv and gpu_check.log. Needs only
the repository (no WebUI, no network).

``--smoke``: the same steps on CPU (CUDA hidden), the tiny UNet at 64², fp32 and bf16, compile backend "eager"
(a cold inductor compile takes ~40 s on 2 cores): a check that the script works, in well under a minute.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = Path(__file__).with_name("gpu_check_steps.py")
WRITE_RESERVE_S = 3.0
# Dense fp16/bf16 tensor-core peak (TFLOPS, no sparsity, vendor data sheets); matched in order on the GPU's name.
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("RTX 4090", 165.2))
NOT_IMPLEMENTED = ("SDXL-shaped UNet at 1024² (compiled and eager): not implemented here (the standalone UNet has "
                   "SD1.5's shape only)",
                   "step-skipping levels of the \"call the UNet less\" issue: not implemented here (not in the "
                   "code yet)")


def peak_tflops(gpu_name: str) -> float | None:
    return next((tflops for key, tflops in PEAK_TFLOPS if key.lower() in gpu_name.lower()), None)


def plan(smoke: bool, work: Path) -> list[dict]:
    """The steps in order: name, argv, min_s (not started with less time left), reserve_s (kept for later
    steps when the step sets its own soft deadline), cap_share (at most this share of the budget), kind, out."""
    py, steps = sys.executable, str(STEPS)
    dev = "cpu" if smoke else "cuda"
    dtypes, sizes, sdxl = (("fp32", "bf16"), "64", "64") if smoke else (("fp16", "bf16"), "512,1024", "1024")

    def attention(model: str, dtype: str, size: str) -> dict:
        out = work / f"attention-{model}-{dtype}.csv"
        return {"name": f"attention {model} {dtype}", "kind": "attention", "min_s": 5 if smoke else 20, "out": out,
                "argv": [py, "-m", "lib_accel", "bench", "attention", "--model", model, "--device", dev, "--dtype",
                         dtype, "--sizes", size, "--min-seconds", "0" if smoke else "0.1",
                         "--out", str(out)]}

    common = ["--device", dev, "--precision", dtypes[0]] + (["--tiny", "--size", "64x64", "--backend", "eager"]
                                                            if smoke else ["--size", "512x512"])
    unet = [{"name": f"unet {part}", "kind": "unet", "min_s": 10 if smoke else 60, "out": work / f"unet-{part}.json",
             "reserve_s": (15 if smoke else 150) if part == "core" else (5 if smoke else 40),
             "argv": [py, steps, "unet", "--part", part, *common, "--batches", "1,2" if smoke else "1,4",
                      "--steps", "2" if smoke else "20", "--repeats", "1" if smoke else "2",
                      "--compile-guess-s", "5" if smoke else "90", "--out", str(work / f"unet-{part}.json")]
             + (["--extra-modes", ""] if smoke else [])} for part in ("core", "extra")]
    precompile = [{"name": f"precompile {phase}", "kind": "precompile", "min_s": 8 if smoke else 60,
                   "out": work / f"precompile-{phase}.json",
                   "argv": [py, steps, "precompile", "--phase", phase, "--cache", str(work / "compile-cache"),
                            *common, "--out", str(work / f"precompile-{phase}.json")]} for phase in ("cold", "warm")]
    return [{"name": "info", "kind": "info", "min_s": 3, "argv": [py, "-m", "lib_accel", "info", "--json"]},
            {"name": "CUDA test tier", "kind": "tests", "min_s": 5 if smoke else 30, "cap_share": 0.4,
             "argv": [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", "tests/gpu"]},
            attention("sd15", dtypes[0], sizes), attention("sdxl", dtypes[0], sdxl), unet[0], *precompile, unet[1],
            attention("sd15", dtypes[1], sizes), attention("sdxl", dtypes[1], sdxl)]


def run_step(argv: list[str], timeout_s: float, env: dict, out_path: Path, err_path: Path) -> tuple[int | None, float]:
    """Run ``argv`` in its own process group; kill the whole group at ``timeout_s``. (exit status or None, seconds)."""
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout_s, 0.1))
        except subprocess.TimeoutExpired:
            rc = None
        finally:  # also ends what a finished step left running (compile workers)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    return rc, time.monotonic() - start


def tests_summary(text: str) -> dict:
    last = text.strip().splitlines()[-1] if text.strip() else ""
    counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", last)
    lines = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR", "SKIPPED"))]
    return {"counts": {kind: int(n) for n, kind in counts}, "last_line": last, "lines": lines[:40]}


def read_attention(path: Path) -> tuple[dict, dict]:
    """The CSV's header lines, its rows, and per size and kernel the attention ms per UNet step."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    meta = dict(ln[2:].split(": ", 1) for ln in lines if ln.startswith("# ") and ": " in ln)
    rows = list(csv.DictReader([ln for ln in lines if not ln.startswith("#")]))
    totals: dict[tuple[str, str], list] = {}
    for r in rows:
        if r["calls_per_step"] != "0":
            entry = totals.setdefault((r["size"], r["kernel"]), [0.0, True])
            entry[0] += float(r["ms"]) * int(r["calls_per_step"]) if r["ms"] else 0.0
            entry[1] = entry[1] and bool(r["ms"])
    per_step = []
    for (size, kernel), (ms, complete) in totals.items():
        base = totals.get((size, "webui-default"))
        ratio = base[0] / ms if complete and base and base[1] and ms else None
        per_step.append({"size": size, "kernel": kernel, "ms_per_step": ms if complete else None, "vs_webui": ratio})
    return meta, {"rows": rows, "per_step": per_step}


def unet_best(parts: dict, gpu: str) -> dict | None:
    """The finished cell with a usable image and the highest FLOP rate (FLOPs per call x UNet calls per second)."""
    flops = next((u["flops_per_call"] for u in parts.values() if u.get("flops_per_call")), {})
    best = None
    for r in (r for u in parts.values() for r in u.get("results", [])):
        usable = not r.get("black") and (r.get("psnr_db") is None or float(r["psnr_db"]) >= 25.0)  # engine's rule
        if r.get("status") == "ok" and r.get("sampler_its") and str(r["batch"]) in flops and usable:
            tflops = flops[str(r["batch"])] * r["sampler_its"] / 1e12
            if best is None or tflops > best["tflops"]:
                best = {"label": r["label"], "batch": r["batch"], "sampler_its": r["sampler_its"], "tflops": tflops,
                        "speedup": r.get("speedup")}
    if best is not None:
        peak = peak_tflops(gpu) if gpu.startswith("cuda") else None
        best.update(peak_tflops=peak, share=best["tflops"] / peak if peak else None)
    return best


def _si(value: float) -> str:
    factor, prefix = next((f, p) for f, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1, "")) if value >= f or f == 1)
    return f"{value / factor:.3g} {prefix}"


def _fmt(value, spec: str = ".2f", none: str = "–") -> str:
    return none if value is None else format(value, spec)


def render(data: dict) -> str:
    m = data["machine"]
    smoke = " SMOKE run (CPU, tiny UNet, compile backend eager): a check of the script, not a measurement."
    lines = [f"# Accel GPU check: {m.get('device', 'unknown device')}", "",
             f"{m['date']}, torch {m.get('torch', '?')}, Python {m.get('python', '?')}, "
             f"budget {data['budget_s']:.0f} s, wall {data['wall_s']:.0f} s." + (smoke if data["smoke"] else ""), "",
             "## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {_fmt(s.get('seconds'), '.0f')} |" for s in data["steps"]]
    tests = data.get("tests")
    if tests:
        lines += ["", "## CUDA test tier", "", f"`{tests['last_line']}`", ""] + [f"- {ln}" for ln in tests["lines"]]
    for run, att in data.get("attention", {}).items():
        lines += ["", f"## Attention {run}: ms per UNet step, vs the WebUI-default emulation "
                      f"({att['meta'].get('device')})", "", "| size | kernel | ms / step | vs webui-default |",
                  "|---|---|---|---|"]
        lines += [f"| {t['size']} | {t['kernel']} | {_fmt(t['ms_per_step'], '.1f')} | {_fmt(t['vs_webui'])}x |"
                  for t in att["per_step"]]
    for part, unet in data.get("unet", {}).items():
        flops = ", ".join(f"batch {b}: {_si(f)}FLOP" for b, f in unet.get("flops_per_call", {}).items())
        model = unet.get("machine", {}).get("model", "").split(";")[0]
        lines += ["", f"## Standalone UNet, {part} cells ({model}; ratios vs the WebUI-default cell of the same batch "
                      "in this table)", "", unet.get("markdown", ""), "", f"FLOPs per UNet call: {flops}."]
    if data.get("unet"):
        best = data.get("unet_best")
        if best:
            share = (f"{best['share']:.1%} of the GPU's dense fp16/bf16 tensor peak ({best['peak_tflops']:.0f} TFLOPS)"
                     if best["share"] is not None else "share of peak: unknown (no peak figure for this device)")
            lines.append(f"Best UNet call: {best['label']} at batch {best['batch']}: {best['sampler_its']:.2f} calls/s "
                         f"= {_si(best['tflops'] * 1e12)}FLOPS, {share}.")
    pre = data.get("precompile", {})
    if pre:
        lines += ["", "## Cold compile, then warm start in a fresh process", "",
                  "| phase | first call s | status | cache | precompiled graphs | compiled ms | eager ms |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['phase']} | {p['first_call_s']:.1f} | {p['status']} | {p['cache']} | "
                  f"{p['precompile_refusal'] or 'on'} | {p['compiled_ms']:.2f} | {p['eager_ms']:.2f} |"
                  for p in pre.values()]
    lines += ["", "## Not run", ""] + [f"- {n}" for n in data["not_run"]]
    lines += ["", "## Errors in this script", ""] + [f"- {e}" for e in data["errors"]] if data["errors"] else []
    return "\n".join(lines + [""])


def csv_rows(data: dict) -> list[dict]:
    rows = []
    for run, att in data.get("attention", {}).items():
        rows += [{"section": "attention", "run": run, "case": f"{r['shape']} {r['kernel']}", "value": r["ms"],
                  "unit": "ms", "vs_baseline": r["speedup"], "note": r["note"]} for r in att["rows"]]
        rows += [{"section": "attention per step", "run": run, "case": f"{t['size']}px {t['kernel']}",
                  "value": t["ms_per_step"], "unit": "ms", "vs_baseline": t["vs_webui"], "note": ""}
                 for t in att["per_step"]]
    for r in (r for u in data.get("unet", {}).values() for r in u.get("results", [])):
        rows.append({"section": "unet", "run": f"{r['width']}x{r['height']} b{r['batch']} {r['steps']} steps",
                     "case": r["label"], "value": r["sampler_its"], "unit": "it/s", "vs_baseline": r["speedup"],
                     "note": f"{r['status']} {r['reason']}".strip() + (f"; peak {r['peak_torch_mb']:.0f} MB"
                                                                        if r.get("peak_torch_mb") else "")})
    for p in data.get("precompile", {}).values():
        rows.append({"section": "compile", "run": p["phase"], "case": f"first call ({p['cache']})",
                     "value": p["first_call_s"], "unit": "s", "vs_baseline": "", "note": p["precompile_refusal"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the whole check")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny UNet, tiny sizes: checks the script itself")
    args = p.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget_s
    args.outdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="accel-gpu-check-"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")
    if args.smoke:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    data = {"budget_s": args.budget_s, "smoke": args.smoke, "steps": [], "not_run": [], "attention": {}, "unet": {},
            "precompile": {}, "machine": {"date": datetime.date.today().isoformat()}}
    try:
        with open(args.outdir / "gpu_check.log", "w", encoding="utf-8") as log:
            for step in plan(args.smoke, work):
                run_planned(step, deadline, work, env, data, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["wall_s"], data["errors"] = time.monotonic() - start, []
    for what, make in (("not_run", lambda: data["not_run"] + not_run(data)), ("unet_best", lambda: unet_best(
            data.get("unet", {}), data["machine"].get("device", ""))), ("csv", lambda: csv_rows(data))):
        try:  # the raw results are written whatever fails here (a GPU run is rare)
            data[what] = make()
        except Exception as e:
            data["errors"].append(f"{what}: {type(e).__name__}: {e}")
    rows = data.pop("csv", [])
    (args.outdir / "results.json").write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    with open(args.outdir / "results.csv", "w", newline="", encoding="utf-8") as f:
        m = data["machine"]
        f.write(f"# {m.get('device')}, torch {m.get('torch')}, {m['date']}\n")
        writer = csv.DictWriter(f, ["section", "run", "case", "value", "unit", "vs_baseline", "note"])
        writer.writeheader()
        writer.writerows(rows)
    try:
        summary = render(data)
    except Exception as e:
        summary = f"# Accel GPU check\n\nThe summary failed ({type(e).__name__}: {e}); see results.json.\n"
    (args.outdir / "summary.md").write_text(summary, encoding="utf-8")
    print(f"wrote {args.outdir}/summary.md (+ results.json, results.csv, gpu_check.log) in {data['wall_s']:.0f} s")
    failed = data["errors"] or any(s["status"].startswith("failed") or "unreadable" in s["status"]
                                   for s in data["steps"])
    return 1 if failed else 0


def not_run(data: dict) -> list[str]:
    cells = [f"UNet cell {r['label']} at batch {r['batch']}: {r['reason']}"
             for u in data.get("unet", {}).values() for r in u.get("results", []) if r["reason"].startswith("not run")]
    return cells + list(NOT_IMPLEMENTED)


def run_planned(step: dict, deadline: float, work: Path, env: dict, data: dict, log) -> None:
    """Run one planned step if the budget (and what ran before) allows; record its status and output."""
    left = deadline - time.monotonic() - WRITE_RESERVE_S
    seconds = None
    if not data["smoke"] and step["kind"] in ("attention", "unet", "precompile") \
            and not str(data["machine"].get("device", "")).startswith("cuda"):
        status = f"not run: no CUDA device ({data['machine'].get('device', 'info did not run')}; --smoke runs on CPU)"
    elif left < step["min_s"]:
        status = "not run: time budget"
    elif step["name"] == "precompile warm" and "cold" not in data["precompile"]:
        status = "not run: the cold phase did not finish"
    else:
        soft = max(left - step.get("reserve_s", 0), left / 2)
        argv = step["argv"] + (["--deadline", f"{time.time() + soft:.0f}"] if "reserve_s" in step else [])
        out, err = work / "stdout.txt", work / "stderr.txt"
        rc, seconds = run_step(argv, min(left, step.get("cap_share", 1.0) * data["budget_s"]), env, out, err)
        text, errors = out.read_text("utf-8", "replace"), err.read_text("utf-8", "replace")
        log.write(f"===== {step['name']} ({seconds:.1f} s, exit {rc}): {' '.join(argv)}\n{text}\n"
                  f"----- stderr\n{errors}\n")
        log.flush()
        status = "ok" if rc == 0 else ("stopped: time budget" if rc is None else f"failed (exit {rc})")
        if step["kind"] == "tests" and rc == 5 and "skipped" in text and "failed" not in text:
            status = "ok: every module skipped (see the reasons)"  # pytest's "no tests ran"
        try:
            collect(step, text, data)
        except Exception as e:  # reported in the summary: one unreadable output must not lose the others
            status += f"; output unreadable ({type(e).__name__}: {e})"
    data["steps"].append({"name": step["name"], "status": status, "seconds": seconds})
    if status.startswith("not run"):
        data["not_run"].append(f"{step['name']}: {status}")


def collect(step: dict, text: str, data: dict) -> None:
    """Fold a finished (or stopped) step's output into ``data``; partial outputs are kept."""
    kind, out = step["kind"], step.get("out")
    if kind == "info" and text.strip():
        info = json.loads(text)
        data["info"] = info
        data["machine"].update(device=info["device"], torch=info["torch"], python=info["python"])
    elif kind == "tests":
        data["tests"] = tests_summary(text)
    elif kind == "attention" and out.exists():
        meta, parsed = read_attention(out)
        data["attention"][step["name"].removeprefix("attention ")] = {"meta": meta, **parsed}
    elif kind == "unet" and out.exists():
        data["unet"][step["name"].split()[-1]] = json.loads(out.read_text("utf-8"))
    elif kind == "precompile" and out.exists():
        data["precompile"][step["name"].split()[-1]] = json.loads(out.read_text("utf-8"))


if __name__ == "__main__":
    sys.exit(main())
