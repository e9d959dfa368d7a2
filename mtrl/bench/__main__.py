"""``python -m mtrl.bench <what> [options]``: see :mod:`mtrl.bench`.

Bad options exit 2 with one line (:class:`mtrl.validation.ArgumentParser`), before any measurement; so does
an ``--out`` that cannot be created. A full disk when the result is written exits 2 too, after printing the
result's JSON on stdout so that the measurement is not lost.
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

import torch

from mtrl import validation
from mtrl.bench import BENCHMARKS
from mtrl.bench._common import machine_info, positive_int, write_json


def _module(name: str) -> Any:
    return importlib.import_module(f"mtrl.bench.{BENCHMARKS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = validation.ArgumentParser(prog="python -m mtrl.bench",
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
        sub.add_argument("--torch-threads", type=positive_int, default=None,
                         help="torch CPU threads (1 is much faster on a shared machine)")
        module.add_arguments(sub)
    return parser


def check_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed options, with the ones every benchmark shares checked (``--device``, ``--out``); exits 2
    with one line on bad input."""
    args = build_parser().parse_args(argv)
    prog = f"mtrl.bench {args.what}"
    try:
        args.device = str(validation.resolve_device(args.device, "--device"))
        if args.out:
            validation.check_output_file(args.out, "--out", "Pass --out <a writable file path>.")
    except validation.ConfigError as error:
        validation.fail(prog, error)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = check_arguments(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    result = _module(args.what).run(args)
    result = {"benchmark": args.what, "quick": args.quick, **result, "machine": machine_info(args.device)}
    if args.out:
        try:
            print(f"wrote {write_json(result, args.out)}")
        except OSError as error:
            print(json.dumps(result, indent=2, default=str))   # the measurement is not lost
            validation.fail(f"mtrl.bench {args.what}", validation.write_failure(
                args.out, error, "the result is printed above as JSON; an earlier file there is unchanged"))
    return result


if __name__ == "__main__":
    main()
