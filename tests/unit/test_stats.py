"""Live stats: rates and s/it, passes, per-stage times, CUDA-event timing, the WebUI callbacks and their cost."""

from __future__ import annotations

import sys
import threading
import time
import types

import pytest
import torch

from lib_accel.monitoring.stats import STAGES, StatsCollector, format_rate
from lib_accel.webui import live_stats
from lib_accel.webui.live_stats import LiveStats, infotext_fields


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class FakeEvent:
    """Stands in for torch.cuda.Event: ``elapsed_time`` in ms between the clock values at record()."""

    def __init__(self, clock: FakeClock, gpu_lag: float = 0.0):
        self.clock, self.gpu_lag, self.at, self.records = clock, gpu_lag, None, 0

    def record(self):
        self.at = self.clock() + self.gpu_lag
        self.records += 1

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.at - self.at) * 1000.0


def run_pass(collector: StatsCollector, clock: FakeClock, steps: int, seconds_per_call: float,
             calls_per_step: int = 1, cuda: bool = False, calls: int | None = None) -> None:
    total = steps * calls_per_step
    for index in range(total if calls is None else calls):
        collector.step_started(index, total, steps, cuda)
        clock.advance(seconds_per_call)
        collector.step_finished(cuda)


@pytest.mark.parametrize(("its", "text"), [(3.2149, "3.21 it/s"), (1.0, "1.00 it/s"), (0.35, "2.86 s/it"),
                                           (None, "-"), (0.0, "-"), (float("nan"), "-"), (float("inf"), "-")])
def test_format_rate(its, text):
    assert format_rate(its) == text


def test_rate_step_and_stages_of_one_image():
    clock = FakeClock()
    c = StatsCollector(clock=clock, event_factory=None)
    c.begin_image()
    with c.stage("text_encoder"):
        clock.advance(0.25)
    run_pass(c, clock, steps=20, seconds_per_call=0.5)
    snap = c.snapshot()
    assert snap["running"] and snap["step"] == 20 and snap["total"] == 20 and snap["pass"] == 1
    assert snap["its"] == pytest.approx(2.0) and snap["rate"] == "2.00 it/s"
    assert snap["seconds_per_step"] == pytest.approx(0.5)
    with c.stage("vae_decode"):
        clock.advance(0.75)
    summary = c.end_image()
    assert summary["complete"] and set(summary["stages"]) == set(STAGES)
    assert summary["stages"] == {"text_encoder": 0.25, "unet": pytest.approx(10.0), "vae_decode": 0.75}
    assert summary["passes"][0]["steps"] == 20 and summary["passes"][0]["calls"] == 20
    assert summary["rate"] == "2.00 it/s" and summary["seconds"] == pytest.approx(11.0)
    after = c.snapshot()
    assert after["last_image"] == summary and after["images"] == 1 and after["current_image"] is None
    clock.advance(5)
    assert not c.snapshot()["running"]


def test_slow_steps_read_as_seconds_per_iteration():
    clock = FakeClock()
    c = StatsCollector(clock=clock, event_factory=None)
    c.begin_image()
    run_pass(c, clock, steps=4, seconds_per_call=2.5)
    assert c.snapshot()["rate"] == "2.50 s/it"


def test_single_call_uses_its_own_duration_and_current_step_is_one_based():
    clock = FakeClock()
    c = StatsCollector(clock=clock, event_factory=None)
    c.step_started(0, 10, 10)
    assert c.snapshot()["step"] == 1 and c.snapshot()["its"] is None  # nothing ended yet
    clock.advance(0.2)
    c.step_finished()
    assert c.snapshot()["its"] == pytest.approx(5.0)


def test_second_order_sampler_counts_sampler_steps_not_calls():
    clock = FakeClock()
    c = StatsCollector(clock=clock, event_factory=None)
    c.begin_image()
    run_pass(c, clock, steps=10, seconds_per_call=0.1, calls_per_step=2, calls=19)  # Heun: 2n-1 calls
    snap = c.snapshot()
    assert snap["its"] == pytest.approx(5.0) and snap["step"] == 10 and snap["total"] == 10


def test_hires_fix_makes_two_passes_with_their_own_rates():
    clock = FakeClock()
    c = StatsCollector(clock=clock, event_factory=None)
    c.begin_image()
    run_pass(c, clock, steps=10, seconds_per_call=0.1)
    clock.advance(3.0)  # upscaling between the passes is not UNet time
    run_pass(c, clock, steps=5, seconds_per_call=0.5)
    assert c.snapshot()["pass"] == 2 and c.snapshot()["total"] == 5
    summary = c.end_image()
    assert [p["rate"] for p in summary["passes"]] == ["10.00 it/s", "2.00 it/s"]
    assert summary["rate"] == "10.00 it/s + 2.00 it/s"
    assert summary["stages"]["unet"] == pytest.approx(1.0 + 2.5)


