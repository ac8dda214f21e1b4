"""A compile job submitted while the idle worker thread is giving up must still run (the exit/submit race)."""

from __future__ import annotations

import queue
import threading
from types import SimpleNamespace

from lib_accel.compile.worker import CompileWorker


class Recorder:
    """Stands in for a CompiledModule: records which states the worker compiled."""

    installed = True

    def __init__(self):
        self.compiled = []

    def _compile_now(self, state, args, kwargs):
        self.compiled.append(state.name)
        state.status = "ready"


def test_job_submitted_as_the_idle_thread_times_out_is_not_stranded():
    worker = CompileWorker("test-race")
    real_get = worker._queue.get
    idle, submitted = threading.Event(), threading.Event()
    calls = {"n": 0}

    def get(block=True, timeout=None):
        """First job: served normally. Then the queue is empty: the thread reaches its idle timeout, and the
        test submits the next job exactly there, before the timeout is reported to the worker."""
        calls["n"] += 1
        if calls["n"] == 2:
            idle.set()
            assert submitted.wait(10)
            raise queue.Empty
        return real_get(block, timeout)

    worker._queue.get = get
    compiled = Recorder()
    first = SimpleNamespace(name="first", status="queued")
    worker.submit(compiled, first, (), {})
    assert idle.wait(10), "the worker never went idle"
    second = SimpleNamespace(name="second", status="queued")
    worker.submit(compiled, second, (), {})  # the old thread is still alive here: no new thread is started
    submitted.set()
    assert worker.join(10), "the job submitted during the idle timeout stayed queued"
    assert compiled.compiled == ["first", "second"] and second.status == "ready"


def test_idle_thread_exits_and_a_later_submit_starts_a_new_one():
    worker = CompileWorker("test-idle")
    worker.idle_s = 0.05
    compiled = Recorder()
    worker.submit(compiled, SimpleNamespace(name="a", status="queued"), (), {})
    assert worker.join(10)
    thread = worker._thread
    if thread is not None:
        thread.join(5)
    assert worker._thread is None
    worker.submit(compiled, SimpleNamespace(name="b", status="queued"), (), {})
    assert worker.join(10) and compiled.compiled == ["a", "b"]


def test_call_jobs_run_on_the_worker_in_order_and_may_queue_more():
    worker = CompileWorker("test-call")
    compiled, order = Recorder(), []

    def deferred():
        order.append(threading.current_thread().name)
        worker.submit(compiled, SimpleNamespace(name="from-call", status="queued"), (), {})

    worker.call(deferred)
    assert worker.join(10)
    assert order == ["test-call"] and compiled.compiled == ["from-call"]
