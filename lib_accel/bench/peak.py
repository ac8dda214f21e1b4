"""Peak of a reading polled in a thread while a generation runs (NVML reports current used memory only)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class PeakPoller:
    """``with PeakPoller(read) as p: ...`` then ``p.peak``: the largest int ``read()`` returned (None if none).
    ``read`` is called at entry, every ``interval_s`` and at exit; a failing read is skipped."""

    def __init__(self, read: Callable[[], int | None], interval_s: float = 0.05):
        self.read, self.interval_s = read, interval_s
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        try:
            value = self.read()
        except Exception:  # a flaky reading must not fail the generation being measured
            return
        if isinstance(value, int):
            self.peak = value if self.peak is None else max(self.peak, value)

    def __enter__(self) -> PeakPoller:
        def poll() -> None:
            while not self._stop.wait(self.interval_s):
                self._sample()
        self._sample()
        self._thread = threading.Thread(target=poll, name="accel-bench-peak", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
