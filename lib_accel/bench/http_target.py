"""The benchmark target for a running WebUI, over its HTTP API (stdlib only; Pillow, which every WebUI
has, decodes the images for the difference metric when it is importable here).

Cells are applied with ``POST /sdapi/v1/options`` (the same keys the in-process target sets), images come from
``POST /sdapi/v1/txt2img``, the sampler time from Accel's ``GET /accel/v1/stats`` (the last image's UNet
stage) and the active attention from ``GET /accel/v1/backends``; the WebUI must run with ``--api`` and
Accel installed. Settings are restored at the end unless the best cell is applied.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from typing import Any

from ..features import pil_image_module
from .engine import CellSkipped, Generation
from .matrix import ATTENTION_OPTION, Cell, cell_settings, check_applied
from .peak import PeakPoller


class ApiError(RuntimeError):
    """The WebUI answered with an error or not at all; the message says which call and why."""


class HttpTarget:
    def __init__(self, url: str, prompt: str, auth: str | None = None, sampler_name: str = "Euler a",
                 cfg_scale: float = 7.0, timeout_s: float = 3600.0, opener: Any = None):
        self.url = url.rstrip("/")
        self.prompt, self.sampler_name, self.cfg_scale, self.timeout_s = prompt, sampler_name, cfg_scale, timeout_s
        self.headers = {"Content-Type": "application/json"}
        if auth:
            if ":" not in auth:
                raise ValueError("--api-auth must be USER:PASSWORD")
            self.headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        self.opener = opener or urllib.request.build_opener()
        self.saved: dict[str, Any] = {}
        self._options: dict | None = None

    # -- HTTP ------------------------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        try:
            with self.opener.open(request, timeout=self.timeout_s) as response:
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            hint = " (is the WebUI running with --api, and Accel installed?)" if e.code == 404 else ""
            raise ApiError(f"{method} {path}: HTTP {e.code} {detail}{hint}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ApiError(f"{method} {path}: cannot reach {self.url}: {getattr(e, 'reason', e)}") from None
        return json.loads(text) if text else None

    def options(self) -> dict:
        if self._options is None:
            self._options = self.call("GET", "/sdapi/v1/options")
        return self._options

    # -- target ------------------------------------------------------------------------------------------------
    def describe(self) -> dict:
        info = self.call("GET", "/accel/v1/info") or {}
        return {"machine": info.get("device") or "unknown", "torch": info.get("torch", ""),
                "checkpoint": self.options().get("sd_model_checkpoint"), "sampler": self.sampler_name,
                "prompt": self.prompt, "target": f"WebUI API at {self.url}"}

    def apply(self, cell: Cell) -> str | None:
        """Switch to ``cell``; returns what "Automatic" resolved to (None for a named optimizer)."""
        options = self.options()
        wanted = cell_settings(cell, options.get("sd_model_checkpoint"))
        missing = [k for k in wanted if k not in options]
        if missing:
            raise CellSkipped(f"the WebUI has no setting {', '.join(missing)} (Accel not installed or too old)")
        for key in wanted:
            self.saved.setdefault(key, options[key])
        self.call("POST", "/sdapi/v1/options", wanted)
        options.update(wanted)
        active = (self.call("GET", "/accel/v1/backends") or {}).get("attention", {}).get("active")
        try:
            return check_applied(cell, active)
        except ValueError as e:
            raise CellSkipped(str(e)) from None

    def generate(self, cell: Cell, seed: int) -> Generation:
        body = {"prompt": self.prompt, "seed": seed, "steps": cell.steps, "width": cell.width, "height": cell.height,
                "batch_size": cell.batch, "sampler_name": self.sampler_name, "cfg_scale": self.cfg_scale,
                "send_images": True, "save_images": False}
        def nvml_used() -> int | None:
            memory = (self.call("GET", "/accel/v1/stats") or {}).get("memory") or {}
            return (memory.get("nvml") or {}).get("memory_used")
        start = time.perf_counter()
        with PeakPoller(nvml_used, interval_s=0.25) as nvml:
            reply = self.call("POST", "/sdapi/v1/txt2img", body) or {}
        total = time.perf_counter() - start
        stats = self.call("GET", "/accel/v1/stats") or {}
        last = (stats.get("generation") or {}).get("last_image") or {}
        memory = stats.get("memory") or {}
        torch_peak = (memory.get("torch") or {}).get("peak_allocated")
        return Generation(images=decode_images(reply.get("images") or []), total_s=total,
                          sampler_s=(last.get("stages") or {}).get("unet") or None,
                          peak_torch_bytes=torch_peak if isinstance(torch_peak, int) else None,
                          peak_nvml_bytes=nvml.peak)

    def interrupt(self) -> None:
        try:
            self.call("POST", "/sdapi/v1/interrupt")
        except ApiError:
            pass

    def restore(self, keep: dict | None = None) -> None:
        values = {**self.saved, **(keep or {})}
        if values:
            self.call("POST", "/sdapi/v1/options", values)
        self.saved.clear()
        self._options = None


def decode_images(encoded: list[str]) -> list[Any]:
    """PIL images from the API's base64 PNGs; empty when Pillow is missing (the diff columns stay blank)."""
    image_module = pil_image_module()
    if image_module is None:
        return []
    out = []
    for item in encoded:
        data = base64.b64decode(item.split(",", 1)[-1])
        out.append(image_module.open(io.BytesIO(data)).convert("RGB"))
    return out


__all__ = ["ATTENTION_OPTION", "ApiError", "HttpTarget", "decode_images"]
