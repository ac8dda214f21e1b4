"""Memory readings: NVML through a fake pynvml, torch on CPU, RAM, caching, and every missing piece explained."""

from __future__ import annotations

import types

import pytest
import torch

from lib_accel.monitoring import gpu as gpu_monitor
from lib_accel.monitoring.gpu import GpuMonitor, nvml_reading, ram, torch_memory, visible_nvml_index, vram_summary

GIB = 1024 ** 3


class NVMLError(Exception):
    pass


class NotSupported(NVMLError):
    def __str__(self):
        return "Not Supported"


def fake_pynvml(power_supported: bool = True, devices: int = 2):
    calls = []
    nvml = types.SimpleNamespace(NVML_CLOCK_SM=1, NVML_TEMPERATURE_GPU=0, NVMLError=NVMLError, calls=calls)

    def handle_by_index(i):
        calls.append(("index", i))
        if i >= devices:
            raise NVMLError("Invalid Argument")
        return f"h{i}"

    def handle_by_uuid(uuid):
        calls.append(("uuid", uuid))
        if not uuid.startswith("GPU-"):
            raise NVMLError("Not Found")
        return "h-uuid"

    def power(handle):
        if not power_supported:
            raise NotSupported()
        return 215_500

    nvml.nvmlDeviceGetHandleByIndex = handle_by_index
    nvml.nvmlDeviceGetHandleByUUID = handle_by_uuid
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA Fake 24GB"
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=5 * GIB, total=24 * GIB, free=19 * GIB)
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=97, memory=40)
    nvml.nvmlDeviceGetPowerUsage = power
    nvml.nvmlDeviceGetEnforcedPowerLimit = lambda h: 450_000
    nvml.nvmlDeviceGetClockInfo = lambda h, kind: 2520 if kind == 1 else 0
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 64
    return nvml


def test_nvml_reading_has_every_field():
    out = nvml_reading(fake_pynvml(), "h0")
    assert out == {"available": True, "name": "NVIDIA Fake 24GB", "memory_used": 5 * GIB, "memory_total": 24 * GIB,
                   "memory_free": 19 * GIB, "utilization": 97, "power_w": 215.5, "power_limit_w": 450.0,
                   "clock_sm_mhz": 2520, "temperature_c": 64}


def test_an_unsupported_field_is_reported_not_fatal():
    out = nvml_reading(fake_pynvml(power_supported=False), "h0")
    assert "power_w" not in out and out["unsupported"] == {"power_w": "NotSupported: Not Supported"}
    assert out["memory_used"] == 5 * GIB


def test_monitor_without_nvml_says_why():
    why = "pynvml is not installed (pip package nvidia-ml-py)"
    reading = GpuMonitor(nvml_loader=lambda: None, nvml_reason=lambda: why).read()
    assert reading["nvml"] == {"available": False, "reason": why}
    assert set(reading) == {"time", "nvml", "torch", "ram"}


def test_monitor_on_a_cpu_webui_does_not_ask_nvml():
    asked = []
    monitor = GpuMonitor(nvml_loader=lambda: asked.append(1))
    reading = monitor.read("cpu")
    assert not asked and not reading["nvml"]["available"] and "cpu" in reading["nvml"]["reason"]
    assert reading["torch"] == {"available": False, "reason": "the WebUI runs on cpu, not CUDA"}


def test_monitor_reads_the_visible_device_and_caches(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    nvml = fake_pynvml()
    now = [0.0]
    monitor = GpuMonitor(nvml_loader=lambda: nvml, clock=lambda: now[0], max_age=0.5)
    first = monitor.read()
    assert first["nvml"]["device"] == 1 and first["nvml"]["found_by"] == "CUDA_VISIBLE_DEVICES"
    assert first["nvml"]["memory_used"] == 5 * GIB
    assert monitor.read() is first
    now[0] = 1.0
    assert monitor.read() is not first
    assert nvml.calls.count(("index", 1)) == 1  # the handle is cached too


def test_monitor_reports_a_missing_device(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    reading = GpuMonitor(nvml_loader=fake_pynvml).read()
    assert not reading["nvml"]["available"] and "Invalid Argument" in reading["nvml"]["reason"]


def test_monitor_survives_a_failing_loader():
    def boom():
        raise RuntimeError("driver went away")
    assert "driver went away" in GpuMonitor(nvml_loader=boom).read()["nvml"]["reason"]


def test_uuid_target_and_mig_fallback(monkeypatch):
    nvml = fake_pynvml()
    monitor = GpuMonitor(nvml_loader=lambda: nvml)
    assert monitor._handle(nvml, "GPU-1234") == "h-uuid"
    assert monitor._handle(nvml, "MIG-abcd") == "h0"


@pytest.mark.parametrize(("env", "expected"), [
    ({}, (0, "default")), ({"CUDA_VISIBLE_DEVICES": "3,1"}, (3, "CUDA_VISIBLE_DEVICES")),
    ({"CUDA_VISIBLE_DEVICES": "GPU-5f1e"}, ("GPU-5f1e", "CUDA_VISIBLE_DEVICES")),
    ({"CUDA_VISIBLE_DEVICES": ""}, (0, "default"))])
def test_visible_nvml_index(env, expected):
    assert visible_nvml_index(env) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_torch_memory_on_cpu_explains():
    out = torch_memory()
    assert out["available"] is False and out["reason"]


def test_torch_memory_never_initialises_cuda():
    torch_memory()
    GpuMonitor(nvml_loader=lambda: None).read()
    assert not torch.cuda.is_initialized()


def test_ram_from_psutil_and_from_proc(tmp_path):
    fake = types.SimpleNamespace(virtual_memory=lambda: types.SimpleNamespace(total=64 * GIB, available=40 * GIB),
                                 Process=lambda: types.SimpleNamespace(
                                     memory_info=lambda: types.SimpleNamespace(rss=5 * GIB)))
    assert ram(lambda: fake) == {"available": True, "source": "psutil", "process_rss": 5 * GIB,
                                 "total": 64 * GIB, "free": 40 * GIB}
    (tmp_path / "self").mkdir()
    (tmp_path / "meminfo").write_text("MemTotal:       16384 kB\nMemFree:  1024 kB\nMemAvailable:    8192 kB\n")
    (tmp_path / "self" / "statm").write_text("1000 250 10 1 0 100 0\n")
    out = ram(lambda: None, proc_root=str(tmp_path))
    assert out["source"] == "/proc" and out["total"] == 16384 * 1024 and out["free"] == 8192 * 1024
    assert out["process_rss"] == 250 * gpu_monitor.os.sysconf("SC_PAGE_SIZE")
    assert ram(lambda: None, proc_root=str(tmp_path / "missing"))["available"] is False


def test_vram_summary_prefers_nvml_then_torch_then_ram():
    nvml = {"available": True, "memory_used": 5, "memory_total": 24}
    assert vram_summary({"nvml": nvml})["source"] == "nvml"
    torch_mem = {"available": True, "reserved": 7}
    assert vram_summary({"nvml": {"available": False}, "torch": torch_mem}) == \
        {"kind": "VRAM", "used": 7, "total": None, "source": "torch"}
    sysram = {"available": True, "process_rss": 3, "total": 16, "source": "/proc"}
    assert vram_summary({"nvml": {}, "torch": {}, "ram": sysram})["kind"] == "RAM"
    assert vram_summary({})["kind"] == "none"


def test_real_features_probe_gives_a_reason_here():
    reading = GpuMonitor().read()
    if not reading["nvml"]["available"]:
        assert reading["nvml"]["reason"]