def test_live_rate_follows_recent_steps():
    clock = FakeClock()
    c = StatsCollector(clock=clock, event_factory=None)
    run_pass(c, clock, steps=200, seconds_per_call=0.5, calls=40)  # 20 s at 2 it/s
    for index in range(40, 80):  # then 10 it/s for 4 s
        c.step_started(index, 200, 200)
        clock.advance(0.1)
        c.step_finished()
    assert c.snapshot()["its"] == pytest.approx(10.0, rel=0.2)


def test_cuda_events_time_the_pass_on_the_gpu():
    clock = FakeClock()
    events: list[FakeEvent] = []

    def factory():
        events.append(FakeEvent(clock, gpu_lag=0.3))  # the GPU finishes 0.3 s after the CPU queued it
        return events[-1]

    c = StatsCollector(clock=clock, event_factory=factory)
    c.begin_image()
    run_pass(c, clock, steps=10, seconds_per_call=0.1, cuda=True)
    assert len(events) == 2 and events[1].records == 10  # one start, one end event re-recorded per call
    events[1].at += 0.2  # the last step's kernels ended later than the CPU saw
    assert c.end_image()["stages"]["unet"] == pytest.approx(1.2)


def test_cpu_passes_make_no_events_and_stages_outside_images_are_ignored():
    clock = FakeClock()
    made = []
    c = StatsCollector(clock=clock, event_factory=lambda: made.append(1))
    with c.stage("text_encoder"):  # no image open: e.g. an extension encoding a prompt at UI time
        clock.advance(1.0)
    run_pass(c, clock, steps=3, seconds_per_call=0.1)
    assert not made
    assert c.snapshot()["current_image"]["stages"]["text_encoder"] == 0.0


def test_an_image_left_open_is_closed_as_incomplete():
    clock = FakeClock()
    c = StatsCollector(clock=clock, event_factory=None)
    c.begin_image()
    run_pass(c, clock, steps=3, seconds_per_call=0.1)
    c.begin_image()  # the previous image raised before postprocess_batch
    assert c.snapshot()["last_image"]["complete"] is False
    assert c.end_image()["passes"] == []
    assert c.end_image() is None


def test_stage_runs_sync_before_and_after_and_survives_errors():
    clock = FakeClock()
    c = StatsCollector(clock=clock, event_factory=None)
    syncs = []
    c.begin_image()
    with pytest.raises(RuntimeError), c.stage("vae_decode", lambda: syncs.append(clock())):
        clock.advance(0.5)
        raise RuntimeError("decode failed")
    assert len(syncs) == 2 and c.snapshot()["current_image"]["stages"]["vae_decode"] == 0.5


def test_readers_and_writer_on_different_threads():
    c = StatsCollector(event_factory=None)
    stop = threading.Event()
    snaps = []

    def reader():
        while not stop.is_set():
            snaps.append(c.snapshot())

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(20):
        c.begin_image()
        run_pass(c, FakeClock(), steps=50, seconds_per_call=0.0)
        c.end_image()
    stop.set()
    t.join()
    assert c.images == 20 and snaps


# -- the WebUI side (no WebUI needed: params are duck-typed like v1.10.1's) -------------------------------------
def denoiser_params(denoiser, x):
    return types.SimpleNamespace(x=x, denoiser=denoiser, sampling_step=max(denoiser.step - 1, 0),
                                 total_sampling_steps=denoiser.steps)


def test_callbacks_use_the_exact_denoiser_step():
    clock = FakeClock()
    stats = LiveStats(StatsCollector(clock=clock, event_factory=None), monitor=object())
    denoiser = types.SimpleNamespace(step=0, steps=8, total_steps=8)
    x = torch.zeros(2, 4, 8, 8)
    for _ in range(8):
        stats.on_cfg_denoiser(denoiser_params(denoiser, x))
        clock.advance(0.125)
        stats.on_cfg_after_cfg(types.SimpleNamespace(x=x))
        denoiser.step += 1  # CFGDenoiser.forward increments after the after-cfg callback
    snap = stats.collector.snapshot()
    assert snap["step"] == 8 and snap["total"] == 8 and snap["its"] == pytest.approx(8.0)
    stats.enabled = False
    stats.on_cfg_denoiser(denoiser_params(types.SimpleNamespace(step=0, steps=3, total_steps=3), x))
    assert stats.collector.snapshot()["total"] == 8


def test_stage_wrappers_install_through_the_patch_owner(monkeypatch):
    calls = []
    prompt_parser = types.ModuleType("modules.prompt_parser")
    prompt_parser.get_learned_conditioning = lambda *a: calls.append(("te", a)) or "conds"
    processing = types.ModuleType("modules.processing")  # no decode_latent_batch: reported, not fatal
    modules = types.ModuleType("modules")
    for name, mod in (("modules", modules), ("modules.prompt_parser", prompt_parser),
                      ("modules.processing", processing)):
        monkeypatch.setitem(__import__("sys").modules, name, mod)

    class Owner:
        def __init__(self):
            self.originals = {}

        def original(self, obj, field):
            return self.originals.get((id(obj), field), getattr(obj, field))

        def patch(self, obj, field, replacement):
            self.originals.setdefault((id(obj), field), getattr(obj, field))
            setattr(obj, field, replacement)

    clock = FakeClock()
    stats = LiveStats(StatsCollector(clock=clock, event_factory=None), monitor=object())
    owner = Owner()
    assert stats.install(owner) == ["text_encoder"] and "vae_decode" in stats.not_installed
    assert stats.install(owner) == ["text_encoder"]  # idempotent: wraps the WebUI's original, not itself
    wrapped = prompt_parser.get_learned_conditioning
    assert wrapped.__wrapped__ is owner.originals[(id(prompt_parser), "get_learned_conditioning")]
    assert wrapped("model", ["a cat"], 20) == "conds"  # no image open: passes straight through
    stats.collector.begin_image()
    assert wrapped("model", ["a cat"], 20) == "conds" and len(calls) == 2
    assert "text_encoder" in stats.collector.snapshot()["current_image"]["stages"]


