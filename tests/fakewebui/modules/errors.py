"""Fake of modules/errors.py: ``report``, ``display``, ``print_error_explanation``, ``run`` (same output
format)."""

import sys
import textwrap
import traceback

exception_records = []


def record_exception():
    _, e, tb = sys.exc_info()
    if e is None or (exception_records and exception_records[-1]["exception_object"] is e):
        return
    exception_records.append(
        {
            "exception": str(e),
            "exception_object": e,
            "traceback": [
                [f"{x.filename}, line {x.lineno}, {x.name}", x.line] for x in traceback.extract_tb(tb)
            ],
        }
    )
    del exception_records[:-5]


def report(message: str, *, exc_info: bool = False) -> None:
    record_exception()
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(textwrap.indent(traceback.format_exc(), "    "), file=sys.stderr)
        print("---", file=sys.stderr)


def print_error_explanation(message):
    record_exception()
    lines = message.strip().split("\n")
    width = max(len(x) for x in lines)
    print("=" * width, file=sys.stderr)
    for line in lines:
        print(line, file=sys.stderr)
    print("=" * width, file=sys.stderr)


def display(e: Exception, task, *, full_traceback=False):
    record_exception()
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    te = traceback.TracebackException.from_exception(e)
    if full_traceback:
        te.stack = traceback.StackSummary(traceback.extract_stack()[:-2] + te.stack)
    print(*te.format(), sep="", file=sys.stderr)


already_displayed = {}


def display_once(e: Exception, task):
    if task not in already_displayed:
        display(e, task)
        already_displayed[task] = 1


def run(code, task):
    try:
        code()
    except Exception as e:
        display(task, e)
