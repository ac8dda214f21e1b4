"""PinnedKernel fallback and FastestKernel's measured choice, persistence and rejections."""

from __future__ import annotations

import json
import time

import torch

from lib_accel.attention import FastestKernel, PinnedKernel, TimingStore, get_kernel, reference_attention
from lib_accel.attention.base import AttentionCall, AttentionKernel, KernelUnsupported
from lib_accel.attention.timing import bucket_key


class FakeKernel(AttentionKernel):
    def __init__(self, name, delay=0.0, refuse=False, corrupt=None, error=None, fail_from_call=1):
        self.name, self.label = name, name
        self.delay, self.refuse, self.corrupt = delay, refuse, corrupt
        self.error, self.fail_from_call = error, fail_from_call  # raise ``error`` from that call on
        self.calls = 0

    def run(self, q, k, v, mask, scale):
        self.calls += 1
        if self.refuse:
            raise KernelUnsupported(self.name, ["refuses everything"])
        if self.error is not None and self.calls >= self.fail_from_call:
            raise self.error
        time.sleep(self.delay)
        out = get_kernel("sdpa-math")(q, k, v, mask, scale)
        if self.corrupt == "nan":
            out = out.clone().fill_(float("nan"))
        elif self.corrupt == "wrong":
            out = out + 1.0
        return out


def qkv(m=64, n=64):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, m, 16, generator=g), torch.randn(2, 4, n, 16, generator=g),
            torch.randn(2, 4, n, 16, generator=g))


def test_pinned_falls_back_once_with_reason():
    logs = []
    refusing = FakeKernel("refuser", refuse=True)
    fallback = FakeKernel("fallback")
    pinned = PinnedKernel(refusing, fallback, logs.append)
    q, k, v = qkv()
    for _ in range(3):
        out = pinned(q, k, v)
    assert refusing.calls == 1, "a refused signature must not be retried"
    assert fallback.calls == 3
    assert len(logs) == 1 and "refuses everything" in logs[0] and "fallback" in logs[0]
    assert torch.allclose(out.double(), reference_attention(q, k, v), atol=1e-5)
    assert pinned.fallback_reasons


def test_pinned_uses_kernel_when_it_works():
    kernel, fallback = FakeKernel("good"), FakeKernel("fallback")
    pinned = PinnedKernel(kernel, fallback, lambda m: None)
    q, k, v = qkv()
    pinned(q, k, v)
    pinned(q, k, v)
    assert kernel.calls == 2 and fallback.calls == 0


def test_fastest_picks_the_faster_and_persists(tmp_path):
    path = tmp_path / "timings.json"
    slow, fast = FakeKernel("slow", delay=0.1), FakeKernel("fast")
    logs = []
    auto = FastestKernel([slow, fast], FakeKernel("fallback"), TimingStore(str(path)), logs.append, repeats=2)
    q, k, v = qkv()
    out = auto(q, k, v)
    assert torch.allclose(out.double(), reference_attention(q, k, v), atol=1e-5)
    assert auto.choice_for(q, k, v) is fast
    assert any("-> fast" in line for line in logs)
    record = next(iter(json.loads(path.read_text()).values()))
    assert record["kernel"] == "fast" and record["ms"]["slow"] > record["ms"]["fast"]

    slow2, fast2 = FakeKernel("slow", delay=0.1), FakeKernel("fast")
    again = FastestKernel([slow2, fast2], FakeKernel("fallback"), TimingStore(str(path)), logs.append)
    again(q, k, v)
    assert slow2.calls == 0 and fast2.calls == 1, "a persisted decision is reused without timing"


def test_fastest_rejects_refusing_nan_and_disagreeing_kernels():
    good = FakeKernel("good", delay=0.01)
    bad = [FakeKernel("refuser", refuse=True), FakeKernel("nan", corrupt="nan"), FakeKernel("wrong", corrupt="wrong")]
    store = TimingStore(None)
    auto = FastestKernel([good, *bad], FakeKernel("fallback"), store, lambda m: None, repeats=1)
    q, k, v = qkv()
    auto(q, k, v)
    assert auto.choice_for(q, k, v) is good
    rejected = next(iter(store.entries().values()))["rejected"]
    assert set(rejected) == {"refuser", "nan", "wrong"}
    assert "disagrees" in rejected["wrong"] and "non-finite" in rejected["nan"]


def test_fastest_uses_fallback_when_nothing_runs():
    fallback = FakeKernel("fallback")
    logs = []
    auto = FastestKernel([FakeKernel("refuser", refuse=True)], fallback, TimingStore(None), logs.append)
    q, k, v = qkv()
    auto(q, k, v)
    auto(q, k, v)
    assert fallback.calls == 2 and "no kernel ran" in logs[0]


def test_new_shape_is_measured_separately():
    a, b = FakeKernel("a"), FakeKernel("b", delay=0.01)
    store = TimingStore(None)
    auto = FastestKernel([a, b], FakeKernel("fallback"), store, lambda m: None, repeats=1)
    auto(*qkv(64, 64))
    auto(*qkv(64, 77))
    assert len(store.entries()) == 2