def test_infotext_fields():
    config = types.SimpleNamespace(channels_last="on", cudnn_benchmark="default", tf32="default", nan_check="full")
    summary = {"passes": [{"its": 3.2149}, {"its": 0.5}]}
    assert infotext_fields(summary, config, "Accel auto") == {
        "Accel attention": "Accel auto", "Accel toggles": "channels_last on nan_check full",
        "Accel speed": "3.21 it/s + 2.00 s/it"}
    plain = types.SimpleNamespace(channels_last="default", cudnn_benchmark="default", tf32="default",
                                  nan_check="default")
    assert infotext_fields(None, plain, None) == {"Accel attention": "none", "Accel toggles": "default"}


def test_end_image_writes_infotext_only_when_enabled(monkeypatch):
    stats = LiveStats(StatsCollector(event_factory=None), monitor=object())
    p = types.SimpleNamespace(extra_generation_params={})
    config = types.SimpleNamespace(live_stats=True, infotext=False, channels_last="default",
                                   cudnn_benchmark="default", tf32="default", nan_check="default")
    monkeypatch.setattr(live_stats, "_config", lambda: config)
    # the WebUI's state that the real _attention_name reads: sd_hijack.current_optimizer (None: no optimization)
    modules, sd_hijack = types.ModuleType("modules"), types.ModuleType("modules.sd_hijack")
    modules.sd_hijack, sd_hijack.current_optimizer = sd_hijack, types.SimpleNamespace(name="sdp")
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.sd_hijack", sd_hijack)
    stats.begin_image(p)
    stats.end_image(p)
    assert p.extra_generation_params == {}
    config.infotext = True
    stats.begin_image(p)
    stats.end_image(p)
    assert p.extra_generation_params["Accel attention"] == "sdp"
    sd_hijack.current_optimizer = None
    stats.begin_image(p)
    stats.end_image(p)
    assert p.extra_generation_params["Accel attention"] == "none"


def measure_callback_overhead(iterations: int = 20000) -> float:
    """Seconds per sampler step that Accel's two denoiser callbacks add (CPU tensors; no events)."""
    stats = LiveStats(StatsCollector(event_factory=None), monitor=object())
    denoiser = types.SimpleNamespace(step=0, steps=iterations, total_steps=iterations)
    params = denoiser_params(denoiser, torch.zeros(2, 4, 64, 64))
    after = types.SimpleNamespace(x=params.x)
    start = time.perf_counter()
    for i in range(iterations):
        denoiser.step = i
        stats.on_cfg_denoiser(params)
        stats.on_cfg_after_cfg(after)
    return (time.perf_counter() - start) / iterations


def test_callback_overhead_is_far_below_one_percent_of_a_step():
    per_step = min(measure_callback_overhead() for _ in range(3))
    print(f"\n[Accel] live-stats callbacks: {per_step * 1e6:.2f} us per step")
    # 1% of a 25 ms step (SD1.5 512x512 at 40 it/s) is 250 us; stay two orders of magnitude below it
    assert per_step < 50e-6


def test_pass_mean_rate_covers_more_steps_than_the_ring():
    clock = FakeClock()
    c = StatsCollector(clock=clock, event_factory=None)
    c.begin_image()
    run_pass(c, clock, steps=150, seconds_per_call=0.5, calls=50)
    for index in range(50, 150):
        c.step_started(index, 150, 150)
        clock.advance(0.1)
        c.step_finished()
    mean = c.end_image()["passes"][0]["its"]
    assert mean == pytest.approx(149 / (49 * 0.5 + 100 * 0.1))


def test_a_denoiser_without_counters_is_counted_by_calls():
    clock = FakeClock()
    stats = LiveStats(StatsCollector(clock=clock, event_factory=None), monitor=object())
    x = torch.zeros(2, 4, 8, 8)
    for lagging in (0, 0, 1, 2):  # sampling_step lags by one; it must not split the pass
        stats.on_cfg_denoiser(types.SimpleNamespace(x=x, denoiser=None, sampling_step=lagging,
                                                    total_sampling_steps=4))
        clock.advance(0.5)
        stats.on_cfg_after_cfg(types.SimpleNamespace(x=x))
    snap = stats.collector.snapshot()
    assert snap["pass"] == 1 and snap["step"] == 4 and snap["total"] == 4 and snap["its"] == pytest.approx(2.0)
