"""The standalone UNet benchmark: the SD1.5-shaped model, its target, the CLI and the SVG chart (tiny UNet)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest
import torch

from lib_accel.__main__ import main
from lib_accel.attention import all_kernels, get_kernel
from lib_accel.bench.chart_svg import bar_chart_svg
from lib_accel.bench.engine import BenchRunner, CellSkipped
from lib_accel.bench.matrix import Cell
from lib_accel.bench.results import CellResult, ResultTable
from lib_accel.bench.unet_model import UNet, UNetConfig, build_unet, parameter_count
from lib_accel.bench.unet_target import (
    WEBUI_DEFAULT,
    UNetTarget,
    attention_names,
    render_latents,
    sigma_schedule,
)

TINY = UNetConfig.tiny()
# the smallest UNet the target accepts: keeps the cold inductor compile of the compile test short
MINI = UNetConfig(model_channels=16, channel_mult=(1,), num_res_blocks=1, attention_levels=(), num_heads=1,
                  context_dim=16, context_tokens=4, groups=4)
RUNNABLE = attention_names("cpu")
UNAVAILABLE = [k.name for k in all_kernels() if k.name not in RUNNABLE]


def _inputs(config: UNetConfig, side: int = 16, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, side, side, generator=g), torch.tensor([999.0, 10.0]),
            torch.randn(2, config.context_tokens, config.context_dim, generator=g))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP barriers cost 100x (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny() -> UNet:
    return build_unet(TINY, seed=0)


def test_sd15_shape_has_sd15_parameter_count():
    with torch.device("meta"):
        model = UNet(UNetConfig.sd15())
    assert parameter_count(model) == 859_520_964  # SD1.5's diffusion_model
    assert len(model.input_blocks) == 12 and len(model.output_blocks) == 12


def test_tiny_forward_shape_and_finite(tiny):
    x, t, ctx = _inputs(TINY)
    with torch.inference_mode():
        out = tiny(x, t, ctx)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and 0.05 < float(out.std()) < 20


def test_weights_are_deterministic_per_seed(tiny):
    again = build_unet(TINY, seed=0).state_dict()
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, again[key]), key
    other = build_unet(TINY, seed=1).state_dict()
    assert not torch.equal(tiny.time_in.weight, other["time_in.weight"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_stays_finite_and_close(dtype):
    x, t, ctx = _inputs(TINY)
    with torch.inference_mode():
        ref = build_unet(TINY, seed=0)(x, t, ctx)
        out = build_unet(TINY, seed=0, dtype=dtype)(x, t, ctx).float()
    assert torch.isfinite(out).all()
    assert float((out - ref).abs().max()) < (0.1 if dtype == torch.bfloat16 else 0.02)


@pytest.mark.parametrize("name", RUNNABLE + [WEBUI_DEFAULT])
def test_each_runnable_kernel_matches_math_inside_the_unet(tiny, name):
    x, t, ctx = _inputs(TINY)
    target = UNetTarget(TINY, "cpu", log=lambda m: None)
    with torch.inference_mode():
        tiny.attention = get_kernel("sdpa-math")
        ref = tiny(x, t, ctx)
        tiny.attention = target._kernel(Cell(name, width=128, height=128), torch.float32)
        out = tiny(x, t, ctx)
    assert float((out - ref).abs().max()) < 1e-4


def test_render_is_fixed_scale_upscaled_and_black_on_nan():
    lat = torch.zeros(1, 4, 8, 8)
    lat[0, 0, 0, 0] = 1e9
    image = render_latents(lat)
    assert image.shape == (64, 64, 3) and image.dtype == torch.uint8
    assert int(image[0, 0, 0]) == 255 and int(image[-1, -1, 0]) == 128  # bounds are fixed, not min-max
    lat[0, 1, 3, 3] = math.nan
    assert int(render_latents(lat).max()) == 0
    assert sigma_schedule(3)[0] > sigma_schedule(3)[1] > sigma_schedule(3)[2] > sigma_schedule(3)[3] == 0.0


def test_cells_run_skip_with_reasons_and_compare_with_the_baseline():
    target = UNetTarget(TINY, "cpu", log=lambda m: None)
    cells = [Cell("sdpa", width=128, height=128, steps=2),
             Cell("sdpa", channels_last=True, width=128, height=128, steps=2),
             Cell("chunked", precision="bf16", width=128, height=128, steps=2),
             Cell("no-such-kernel", width=128, height=128, steps=2),
             Cell("sdpa", width=120, height=128, steps=2),
             Cell("sdpa", compile="reduce-overhead", width=128, height=128, steps=2)]
    cells += [Cell(name, width=128, height=128, steps=2) for name in UNAVAILABLE[:1]]
    table = BenchRunner(target, repeats=1, warmup=1).run(cells)
    r = {i: res for i, res in enumerate(table.results)}
    assert r[0].baseline and r[0].status == "ok" and r[0].sampler_its > 0 and not r[0].black
    assert r[1].status == "ok" and r[1].max_abs <= 1  # channels-last: same math
    assert r[2].status == "ok" and r[2].psnr_db > 35 and not r[2].black  # bf16: close
    assert r[3].status == "skipped" and "unknown attention kernel" in r[3].reason
    assert r[4].status == "skipped" and "multiples of 16" in r[4].reason
    assert r[5].status == "skipped" and "CUDA graphs" in r[5].reason
    if UNAVAILABLE:
        assert r[6].status == "skipped" and r[6].reason.startswith(UNAVAILABLE[0] + ":")


def test_precision_probe_skips_a_slow_or_broken_dtype():
    target = UNetTarget(TINY, "cpu", max_slowdown=1e-9, log=lambda m: None)
    with pytest.raises(CellSkipped, match="slower than fp32"):
        target.apply(Cell("sdpa", precision="fp16", width=128, height=128))
    target.apply(Cell("sdpa", precision="fp32", width=128, height=128))  # fp32 is never probed


def test_compiled_cell_runs_with_inductor_and_matches_eager():
    target = UNetTarget(MINI, "cpu", log=lambda m: None)
    cells = [Cell("sdpa", width=64, height=64, steps=1), Cell("sdpa", compile="default", width=64, height=64, steps=1)]
    table = BenchRunner(target, repeats=1, warmup=1).run(cells)
    eager, compiled = table.results
    assert compiled.status == "ok", compiled.reason
    assert compiled.max_abs <= 2 and not compiled.black
    assert len(target._compiled) == 1


def test_cli_end_to_end_writes_every_file(tmp_path, capsys):
    prefix = tmp_path / "out" / "unet"
    rc = main(["bench", "unet", "--tiny", "--attention", "sdpa,chunked", "--compile", "off", "--channels-last", "off",
               "--precision", "default,bf16", "--size", "64x64", "--steps", "2", "--repeats", "1", "--quiet",
               "--note", "test run", "--out", str(prefix)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| sdpa | 64x64 b1 2 steps |" in out and "best:" in out
    csv_text = (tmp_path / "out" / "unet.csv").read_text()
    assert "# command: python -m lib_accel bench unet --attention sdpa,chunked" in csv_text
    assert "# note: test run" in csv_text
    table = ResultTable.from_json((tmp_path / "out" / "unet.json").read_text())
    assert [r.status for r in table.results] == ["ok"] * 4
    assert json.loads((tmp_path / "out" / "unet.json").read_text())["machine"]["model"].startswith("tiny UNet")
    assert "Best: " in (tmp_path / "out" / "unet.md").read_text()
    ET.fromstring((tmp_path / "out" / "unet.svg").read_text())


@pytest.mark.parametrize("argv, message", [
    (["--attention", "nope"], "unknown attention kernel 'nope'"),
    (["--precision", "fp8"], "unknown precision"),
    (["--compile", "fast"], "unknown compile choice"),
    (["--attention", "sdpa", "--compile-attention", "chunked"], "missing from --attention"),
    (["--size", "512"], "not WIDTHxHEIGHT"),
    (["--repeats", "0"], "--repeats"),
])
def test_cli_bad_matrix_exits_2_with_the_reason(argv, message, capsys):
    assert main(["bench", "unet", "--tiny", "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bar_chart_svg_has_one_bar_per_finished_cell():
    table = ResultTable(machine={"machine": "cpu:test <x2>"})
    table.add(CellResult(Cell("sdpa"), sampler_its=2.0, baseline=True))
    table.add(CellResult(Cell("chunked"), sampler_its=1.0))
    table.add(CellResult(Cell("xformers"), status="skipped", reason="needs CUDA & xformers"))
    svg = bar_chart_svg(table, "sampler_its")
    root = ET.fromstring(svg)  # well-formed, escaped
    bars = [e for e in root.iter("{http://www.w3.org/2000/svg}rect") if e.find("{http://www.w3.org/2000/svg}title")
            is not None]
    assert len(bars) == 2
    widths = sorted(float(b.get("width")) for b in bars)
    assert widths[1] == pytest.approx(2 * widths[0])
    assert "skipped: needs CUDA &amp; xformers" in svg and "cpu:test &lt;x2&gt;" in svg
    assert "0.50x" in svg and "(baseline)" in svg


def test_default_matrix_compiles_only_when_asked():
    from lib_accel.__main__ import build_parser
    from lib_accel.bench.unet_cli import build_cells
    argv = ["bench", "unet", "--tiny"]
    cells = build_cells(build_parser(argv).parse_args(argv), torch.device("cpu"))
    assert cells and {c.compile for c in cells} == {"off"}
    argv += ["--compile", "off,default"]
    assert "default" in {c.compile for c in build_cells(build_parser(argv).parse_args(argv), torch.device("cpu"))}
