"""``python -m mtrl.bench <what> [options]``: see :mod:`mtrl.bench`."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

import torch

from mtrl.bench import BENCHMARKS
from mtrl.bench._common import machine_info, write_json


def _module(name: str) -> Any:
    return importlib.import_module(f"mtrl.bench.{BENCHMARKS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mtrl.bench",
                                     description="Benchmarks of mtrl (numbers, not tests). See README, 'Benchmarks'.")
    commands = parser.add_subparsers(dest="what", required=True, metavar="what")
    for name in BENCHMARKS:
        try:
            module = _module(name)
        except ModuleNotFoundError as error:
            if error.name != f"mtrl.bench.{BENCHMARKS[name]}":
                raise
            continue   # not written yet
        sub = commands.add_parser(name, help=module.HELP, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--quick", action="store_true", help="a CI-sized run (seconds); its numbers mean nothing")
        sub.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
        sub.add_argument("--out", default=None, help="write the result as JSON to this path")
        sub.add_argument("--torch-threads", type=int, default=None,
                         help="torch CPU threads (1 is much faster on a shared machine)")
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"mtrl.bench: error: --device {args.device} but CUDA is not available here; use --device cpu.",
              file=sys.stderr)
        sys.exit(2)
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            print("mtrl.bench: error: --torch-threads should be a positive integer.", file=sys.stderr)
            sys.exit(2)
        torch.set_num_threads(args.torch_threads)
    result = _module(args.what).run(args)
    result = {"benchmark": args.what, "quick": args.quick, **result, "machine": machine_info(args.device)}
    if args.out:
        print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