def test_corrupt_store_is_ignored_and_rewritten(tmp_path):
    path = tmp_path / "timings.json"
    path.write_text("{not json")
    store = TimingStore(str(path))
    assert store.get("x") is None
    store.put("x", {"kernel": "sdpa"})
    assert json.loads(path.read_text())["x"]["kernel"] == "sdpa"
    store.clear()
    assert not path.exists() and store.entries() == {}


def test_candidates_failing_on_any_run_are_rejected_and_the_call_proceeds():
    """An OOM on a timed round (not the first call), a cuDNN frontend error or any other exception from one
    candidate rejects that candidate with its reason; the others are measured and the call returns."""
    good = FakeKernel("good")
    oom_later = FakeKernel("oom-later", error=RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                           fail_from_call=3)
    cudnn = FakeKernel("cudnn", error=RuntimeError("cuDNN Frontend error: [cudnn_frontend] No valid engine configs"))
    odd = FakeKernel("odd", error=ValueError("unexpected stride"))
    store = TimingStore(None)
    auto = FastestKernel([oom_later, cudnn, odd, good], FakeKernel("fallback"), store, lambda m: None, repeats=3)
    q, k, v = qkv()
    out = auto(q, k, v)
    assert torch.allclose(out.double(), reference_attention(q, k, v), atol=1e-5)
    assert auto.choice_for(q, k, v) is good
    record = next(iter(store.entries().values()))
    assert record["kernel"] == "good" and set(record["ms"]) == {"good"}
    assert record["rejected"]["oom-later"] == "failed while timed: out of memory"
    assert "cuDNN Frontend error" in record["rejected"]["cudnn"]
    assert record["rejected"]["odd"] == "ValueError: unexpected stride"


def test_every_candidate_failing_while_timed_uses_the_fallback():
    fallback = FakeKernel("fallback")
    flaky = FakeKernel("flaky", error=RuntimeError("out of memory"), fail_from_call=2)
    logs = []
    auto = FastestKernel([flaky], fallback, TimingStore(None), logs.append, repeats=2)
    q, k, v = qkv()
    out = auto(q, k, v)
    assert torch.allclose(out.double(), reference_attention(q, k, v), atol=1e-5)
    assert "no kernel ran" in logs[0] and "out of memory" in logs[0]


def test_a_stored_choice_that_now_fails_is_measured_again(tmp_path):
    path = tmp_path / "timings.json"
    q, k, v = qkv()
    key = bucket_key(AttentionCall.of(q, k, v))
    path.write_text(json.dumps({key: {"kernel": "broken", "ms": {"broken": 0.1}}}))
    broken, good = FakeKernel("broken", error=RuntimeError("cuDNN Frontend error")), FakeKernel("good")
    logs = []
    auto = FastestKernel([broken, good], FakeKernel("fallback"), TimingStore(str(path)), logs.append)
    out = auto(q, k, v)
    assert torch.allclose(out.double(), reference_attention(q, k, v), atol=1e-5)
    assert auto.choice_for(q, k, v) is good
    assert any("stored choice broken failed" in line for line in logs)
    assert json.loads(path.read_text())[key]["kernel"] == "good"


def test_malformed_entries_are_dropped_on_load_with_one_log_line(tmp_path, capsys):
    path = tmp_path / "timings.json"
    q, k, v = qkv()
    key = bucket_key(AttentionCall.of(q, k, v))
    path.write_text(json.dumps({
        key: {"kernel": ["sdpa-flash"], "ms": {}},  # a list where a kernel name belongs
        "b": {"kernel": "a", "ms": {"a": [1, 2]}},
        "c": {"kernel": "a", "ms": {"a": 1.0}, "rejected": {"x": {"deep": [1]}}},
        "d": {"kernel": "a", "ms": {"a": 0.5}, "rejected": {"b": "out of memory"}, "measured_at": "now"},
        "e": "sdpa",
    }))
    store = TimingStore(str(path))  # logs with print by default, like the extension's log
    a, b = FakeKernel("a"), FakeKernel("sdpa-flash")
    auto = FastestKernel([a, b], FakeKernel("fallback"), store, lambda m: None, repeats=1)
    out = auto(q, k, v)  # the bad entry for this very shape is measured again instead of failing the call
    assert torch.allclose(out.double(), reference_attention(q, k, v), atol=1e-5)
    assert store.get(key)["kernel"] in {"a", "sdpa-flash"}
    assert set(store.entries()) == {"d", key}
    lines = [line for line in capsys.readouterr().out.splitlines() if "timing cache" in line]
    assert len(lines) == 1 and "dropped 4 malformed entries" in lines[0]


def test_deeply_nested_or_wrongly_typed_files_are_ignored_with_a_log_line(tmp_path, capsys):
    path = tmp_path / "timings.json"
    path.write_text("[" * 200000 + "]" * 200000)
    store = TimingStore(str(path))
    assert store.get("x") is None and store.entries() == {}
    out = capsys.readouterr().out
    assert out.count("[Accel] timing cache") == 1 and "unreadable" in out
    path.write_text(json.dumps([["sdpa"]]))
    store = TimingStore(str(path))
    assert store.entries() == {}
    out = capsys.readouterr().out
    assert out.count("[Accel] timing cache") == 1 and "holds a list" in out
