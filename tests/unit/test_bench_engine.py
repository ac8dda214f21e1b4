"""The benchmark engine: matrix expansion, statistics, the runner's policy, CSV/JSON, and the HTTP target
against a stub WebUI API."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from lib_accel.bench.engine import BenchRunner, CellSkipped, Generation, is_black
from lib_accel.bench.matrix import (
    Cell,
    Matrix,
    MatrixError,
    cell_settings,
    parse_bools,
    parse_ints,
    parse_sizes,
)
from lib_accel.bench.results import ResultTable
from lib_accel.bench.summary import rate, summarize


def test_matrix_expands_with_baseline_first_per_shape_and_precision_slowest():
    m = Matrix(attention=("a", "b"), compile=("off", "default"), channels_last=(False, True),
               precision=("default", "bf16"), sizes=((512, 512), (1024, 768)), batches=(1, 2), steps=(20,))
    cells = m.cells()
    assert len(cells) == m.size() == 2 * 2 * 2 * 2 * 2 * 2
    assert len(set(cells)) == len(cells)
    assert cells[0] == Cell("a", "off", False, "default", 512, 512, 1, 20)
    first_per_shape = {}
    for c in cells:
        first_per_shape.setdefault(c.shape_key, c)
    assert all(c.options_key == m.baseline_options() for c in first_per_shape.values())
    precisions = [c.precision for c in cells]
    assert precisions == sorted(precisions, key=("default", "bf16").index)  # one switch only


@pytest.mark.parametrize("kwargs, message", [
    (dict(attention=()), "attention"),
    (dict(attention=("a", "a")), "twice"),
    (dict(attention=("a",), compile=("fast",)), "compile"),
    (dict(attention=("a",), precision=("fp8",)), "precision"),
    (dict(attention=("a",), sizes=((500, 512),)), "multiples of 8"),
    (dict(attention=("a",), batches=(0,)), "batch"),
    (dict(attention=("a",), steps=(0,)), "steps"),
    (dict(attention=tuple("abcdefgh"), precision=("default", "fp16", "bf16", "fp32"), sizes=((512, 512),) * 1,
          batches=tuple(range(1, 9)), steps=(1, 2, 3)), "more than"),
])
def test_matrix_validation_names_the_problem(kwargs, message):
    with pytest.raises(MatrixError, match=message):
        Matrix(**kwargs).cells()


def test_parsers():
    assert parse_sizes("512x512, 1024X768 768×768") == ((512, 512), (1024, 768), (768, 768))
    assert parse_ints("1, 2 4", "batch sizes") == (1, 2, 4)
    assert parse_bools(["off", "on"]) == (False, True)
    for bad, fn in (("512", parse_sizes), ("", parse_sizes)):
        with pytest.raises(MatrixError):
            fn(bad)
    with pytest.raises(MatrixError, match="steps"):
        parse_ints("x", "steps")
    with pytest.raises(MatrixError):
        parse_bools(["maybe"])


def test_cell_settings_compile_inline_and_whitelisted():
    on = cell_settings(Cell("Accel auto", "max-autotune", True, "bf16"), "model.safetensors [abc]")
    assert on == {"cross_attention_optimization": "Accel auto", "accel_channels_last": "on",
                  "accel_unet_dtype": "bf16", "accel_vae_dtype": "default", "accel_compile_enabled": True,
                  "accel_compile_mode": "max-autotune",
                  "accel_compile_background": False, "accel_compile_prewarm": "",
                  "accel_compile_checkpoints": ["model.safetensors [abc]"]}
    assert cell_settings(Cell("x"), None)["accel_compile_enabled"] is False


def test_summary_statistics():
    s = summarize([1.0, 2.0, 4.0])
    assert (s.n, s.median, s.minimum, s.maximum) == (3, 2.0, 1.0, 4.0)
    assert s.mean == pytest.approx(7 / 3) and s.stdev == pytest.approx(1.5275252)
    assert summarize([5.0]).stdev == 0.0
    assert rate(20, 4.0) == 5.0 and rate(20, 0) is None
    for bad in ([], [1.0, -1.0], [math.nan]):
        with pytest.raises(ValueError):
            summarize(bad)


class FakeTarget:
    """Each attention value maps to a speed; 'nan' renders black; 'skip' and 'boom' cannot run."""

    def __init__(self, clock):
        self.clock = clock
        self.applied = []

    def describe(self):
        return {"machine": "test machine", "torch": torch.__version__}

    def apply(self, cell):
        if cell.attention == "skip":
            raise CellSkipped("not on this device")
        self.applied.append(cell)

    def generate(self, cell, seed):
        if cell.attention == "boom":
            raise RuntimeError("CUDA out of memory")
        speed = {"slow": 2.0, "fast": 4.0, "nan": 8.0, "noisy": 6.0}[cell.attention]
        sampler = cell.steps / speed
        self.clock.now += sampler + 1.0
        value = {"nan": 0, "noisy": 60}.get(cell.attention, 100)
        image = torch.full((16, 16, 3), value, dtype=torch.uint8)
        if cell.attention == "noisy":
            image[::2] = 200
        return Generation([image], total_s=sampler + 1.0, sampler_s=sampler, peak_torch_bytes=3 * 2**20)


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def run_fake(attention, **kw):
    clock = Clock()
    runner = BenchRunner(FakeTarget(clock), repeats=3, warmup=1, clock=clock, **kw)
    return runner, runner.run(Matrix(attention=attention, steps=(20,)).cells())


def test_runner_measures_compares_and_picks_a_usable_best():
    _, table = run_fake(("slow", "fast", "skip", "boom", "nan", "noisy"))
    by = {r.cell.attention: r for r in table.results}
    assert table.machine["machine"] == "test machine"
    slow, fast = by["slow"], by["fast"]
    assert slow.baseline and slow.max_abs is None and slow.speedup == pytest.approx(1.0)
    assert (slow.sampler_its, slow.e2e_its, slow.runs) == (pytest.approx(2.0), pytest.approx(20 / 11), 3)
    assert slow.first_run_s == pytest.approx(11.0) and slow.peak_torch_mb == pytest.approx(3.0)
    assert fast.speedup == pytest.approx(2.0) and fast.max_abs == 0 and fast.psnr_db == math.inf
    assert by["skip"].status == "skipped" and by["skip"].reason == "not on this device"
    assert by["boom"].status == "failed" and "out of memory" in by["boom"].reason
    assert by["nan"].black is True and by["nan"].max_abs == 100
    assert by["noisy"].psnr_db < 25
    assert table.best().cell.attention == "fast"  # 'nan' and 'noisy' are faster but unusable


def test_cancel_marks_the_rest_cancelled():
    holder = {}

    def progress(p):
        if p.cell_index == 1 and p.run == 0:
            holder["runner"].cancel()

    clock = Clock()
    runner = BenchRunner(FakeTarget(clock), repeats=1, warmup=0, clock=clock, progress=progress)
    holder["runner"] = runner
    table = runner.run(Matrix(attention=("slow", "fast", "noisy")).cells())
    assert [r.status for r in table.results] == ["ok", "cancelled", "cancelled"]


def test_black_detection():
    assert is_black(torch.zeros(4, 4, 3, dtype=torch.uint8))
    assert is_black(torch.full((4, 4, 3), 4, dtype=torch.uint8))
    assert not is_black(torch.full((4, 4, 3), 5, dtype=torch.uint8))


def test_csv_json_markdown_round_trip():
    _, table = run_fake(("slow", "fast", "skip"))
    text = table.to_json()
    again = ResultTable.from_json(text)
    assert again.rows() == table.rows() and again.machine == table.machine
    lines = table.to_csv().splitlines()
    assert lines[0] == "# machine: test machine"
    rows = list(csv.DictReader(io.StringIO("\n".join(x for x in lines if not x.startswith("#")))))
    assert [r["attention"] for r in rows] == ["slow", "fast", "skip"]
    assert rows[1]["speedup"] == "2.0" and rows[2]["status"] == "skipped" and rows[1]["psnr_db"] == "inf"
    md = table.markdown(sort_by="sampler_its")
    assert md.splitlines()[2].startswith("| fast |") and "skipped: not on this device" in md
    with pytest.raises(KeyError):
        table.rows(sort_by="nope")


# -- HTTP target against a stub of the WebUI API -----------------------------------------------------------------

def _png(value: int) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class StubApi(BaseHTTPRequestHandler):
    options = {}
    calls = []

    def log_message(self, *args):
        pass

    def _send(self, data, code=200):
        body = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.calls.append(("GET", self.path))
        if self.path == "/sdapi/v1/options":
            return self._send(dict(self.options))
        if self.path == "/accel/v1/info":
            return self._send({"device": "cpu:stub x2", "torch": "2.x"})
        if self.path == "/accel/v1/backends":
            chosen = self.options["cross_attention_optimization"]  # the WebUI reports what "Automatic" resolved to
            return self._send({"attention": {"active": "InvokeAI" if chosen == "Automatic" else chosen}})
        if self.path == "/accel/v1/stats":
            speed = 4.0 if self.options["accel_unet_dtype"] == "bf16" else 1.0
            memory = {"nvml": {"memory_used": 1000 + 10 * len(self.calls)}}
            return self._send({"generation": {"last_image": {"stages": {"unet": 4 / speed}}}, "memory": memory})
        return self._send({"detail": "Not Found"}, 404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        self.calls.append(("POST", self.path, body))
        if self.path == "/sdapi/v1/options":
            self.options.update(body)
            return self._send(None)
        if self.path == "/sdapi/v1/txt2img":
            value = 100 if self.options["accel_unet_dtype"] != "bf16" else 102
            return self._send({"images": [_png(value)] * body["batch_size"]})
        return self._send({"detail": "Not Found"}, 404)


@pytest.fixture
def stub_api():
    pytest.importorskip("PIL")
    StubApi.options = {"sd_model_checkpoint": "m.safetensors [1]", "cross_attention_optimization": "Automatic",
                       "accel_channels_last": "default", "accel_unet_dtype": "default",
                       "accel_vae_dtype": "default", "accel_compile_enabled": False}
    StubApi.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bench_webui_cli_end_to_end_restores_settings(stub_api, tmp_path, capsys):
    from lib_accel.__main__ import main
    before = dict(StubApi.options)
    rc = main(["bench", "webui", "--url", stub_api, "--attention", "Automatic", "--precision", "default,bf16",
               "--steps", "4", "--repeats", "1", "--out-csv", str(tmp_path / "r.csv"),
               "--out-json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "best: Automatic (InvokeAI) · bf16" in out and "machine: cpu:stub x2" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert [r["sampler_its"] for r in data["results"]] == [1.0, 4.0]
    assert data["results"][1]["max_abs"] == 2
    assert all(r["peak_nvml_mb"] > 0 for r in data["results"])  # polled during each txt2img
    assert StubApi.options == before  # put back


def test_bench_webui_apply_best_keeps_the_winner(stub_api, capsys):
    from lib_accel.__main__ import main
    rc = main(["bench", "webui", "--url", stub_api, "--attention", "Automatic", "--precision", "default,bf16",
               "--steps", "4", "--repeats", "1", "--warmup", "0", "--apply-best"])
    assert rc == 0
    assert StubApi.options["accel_unet_dtype"] == "bf16"


def test_bench_webui_errors_are_clear(stub_api, capsys):
    from lib_accel.__main__ import main
    assert main(["bench", "webui", "--url", stub_api, "--size", "13x13"]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    assert main(["bench", "webui", "--url", "http://127.0.0.1:9", "--steps", "1"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_peak_poller_keeps_the_largest_reading_and_survives_errors():
    import time

    from lib_accel.bench.peak import PeakPoller
    values = iter([10, None, 50, "x", 30])

    def read():
        try:
            value = next(values)
        except StopIteration:
            return 20
        if value == "x":
            raise RuntimeError("NVML hiccup")
        return value

    with PeakPoller(read, interval_s=0.005) as poller:
        time.sleep(0.1)
    assert poller.peak == 50
    with PeakPoller(lambda: None) as nothing:
        pass
    assert nothing.peak is None


def test_bench_webui_defaults_to_the_automatic_baseline_and_has_a_vae_axis(stub_api, tmp_path, capsys):
    from lib_accel.__main__ import main
    before = dict(StubApi.options)
    rc = main(["bench", "webui", "--url", stub_api, "--vae-precision", "default,bf16", "--steps", "4",
               "--repeats", "1", "--warmup", "0", "--out-json", str(tmp_path / "r.json")])
    assert rc == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["label"] for r in rows] == ["Automatic (InvokeAI)", "Accel auto", "Automatic (InvokeAI) · VAE bf16",
                                          "Accel auto · VAE bf16"]
    assert rows[0]["baseline"] and rows[0]["resolved"] == "InvokeAI"
    written = [c[2].get("accel_vae_dtype") for c in StubApi.calls if c[:2] == ("POST", "/sdapi/v1/options")]
    assert "bf16" in written
    assert StubApi.options == before
