"""Fake of modules/call_queue.py: the one queue lock every generation and model load holds."""

import threading

queue_lock = threading.Lock()


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)
    return f
