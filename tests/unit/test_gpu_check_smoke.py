"""benchmarks/gpu_check.py: ``--smoke`` runs every step's code path on CPU and writes at most 8 files whose summary
holds this run's values; the budget is honoured (steps without time are listed "not run: time budget", a step
past its time is killed with its children); without CUDA the GPU steps say so instead of failing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
FILES = {"summary.md", "results.json", "results.csv", "gpu_check.log"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_accel_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(out: Path, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-smoke")
    proc, seconds = _run(out, "--smoke", "--budget-s", "240")
    print(f"gpu_check --smoke took {seconds:.1f} s")
    return out, proc, seconds, json.loads((out / "results.json").read_text("utf-8"))


def test_smoke_succeeds_quickly_with_at_most_eight_files(smoke):
    out, proc, seconds, _ = smoke
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p.name for p in out.iterdir()} == FILES and len(FILES) <= 8
    assert seconds < 120, f"the smoke run took {seconds:.0f} s (meant to take well under 60 s on 2 idle cores)"


def test_every_step_ran_and_the_cuda_tier_skipped_with_its_reason(smoke):
    _, _, _, data = smoke
    names = [s["name"] for s in data["steps"]]
    assert names[:2] == ["info", "CUDA test tier"] and {"unet core", "unet extra", "precompile warm"} <= set(names)
    assert all(s["status"].startswith("ok") for s in data["steps"]), data["steps"]
    assert data["errors"] == []
    modules = len(list((ROOT / "tests" / "gpu").glob("test_*.py")))
    assert modules >= 3 and data["tests"]["counts"] == {"skipped": modules}
    assert len(data["tests"]["lines"]) == modules and all("no CUDA device" in ln for ln in data["tests"]["lines"])
    assert data["machine"]["device"].startswith("cpu:") and data["machine"]["torch"]


def test_summary_shows_this_runs_attention_values(smoke):
    out, _, _, data = smoke
    summary = (out / "summary.md").read_text("utf-8")
    assert set(data["attention"]) == {"sd15 fp32", "sdxl fp32", "sd15 bf16", "sdxl bf16"}
    for run, att in data["attention"].items():
        assert any(r["shape"].startswith("sdxl") for r in att["rows"]) == run.startswith("sdxl")
        for kernel in ("webui-default", "sdpa"):
            ms = sum(float(r["ms"]) * int(r["calls_per_step"]) for r in att["rows"] if r["kernel"] == kernel)
            [total] = [t for t in att["per_step"] if t["kernel"] == kernel]
            assert ms > 0 and total["ms_per_step"] == pytest.approx(ms)
            assert f"| 64 | {kernel} | {ms:.1f} |" in summary.split(f"## Attention {run}:")[1]


def test_summary_shows_this_runs_unet_cells_flops_and_compile_phases(smoke):
    out, _, _, data = smoke
    summary = (out / "summary.md").read_text("utf-8")
    assert set(data["unet"]) == {"core", "extra"}
    results = {f"{part} {r['label'].split(' · fp32')[0]} b{r['batch']}": r
               for part, u in data["unet"].items() for r in u["results"]}
    for label in ("core webui-default b1", "core sdpa b1", "core accel-auto b1", "core accel-auto · channels-last b2",
                  "core accel-auto · compile default b1", "extra accel-auto · compile default b2",
                  "extra accel-auto · compile default · channels-last b1", "extra accel-auto · bf16 b1"):
        r = results[label]
        assert r["status"] == "ok" and r["sampler_its"] > 0, r
        assert f"| {r['sampler_its']:.2f} |" in summary
    assert results["core webui-default b1"]["baseline"] and results["extra webui-default b2"]["baseline"]
    assert results["core accel-auto b1"]["speedup"] > 0
    assert "CUDA graphs" in results["core accel-auto · compile reduce-overhead b1"]["reason"]
    steps = _load("gpu_check_steps")
    flops = steps.unet_flops(steps.UNetConfig.tiny(), 1, 64, 64)
    assert all(u["flops_per_call"] == {"1": flops, "2": 2 * flops} for u in data["unet"].values()) and flops > 1e6
    best = data["unet_best"]
    assert best["share"] is None and "share of peak: unknown" in summary
    assert best["tflops"] == pytest.approx(flops * best["batch"] * best["sampler_its"] / 1e12)
    assert f"{best['sampler_its']:.2f} calls/s" in summary
    for phase in ("cold", "warm"):
        p = data["precompile"][phase]
        assert p["status"] == "ready" and p["first_call_s"] > 0 and p["compiled_ms"] > 0
        assert f"| {phase} | {p['first_call_s']:.1f} | ready |" in summary
    assert "not implemented here" in summary


def test_a_tiny_budget_lists_every_step_as_not_run(tmp_path):
    proc, seconds = _run(tmp_path, "--smoke", "--budget-s", "1", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert seconds < 20 and {p.name for p in tmp_path.iterdir()} == FILES
    data = json.loads((tmp_path / "results.json").read_text("utf-8"))
    assert data["steps"] and all(s["status"] == "not run: time budget" for s in data["steps"])
    summary = (tmp_path / "summary.md").read_text("utf-8")
    assert summary.count("not run: time budget") >= 2 * len(data["steps"])  # the steps table and the list


def test_without_cuda_the_gpu_steps_say_so(tmp_path):
    if "cuda" in json.loads(subprocess.run([sys.executable, "-m", "lib_accel", "info", "--json"], cwd=ROOT,
                                           capture_output=True, text=True, check=True).stdout)["device"]:
        pytest.skip("this machine has CUDA: the GPU steps would run")
    proc, _ = _run(tmp_path, "--budget-s", "120", timeout=180)
    data = json.loads((tmp_path / "results.json").read_text("utf-8"))
    assert proc.returncode == 0, proc.stderr
    ran = [s["name"] for s in data["steps"] if s["seconds"] is not None]
    assert ran == ["info", "CUDA test tier"]
    assert all("not run: no CUDA device" in s["status"] for s in data["steps"][2:]), data["steps"]


def test_a_step_past_its_time_is_killed_with_its_children(tmp_path):
    gpu_check = _load("gpu_check")
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f" open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    rc, seconds = gpu_check.run_step([sys.executable, "-c", code], 3.0, dict(os.environ), tmp_path / "o",
                                     tmp_path / "e")
    assert rc is None and seconds < 15
    child = int(pid_file.read_text())
    for _ in range(50):
        try:
            state = Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {child} outlived the timeout")


def test_peak_table_and_share_of_peak():
    gpu_check = _load("gpu_check")
    assert gpu_check.peak_tflops("cuda:NVIDIA H200") == 989.0
    assert gpu_check.peak_tflops("cuda:NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("cuda:NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.peak_tflops("cuda:Some Future GPU") is None
    unet = {"flops_per_call": {"1": 2e12, "4": 8e12}, "results": [
        {"status": "ok", "batch": 1, "sampler_its": 50.0, "label": "a", "black": False},
        {"status": "ok", "batch": 4, "sampler_its": 20.0, "label": "b", "black": False},
        {"status": "ok", "batch": 4, "sampler_its": 40.0, "label": "far from the baseline image", "psnr_db": 12.0},
        {"status": "ok", "batch": 4, "sampler_its": 45.0, "label": "black image", "black": True},
        {"status": "skipped", "batch": 4, "sampler_its": None, "label": "c"}]}
    best = gpu_check.unet_best({"core": unet}, "cuda:NVIDIA H200")
    assert best["label"] == "b" and best["tflops"] == pytest.approx(160.0)
    assert best["share"] == pytest.approx(160.0 / 989.0)
    assert gpu_check.unet_best({"core": unet}, "cuda:Unknown")["share"] is None
