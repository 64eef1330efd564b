"""`adalas bench decode|train`: speed benchmarks, side by side (one JSON object on stdout).

`decode`: decode speed and memory; `train`: forward + backward of a teacher-forced pass.

The benchmarks themselves are `benchmarks/decode.py` and `benchmarks/train.py` in the source tree
(also runnable as scripts); this command loads them from there, so it needs a source checkout (an
editable install has one).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ..cli import check_counts, make_parser
from ..io import check_output_file

BENCHMARKS = {"decode": "decode.py", "train": "train.py"}


def _benchmark(what: str) -> ModuleType:
    path = Path(__file__).resolve().parents[3] / "benchmarks" / BENCHMARKS[what]
    if not path.is_file():
        raise ValueError(f"bench: {path} not found; `adalas bench` runs the benchmarks of a source checkout")
    name = f"adalas_benchmark_{what}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("bench", __doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True, metavar="{" + ",".join(sorted(BENCHMARKS)) + "}",
                           help="which benchmark")
    for what in sorted(BENCHMARKS):
        module = _benchmark(what)
        module.add_arguments(sub.add_parser(what, help=module.__doc__.splitlines()[0],
                                                      description=module.__doc__.splitlines()[0]))
    return p


def run(args: argparse.Namespace) -> int:
    check_counts(*((f"--{name.replace('_', '-')}", getattr(args, name, None), 1)  # those the benchmark takes
                   for name in ("new_tokens", "repeats", "batch_sizes", "threads", "batch", "tokens", "labels")))
    if getattr(args, "out", None) is not None:
        check_output_file(args.out, example=f"{args.what}.json")
    return int(_benchmark(args.what).run(args) or 0)


def main(argv: list[str]) -> int:
    return run(build_parser().parse_args(argv))
