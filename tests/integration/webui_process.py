"""Start a real WebUI checkout with this extension linked in, and talk to its HTTP API (loopback only).

Environment:
  ACCEL_WEBUI_DIR     the WebUI checkout (required; the suite is skipped without it)
  ACCEL_WEBUI_PYTHON  the interpreter of the WebUI's environment (default: this one)
  ACCEL_WEBUI_ARGS    extra launch arguments (appended)
  ACCEL_WEBUI_TIMEOUT seconds to wait for start-up (default 900)
The WebUI runs on CPU (--use-cpu all --no-half --no-half-vae), without install steps, with the API, and
with a fresh --data-dir per run (the extension is linked into its extensions/ folder), so the checkout's
own config.json and extensions are never touched. Checkpoints come from the checkout's models folder.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK_NAME = "accel"
CPU_ARGS = ["--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-install", "--use-cpu", "all",
            "--no-half", "--no-half-vae", "--api", "--server-name", "127.0.0.1", "--no-download-sd-model"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebUI:
    def __init__(self, root: Path, data_dir: Path):
        self.root = root
        self.data_dir = data_dir
        self.log_path = data_dir / "webui.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def link_extension(self) -> None:
        """Link the extension into a private data dir, so the checkout and its config.json stay untouched."""
        link = self.data_dir / "extensions" / LINK_NAME
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(REPO, target_is_directory=True)

    def start(self) -> None:
        self.link_extension()
        python = os.environ.get("ACCEL_WEBUI_PYTHON", sys.executable)
        args = [python, "launch.py", *CPU_ARGS, "--port", str(self.port), "--data-dir", str(self.data_dir),
                "--ckpt-dir", str(self.root / "models" / "Stable-diffusion")]
        args += shlex.split(os.environ.get("ACCEL_WEBUI_ARGS", ""))
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(args, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.wait_ready(float(os.environ.get("ACCEL_WEBUI_TIMEOUT", "900")))

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"WebUI exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                self.get("/sdapi/v1/options", timeout=5)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(2)
        raise TimeoutError(f"WebUI not ready after {timeout:.0f}s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        if getattr(self, "_log", None):
            self._log.close()

    # -- HTTP ------------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 600):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
        return json.loads(payload) if payload else None

    def get(self, path: str, timeout: float = 60):
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body, timeout: float = 600):
        return self.request("POST", path, body, timeout=timeout)

    def set_options(self, **options) -> None:
        self.post("/sdapi/v1/options", options)

    def txt2img(self, **overrides) -> tuple[list[bytes], dict]:
        body = {"prompt": "a red apple on a table", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
                "seed": 1, "batch_size": 1, "send_images": True, "save_images": False}
        body.update(overrides)
        res = self.post("/sdapi/v1/txt2img", body)
        return [base64.b64decode(img.split(",", 1)[-1]) for img in res["images"]], json.loads(res["info"])

    def reload_ui(self, timeout: float = 600) -> None:
        """Press Settings > Reload UI through gradio's event API and wait for the restarted server."""
        config = self.get("/config")
        button = next(c["id"] for c in config["components"]
                      if c.get("props", {}).get("elem_id") == "settings_restart_gradio")
        fn_index = next(i for i, dep in enumerate(config["dependencies"]) if button in dep.get("targets", [])
                        or [button, "click"] in dep.get("targets", []))
        self.post("/run/predict", {"fn_index": fn_index, "data": [], "session_hash": "accel-tests"})
        time.sleep(3)
        self.wait_ready(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the API answers before the new UI is up
            try:
                self.get("/config", timeout=5)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(1)

    # -- log ------------------------------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_mark(self) -> int:
        return len(self.log_text())

    def log_since(self, mark: int) -> str:
        return self.log_text()[mark:]
