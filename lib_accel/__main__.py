"""python -m lib_accel: info, benchmarks and checkpoint tools that work without the WebUI.

Only the module of the chosen command is imported: the parser lists the other commands by name and help
text alone, so `python -m lib_accel info` never imports a benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys

# Subcommand modules, each with register(subparsers, name) and a func default. Imported only when chosen.
BENCH_COMMANDS = {
    "attention": ("lib_accel.bench.attention", "time every attention kernel on SD1.5 attention shapes"),
    "webui": ("lib_accel.bench.webui_cli", "benchmark option combinations on a running WebUI (its --api)"),
    "unet": ("lib_accel.bench.unet_cli", "attention x compile x channels-last x precision on a standalone "
                                         "SD1.5-shaped UNet with random weights"),
}
SLIM = ("lib_accel.checkpoint.slim_cli",
        "prune EMA/optimizer state, convert to fp16/bf16 .safetensors (original untouched)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions' line breaks and appends each option's default unless its help already names it
    (options without a value, and those whose default is "none given", show no default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default:" in text.lower() or "(default" in text.lower() or action.default in (None, "", argparse.SUPPRESS) \
                or action.nargs == 0 or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def plain(text: str | None) -> str | None:
    """Docstring text for a terminal: reST roles and literals (``x``, :mod:`x`) become plain words."""
    if text is None:
        return None
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _finish(parser: argparse.ArgumentParser) -> None:
    """Plain-text description and shown defaults on a parser a command module registered."""
    parser.description = plain(parser.description)
    parser.epilog = plain(parser.epilog)
    parser.formatter_class = HelpFormatter


def _info(args: argparse.Namespace) -> int:
    from . import info
    data = info.collect()
    print(json.dumps(data, indent=1) if args.json else info.render(data))
    return 0


def _chosen(argv: list[str], names: list[str]) -> str | None:
    """The first of ``names`` that ``argv`` names as a positional word, if any."""
    words = [a for a in argv if not a.startswith("-")]
    return next((w for w in words[:2] if w in names), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser for ``argv``: the chosen command's module is imported and registers its options; every
    other command is listed with its help only (``argv=None``: no command module is imported)."""
    argv = [] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m lib_accel", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{info,bench,slim}")
    p = sub.add_parser("info", help="backends, versions, device and why a backend cannot run",
                       formatter_class=HelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=_info)

    command = _chosen(argv[:1], ["bench", "slim"])
    bench_parser = sub.add_parser("bench", help="benchmarks (attention, webui, unet)", formatter_class=HelpFormatter)
    bench = bench_parser.add_subparsers(dest="bench", required=True, metavar="{" + ",".join(BENCH_COMMANDS) + "}")
    chosen_bench = _chosen(argv[1:2], list(BENCH_COMMANDS)) if command == "bench" else None
    for name, (module, help_text) in BENCH_COMMANDS.items():
        if name == chosen_bench:
            importlib.import_module(module).register(bench, name)
            _finish(bench.choices[name])
        else:
            bench.add_parser(name, help=help_text)

    if command == "slim":
        importlib.import_module(SLIM[0]).register(sub)
        _finish(sub.choices["slim"])
    else:
        sub.add_parser("slim", help=SLIM[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
