"""``python -m lib_accel``: info, benchmarks and checkpoint tools that work without the WebUI."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# Subcommand modules, each with register(subparsers) and run(args) -> int. Imported only when used.
_BENCH = {"attention": "lib_accel.bench_attention", "webui": "lib_accel.bench.webui_cli",
          "unet": "lib_accel.bench.unet_cli"}


def _info(args: argparse.Namespace) -> int:
    from . import info
    data = info.collect()
    print(json.dumps(data, indent=1) if args.json else info.render(data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib_accel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="backends, versions, device and why a backend cannot run")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=_info)
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    for name, module in _BENCH.items():
        importlib.import_module(module).register(bench, name)
    try:
        slim_cli = importlib.import_module("lib_accel.slim_cli")
    except ImportError:
        slim_cli = None
    if slim_cli is not None:
        slim_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
