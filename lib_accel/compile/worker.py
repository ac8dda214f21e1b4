"""One background thread that compiles queued call signatures, one at a time, in submission order.

Compiling runs the compiled callable once on a detached copy of the inputs that queued it, under the
grad/autocast state captured at submission (dynamo guards on it), so the graph it leaves in dynamo's
cache is the one the next real call with that signature hits. One thread, because dynamo compiles
serially anyway and a second compile would only compete with generation for the same cores.
"""

from __future__ import annotations

import contextlib
import queue
import threading

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
    def __init__(self, name: str = "accel-compile"):
        self.name = name
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.current = None

    def submit(self, compiled, state, args: tuple, kwargs: dict) -> None:
        self._queue.put((compiled, state, args, kwargs, grad_state()))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            try:
                compiled, state, args, kwargs, captured = self._queue.get(timeout=30)
            except queue.Empty:
                return  # idle threads go away; submit() starts a new one
            self.current = state
            try:
                if compiled.installed and state.status == "queued":
                    with contextlib.ExitStack() as stack:
                        _enter_state(stack, captured)
                        compiled._compile_now(state, args, kwargs)
                elif state.status == "queued":
                    state.status, state.reason = "failed", "module was uncompiled before its turn"
            except BaseException as e:  # a worker must outlive any single job
                state.status, state.reason = "failed", f"{type(e).__name__}: {e}"
            finally:
                self.current = None
                self._queue.task_done()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is done (tests); True when the queue drained."""
        done = threading.Event()

        def waiter():
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)


default_worker = process_singleton(CompileWorker)
