"""features.is_compiling() answers for the calling thread: a compile on another thread must not make eager code
on this one believe it is being traced (Accel auto would then stop measuring, Lora forwards would switch)."""

from __future__ import annotations

import threading

import torch

from lib_accel import features


def test_a_compile_on_another_thread_is_not_seen_as_tracing_here():
    inside, release = threading.Event(), threading.Event()

    def blocking_backend(gm, example_inputs):
        inside.set()
        assert release.wait(60)
        return gm.forward

    def body(x):
        return x * 2 + int(features.is_compiling())

    compiled = torch.compile(body, backend=blocking_backend, fullgraph=True)
    result = []
    worker = threading.Thread(target=lambda: result.append(compiled(torch.ones(2))))
    worker.start()
    try:
        assert inside.wait(60), "the compile never reached the backend"
        assert features.is_compiling() is False
    finally:
        release.set()
        worker.join(60)
    assert torch.equal(result[0], torch.full((2,), 3.0)), "inside the traced body it is True"
    assert features.is_compiling() is False
