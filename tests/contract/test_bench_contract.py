"""Tier 2: the in-process benchmark (BenchSession + WebUITarget) inside the fake WebUI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accel_boot import start_with_checkpoints


@pytest.fixture
def webui(fake_webui, tmp_path):
    return start_with_checkpoints(fake_webui, tmp_path, "sd1")


def new_session():
    from lib_accel.webui.bench.session import BenchSession
    from lib_accel.webui.extension import get
    return BenchSession(get())


def run(session, **axes):
    form = dict(attention=["Accel SDPA math", "Accel SDPA flash"], compile_modes=["off"], channels_last=["off"],
                precision=["default"], presets=[], custom_sizes="64x64", batches="1", steps="2")
    form.update(axes)
    matrix = session.build_matrix(**form)
    message = session.start(matrix, repeats=2, warmup=1, prompt="a cat")
    assert message.startswith("Started")
    session.wait(120)
    assert not session.running
    return session.table


def test_runs_cells_measures_compares_and_restores_settings(webui):
    opts = webui.opts
    keys = ("cross_attention_optimization", "accel_unet_dtype", "accel_channels_last")
    before = {k: getattr(opts, k) for k in keys}
    active_before = webui.module("sd_hijack").current_optimizer.title()
    session = new_session()
    table = run(session, precision=["default", "bf16"], channels_last=["off", "on"])
    assert session.error is None, session.error
    assert [r.status for r in table.results] == ["ok"] * 8, [(r.status, r.reason) for r in table.results]
    first = table.results[0]
    assert first.baseline and first.speedup == pytest.approx(1.0)
    for r in table.results:
        assert r.runs == 2 and r.first_run_s > 0 and r.e2e_its > 0
        assert r.sampler_its and r.sampler_its > r.e2e_its  # the UNet stage alone, from the live stats
        assert r.black is False
    flash = [r for r in table.results if r.cell.attention == "Accel SDPA flash" and r.cell.precision == "default"]
    assert all(r.max_abs <= 3 for r in flash)  # same math, another kernel
    bf16 = [r for r in table.results if r.cell.precision == "bf16"]
    assert any(r.max_abs > 0 for r in bf16) and all(r.psnr_db > 20 for r in bf16)
    # the run put every setting back and left files behind
    assert {k: getattr(opts, k) for k in keys} == before
    assert webui.module("sd_hijack").current_optimizer.title() == active_before
    csv_path, json_path = session.files
    assert Path(csv_path).read_text().count("\n") >= 9
    assert len(json.loads(Path(json_path).read_text())["results"]) == 8
    assert "Best:" in session.status_markdown()
    assert len(session.rows("sampler_its")) == 8 and len(session.chart_rows()) == 8


def test_apply_best_writes_and_saves_the_winners_settings(webui, tmp_path):
    session = new_session()
    run(session, precision=["default", "bf16"])
    best = session.table.best()
    message = session.apply_best()
    assert message.startswith("Applied and saved")
    opts = webui.opts
    assert opts.data["cross_attention_optimization"] == best.cell.attention
    assert opts.data["accel_unet_dtype"] == best.cell.precision
    assert webui.module("sd_hijack").current_optimizer.title() == best.cell.attention
    saved = json.loads(Path(webui.module("shared").config_filename).read_text())
    assert saved["accel_unet_dtype"] == best.cell.precision


def test_unavailable_attention_is_skipped_with_reason_and_bad_matrix_refused(webui):
    session = new_session()
    table = run(session, attention=["Accel SDPA math", "Accel xformers"])
    from lib_accel.bench.matrix import MatrixError  # the extension's copy (the harness re-imports lib_accel)
    skipped = table.results[1]
    assert skipped.status == "skipped" and "Accel xformers" in skipped.reason
    with pytest.raises(MatrixError, match="size"):
        session.build_matrix(["Accel SDPA math"], ["off"], ["off"], ["default"], [], "65x64", "1", "2")
    with pytest.raises(MatrixError, match="attention"):
        session.build_matrix([], ["off"], ["off"], ["default"], ["512x512"], "", "1", "2")


def test_one_run_at_a_time_and_cancel(webui):
    import threading

    from lib_accel.webui.bench import target as bench_target
    gate = threading.Event()
    real_generate = bench_target.WebUITarget.generate

    def slow_generate(self, cell, seed):
        gate.wait(10)
        return real_generate(self, cell, seed)

    bench_target.WebUITarget.generate = slow_generate
    try:
        session = new_session()
        matrix = session.build_matrix(["Accel SDPA math", "Accel SDPA flash"], ["off"], ["off"], ["default"], [],
                                      "64x64", "1", "2")
        assert session.start(matrix, repeats=1, warmup=0).startswith("Started")
        assert "already running" in session.start(matrix)
        assert session.cancel().startswith("Cancelling")
        gate.set()
        session.wait(60)
    finally:
        bench_target.WebUITarget.generate = real_generate
    statuses = [r.status for r in session.table.results]
    assert "cancelled" in statuses, statuses
    assert webui.opts.data.get("accel_unet_dtype", "default") == "default"


def test_automatic_is_a_cell_labelled_with_what_it_resolved_to_and_vae_is_an_axis(webui):
    opts = webui.opts
    before = {k: getattr(opts, k) for k in ("cross_attention_optimization", "accel_vae_dtype")}
    session = new_session()
    table = run(session, attention=["Automatic", "Accel SDPA math"], vae=["default", "bf16"])
    assert session.error is None, session.error
    assert [r.status for r in table.results] == ["ok"] * 4, [(r.status, r.reason) for r in table.results]
    automatic = table.results[0]
    resolved = automatic.resolved
    assert automatic.baseline and resolved and resolved != "Automatic"
    assert automatic.label() == f"Automatic ({resolved})" and automatic.row()["label"] == automatic.label()
    vae_cells = [r for r in table.results if r.cell.vae == "bf16"]
    assert len(vae_cells) == 2 and all("VAE bf16" in r.label() for r in vae_cells)
    assert all(r.max_abs is not None and r.psnr_db > 20 for r in vae_cells)
    assert {k: getattr(opts, k) for k in before} == before
