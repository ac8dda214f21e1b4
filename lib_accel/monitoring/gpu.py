"""Memory and device readings for the live stats: NVML (VRAM, utilisation, power, clock), torch's allocator
and the process's RAM.

Contract: reading never initialises CUDA (torch's numbers are reported only once the WebUI has initialised
it) and never raises; a missing piece is reported as ``{"available": False, "reason": ...}``. NVML comes
from :func:`lib_accel.features.pynvml_module` (``nvidia-ml-py``), which initialises NVML on first use, i.e.
on the first reading, never at import. Readings are cached for ``max_age`` seconds so several pollers
(browser tabs, the API) cost one set of driver calls per interval. This runs on the asking thread, never in
the sampler loop.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from .. import features

MIB = 1024 * 1024


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _nvml_error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip(": ")


def visible_nvml_index(env: dict[str, str] | None = None) -> tuple[int | str, str]:
    """Which NVML device torch's device 0 is when CUDA is not initialised: ``CUDA_VISIBLE_DEVICES``'s first
    entry (an index or a ``GPU-``/``MIG-`` UUID), else 0. Returns (index or uuid, how it was found)."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if visible.isdigit():
        return int(visible), "CUDA_VISIBLE_DEVICES"
    if visible.startswith(("GPU-", "MIG-")):
        return visible, "CUDA_VISIBLE_DEVICES"
    return 0, "default"


def torch_device_uuid(index: int) -> str | None:
    """NVML's UUID of an initialised CUDA device (``GPU-`` + torch's uuid), when torch exposes it."""
    try:
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    except Exception:
        return None
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def nvml_reading(nvml: Any, handle: Any) -> dict:
    """One reading of ``handle``; a field the device does not support goes to ``unsupported``."""
    out: dict[str, Any] = {"available": True}
    unsupported: dict[str, str] = {}

    def field(name: str, read: Callable[[], Any]) -> None:
        try:
            out[name] = read()
        except Exception as e:  # NVMLError_NotSupported on many consumer/virtual GPUs
            unsupported[name] = _nvml_error_text(e)

    field("name", lambda: _text(nvml.nvmlDeviceGetName(handle)))
    memory = None
    try:
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception as e:
        unsupported["memory"] = _nvml_error_text(e)
    if memory is not None:
        out["memory_used"] = int(memory.used)
        out["memory_total"] = int(memory.total)
        out["memory_free"] = int(memory.free)
    field("utilization", lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
    field("power_w", lambda: round(nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, 1))
    field("power_limit_w", lambda: round(nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0, 1))
    field("clock_sm_mhz", lambda: int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)))
    field("temperature_c", lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))
    if unsupported:
        out["unsupported"] = unsupported
    return out


