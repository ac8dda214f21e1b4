"""Process-wide objects created on first use (the extension owner, live stats, the compile worker).

Library modules stay imported across Reload UI, so an object made here outlives a reload; that is what
lets ``on_script_unloaded`` find and undo everything the previous load installed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def process_singleton(factory: Callable[[], T]) -> Callable[[], T]:
    """A getter that calls ``factory()`` once (thread-safe, lazily) and returns that object ever after."""
    lock = threading.Lock()
    made: list[T] = []

    def get() -> T:
        with lock:
            if not made:
                made.append(factory())
            return made[0]

    get.__doc__ = f"The process-wide {getattr(factory, '__name__', 'object')} (created on first use)."
    return get
