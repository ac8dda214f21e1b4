"""One background thread that compiles queued call signatures, one at a time, in submission order.

Compiling runs the compiled callable once on a detached copy of the inputs that queued it, under the
grad/autocast state captured at submission (dynamo guards on it), so the graph it leaves in dynamo's
cache is the one the next real call with that signature hits. One thread, because dynamo compiles
serially anyway and a second compile would only compete with generation for the same cores.

:meth:`CompileWorker.call` queues a plain function instead (pre-warm requests build their example inputs
on this thread, so a request never holds them). The thread exits after ``idle_s`` without work; whether
it exits and whether :meth:`CompileWorker.submit` must start a new one are decided under one lock, so a
job queued just as the thread gives up is never left waiting.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

import torch

from ..singleton import process_singleton
from .buckets import grad_state


def _enter_state(stack: contextlib.ExitStack, state: tuple) -> None:
    grad, inference, autocast = state
    stack.enter_context(torch.inference_mode() if inference else torch.set_grad_enabled(grad))
    for device_type, enabled, dtype in autocast:
        if enabled:
            stack.enter_context(torch.autocast(device_type, dtype=dtype))


class CompileWorker:
    idle_s = 30.0  # an idle thread exits after this long; the next submit starts a new one

    def __init__(self, name: str = "accel-compile"):
        self.name = name
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.current = None

    def submit(self, compiled, state, args: tuple, kwargs: dict) -> None:
        """Compile ``state``'s signature of ``compiled`` (a CompiledModule) on the worker thread."""
        self._put((compiled, state, args, kwargs, grad_state()))

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` on the worker thread in queue order (it may submit further jobs); exceptions are
        swallowed there, so ``fn`` reports its own failures."""
        self._put((fn,))

    def _put(self, job: tuple) -> None:
        with self._lock:  # the same lock the thread holds when it decides to exit on an empty queue
            self._queue.put(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def pending(self) -> int:
        return self._queue.qsize()

    def _next(self) -> tuple | None:
        """The next job, or None when the thread should exit (idle, and nothing was queued meanwhile)."""
        while True:
            try:
                return self._queue.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:
                    if self._thread is not threading.current_thread():
                        return None  # another thread serves the queue now
                    if self._queue.empty():
                        self._thread = None
                        return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                if len(job) == 1:
                    job[0]()
                else:
                    self._compile(*job)
            except BaseException:  # a worker must outlive any single job
                pass
            finally:
                self._queue.task_done()

    def _compile(self, compiled, state, args: tuple, kwargs: dict, captured: tuple) -> None:
        self.current = state
        try:
            if compiled.installed and state.status == "queued":
                with contextlib.ExitStack() as stack:
                    _enter_state(stack, captured)
                    compiled._compile_now(state, args, kwargs)
            elif state.status == "queued":
                state.status, state.reason = "failed", "module was uncompiled before its turn"
        except BaseException as e:
            state.status, state.reason = "failed", f"{type(e).__name__}: {e}"
        finally:
            self.current = None

    def join(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is done (tests); True when the queue drained."""
        done = threading.Event()

        def waiter():
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)


default_worker = process_singleton(CompileWorker)
