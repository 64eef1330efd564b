"""The `adalas` command: one dispatcher, one module per subcommand under `adalas.commands`.

Library code raises ValueError; here it becomes one line on stderr and exit code 2 (`--debug`
shows the traceback instead). Every flag accepts dash and underscore spellings.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from .flags import OneLineErrors

# subcommand -> (module under adalas.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "generate side by side at full depth, early exit and layer skipping"),
    "eval": ("eval", "generate on a dataset with a depth config; ROUGE and layer usage"),
    "sweep": ("sweep", "evaluate many depth configs over the same sequences"),
    "oracle": ("oracle", "per-sequence oracle over a sweep (multiple-choice knapsack)"),
    "analyze": ("analyze", "hidden-state similarity across depth"),
    "synth": ("synth", "instruction data the model writes itself, answered at full depth"),
    "train": ("train", "fine-tune with a depth mode (Hugging Face Trainer)"),
    "warmup": ("warmup", "train only the skip controllers, backbone frozen"),
    "train-router": ("train_router", "learn a per-sequence route controller from a sweep"),
    "reproduce": ("reproduce", "the paper's curves on the embedded model: sweep, oracle, analysis, report"),
    "study": ("study", "the paper's training experiments (E1-E4) from a plan of runs: train, evaluate, report"),
    "bench": ("bench", "speed and memory benchmarks"),
    "export": ("export", "write a plain transformers checkpoint with skipped layers removed"),
    "route": ("route", "search the layers to keep, teacher-forced on held-out rows against full depth"),
    "adapt": ("adapt", "adapt a model to N of its layers: data, route, training, evaluation, export"),
    "tasks": ("tasks", "the real-task protocol: logged looks at the shared test sets, committed rows, report"),
}


class DashUnderscoreParser(OneLineErrors, argparse.ArgumentParser):
    """argparse that accepts `--max-new-tokens` and `--max_new_tokens` alike."""

    def add_argument(self, *names, **kwargs):
        spellings = []
        for n in names:
            spellings.append(n)
            if n.startswith("--"):
                for alt in (n.replace("-", "_").replace("__", "--", 1), "--" + n[2:].replace("_", "-")):
                    if alt not in spellings and alt not in names:
                        spellings.append(alt)
        return super().add_argument(*spellings, **kwargs)


def make_parser(command: str, description: str) -> DashUnderscoreParser:
    return DashUnderscoreParser(prog=f"adalas {command}", description=description)


def add_model_args(parser: argparse.ArgumentParser, default_model: str = "smollm2-135m") -> None:
    """--model, --dtype, --device, --allow-pickle, --trust-remote-code: the same on every command."""
    parser.add_argument("--model", default=default_model, help="hub id, local directory, or smollm2-135m")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow .bin/.pt weights (loaded with weights_only=True)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run a hub model's own code")


def load_model_from_args(args: argparse.Namespace, depth=None):
    """(AdalasForCausalLM, tokenizer) as the model flags of `add_model_args` ask."""
    from .hub import load_tokenizer
    from .model import AdalasForCausalLM

    model = AdalasForCausalLM.from_pretrained(args.model, depth=depth, dtype=args.dtype, device=args.device,
                                              allow_pickle=args.allow_pickle,
                                              trust_remote_code=args.trust_remote_code)
    return model, load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)


def check_counts(*checks: tuple[str, Any, int]) -> None:
    """(flag, value, least) each: ValueError naming the first value below its least (None: unset,
    fine; a list: each element)."""
    for flag, value, least in checks:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and v < least:
                raise ValueError(f"{flag}: must be >= {least}, got {v}")


def _usage() -> str:
    lines = ["usage: adalas [--debug] <command> [options]", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`adalas <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ADALAS_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"adalas: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"adalas.commands.{COMMANDS[name][0]}")
    try:
        return int(module.main(rest) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError) as e:
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"adalas {name}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adalas {name}: interrupted; finished work is saved", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