def torch_memory(device: torch.device | str | None = None) -> dict:
    """torch's CUDA allocator: allocated, reserved and peak allocated bytes (peak since the WebUI's last reset,
    which it does at the start of each job). Reported only when CUDA is already initialised."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type != "cuda":
        return {"available": False, "reason": f"the WebUI runs on {device.type}, not CUDA"}
    if not torch.cuda.is_available():
        return {"available": False, "reason": features.cuda().reason or "CUDA is not available"}
    if not torch.cuda.is_initialized():
        return {"available": False, "reason": "CUDA is not initialised yet (no model on the GPU)"}
    try:
        index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
        return {"available": True, "device": f"cuda:{index}",
                "allocated": int(torch.cuda.memory_allocated(index)),
                "reserved": int(torch.cuda.memory_reserved(index)),
                "peak_allocated": int(torch.cuda.max_memory_allocated(index))}
    except Exception as e:
        return {"available": False, "reason": f"torch.cuda memory stats failed: {e}"}


def ram(psutil_loader: Callable[[], Any] | None = None, proc_root: str = "/proc") -> dict:
    """Process RSS and system total/available RAM: psutil when importable (the WebUI installs it), else
    Linux ``/proc``."""
    psutil = (psutil_loader or _import_psutil)()
    if psutil is not None:
        try:
            vm = psutil.virtual_memory()
            return {"available": True, "source": "psutil", "process_rss": int(psutil.Process().memory_info().rss),
                    "total": int(vm.total), "free": int(vm.available)}
        except Exception:
            pass
    try:
        info = {}
        with open(os.path.join(proc_root, "meminfo"), encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        with open(os.path.join(proc_root, "self", "statm"), encoding="ascii") as f:
            rss_pages = int(f.read().split()[1])
        return {"available": True, "source": "/proc", "process_rss": rss_pages * os.sysconf("SC_PAGE_SIZE"),
                "total": info["MemTotal"], "free": info.get("MemAvailable", info.get("MemFree", 0))}
    except (OSError, ValueError, KeyError, IndexError, AttributeError):
        return {"available": False, "reason": "psutil is not installed and /proc is not readable"}


def _import_psutil() -> Any:
    try:
        return importlib.import_module("psutil")
    except Exception:
        return None


class GpuMonitor:
    """Cached readings: ``read()`` returns ``{"nvml": ..., "torch": ..., "ram": ..., "time": ...}``."""

    def __init__(self, nvml_loader: Callable[[], Any] = features.pynvml_module,
                 nvml_reason: Callable[[], str] = lambda: features.pynvml().reason,
                 clock: Callable[[], float] = time.monotonic, max_age: float = 0.5):
        self.nvml_loader = nvml_loader
        self.nvml_reason = nvml_reason
        self.clock = clock
        self.max_age = max_age
        self._lock = threading.Lock()
        self._cached: tuple[float, tuple, dict] | None = None
        self._handles: dict[Any, Any] = {}

    def read(self, device: torch.device | str | None = None) -> dict:
        """All readings for the WebUI's ``device`` (None: CUDA's current device, or NVML's first)."""
        key = (str(device),)
        with self._lock:
            now = self.clock()
            if self._cached is not None and self._cached[1] == key and now - self._cached[0] < self.max_age:
                return self._cached[2]
            reading = {"time": time.time(), "nvml": self._nvml(device), "torch": torch_memory(device), "ram": ram()}
            self._cached = (now, key, reading)
            return reading

    def _nvml(self, device: torch.device | str | None) -> dict:
        dev = torch.device(device) if device is not None else None
        if dev is not None and dev.type != "cuda":
            return {"available": False, "reason": f"the WebUI runs on {dev.type}; NVML reads NVIDIA GPUs only"}
        try:
            nvml = self.nvml_loader()
        except Exception as e:
            return {"available": False, "reason": f"NVML failed: {e}"}
        if nvml is None:
            return {"available": False, "reason": self.nvml_reason() or "NVML is not available"}
        try:
            target, found_by = self._target(dev)
            handle = self._handle(nvml, target)
        except Exception as e:
            return {"available": False, "reason": f"no NVML device: {_nvml_error_text(e)}"}
        out = nvml_reading(nvml, handle)
        out["device"] = target
        out["found_by"] = found_by
        return out

    def _target(self, dev: torch.device | None) -> tuple[int | str, str]:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            index = dev.index if dev is not None and dev.index is not None else torch.cuda.current_device()
            uuid = torch_device_uuid(index)
            if uuid is not None:
                return uuid, f"torch cuda:{index} uuid"
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            if len(visible) > index and visible[index].strip().isdigit():
                return int(visible[index]), "CUDA_VISIBLE_DEVICES"
            return index, f"torch cuda:{index}"
        return visible_nvml_index()

    def _handle(self, nvml: Any, target: int | str) -> Any:
        handle = self._handles.get(target)
        if handle is None:
            if isinstance(target, str):
                try:
                    handle = nvml.nvmlDeviceGetHandleByUUID(target)
                except Exception:  # MIG or an old driver: the first device is the best guess
                    handle = nvml.nvmlDeviceGetHandleByIndex(0)
            else:
                handle = nvml.nvmlDeviceGetHandleByIndex(target)
            self._handles[target] = handle
        return handle


def vram_summary(reading: dict) -> dict:
    """Used/total VRAM from NVML, else torch's reserved (total unknown); RAM on CPU. For badges."""
    nvml, mem, sysram = reading.get("nvml", {}), reading.get("torch", {}), reading.get("ram", {})
    if nvml.get("available") and "memory_used" in nvml:
        return {"kind": "VRAM", "used": nvml["memory_used"], "total": nvml.get("memory_total"), "source": "nvml"}
    if mem.get("available"):
        return {"kind": "VRAM", "used": mem["reserved"], "total": None, "source": "torch"}
    if sysram.get("available"):
        return {"kind": "RAM", "used": sysram["process_rss"], "total": sysram.get("total"), "source": sysram["source"]}
    return {"kind": "none", "used": None, "total": None, "source": None}
