"""`adalas eval`: generate on a dataset at one depth; ROUGE and layer usage into --out.

    adalas eval --model smollm2-135m --data builtin --depth '{"mode": "early_exit", "exit_after": 24}' \
        --max-new-tokens 32 --limit 48 --batch-size 8 --out results/eval-ee24

Writes DIR/metrics.json and DIR/per_sequence.jsonl; a rerun skips the sequences already written.
`--reference full` scores against the full-depth model's own output (kept in DIR/full_reference.jsonl).
"""
from __future__ import annotations

import argparse
import sys

from ..cli import add_model_args, check_counts, make_parser
from ..io import check_output_dir

# what `adalas eval` takes from a recipe (a training recipe also names the model, data and depth it trains)
RECIPE_FIELDS = ("model", "data", "split", "depth", "prompt_format", "max_new_tokens", "max_prompt_tokens",
                 "long_prompts", "batch_size", "dtype")
DEFAULTS = {"model": "smollm2-135m", "data": "builtin", "split": "test", "max_new_tokens": 32, "batch_size": 8,
            "limit": None, "prompt_format": "auto", "max_prompt_tokens": None, "long_prompts": "refuse",
            "reference": "data"}


def add_generation_args(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """--data --split --limit --max-new-tokens --batch-size --prompt-format --max-prompt-tokens --reference
    (shared with `adalas sweep`). Defaults of None are filled in by `fill_defaults`."""
    d = defaults or {}
    p.add_argument("--data", default=d.get("data"), help="hub id, local JSON/JSONL file, or builtin (default)")
    p.add_argument("--split", default=d.get("split"), help="hub datasets: the split (default test)")
    p.add_argument("--limit", type=int, default=d.get("limit"), help="the first K sequences")
    p.add_argument("--max-new-tokens", type=int, default=d.get("max_new_tokens"), help="default 32")
    p.add_argument("--batch-size", type=int, default=d.get("batch_size"), help="default 8")
    p.add_argument("--prompt-format", default=d.get("prompt_format"), choices=["auto", "alpaca", "native", "chat"],
                   help="auto (default): the chat template when the tokenizer has one")
    p.add_argument("--max-prompt-tokens", type=int, default=d.get("max_prompt_tokens"),
                   help="cut prompt content to fit (default: no limit)")
    add_long_prompts_arg(p, d.get("long_prompts"))
    p.add_argument("--reference", default=d.get("reference"), choices=["data", "full"],
                   help="score against the data's references (default) or the full-depth model's output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--metric", default=None,
                   help="comma-separated: rouge (always), nll (teacher-forced NLL of the reference, column nll), "
                        "agreement (top-1 agreement with full depth, column top1_agreement); see adalas.metrics")


def add_long_prompts_arg(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--long-prompts", default=default, choices=["refuse", "truncate"],
                   help="a prompt that does not fit the model's context beside --max-new-tokens: refuse "
                        "(default: an error naming it, before any generation) or truncate (cut its content to "
                        "fit, with a warning)")


def fill_defaults(args: argparse.Namespace) -> None:
    """Flags left unset (by the command line and the recipe) get DEFAULTS; values are checked."""
    for key, value in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    check_counts(*((f"--{key.replace('_', '-')}", getattr(args, key), 1)
                   for key in ("max_new_tokens", "batch_size", "limit", "max_prompt_tokens")))
    check_output_dir(args.out)


def warn_if_trained_on(model: str, data: str, split: str) -> None:
    """One line on stderr when the model directory records training on this data (`adalas_training.json`)."""
    from ..evaluate import training_data_warning

    message = training_data_warning(model, data, split)
    if message:
        print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("eval", __doc__.splitlines()[0])
    add_model_args(p, default_model=None)
    p.add_argument("--depth", help="a depth config: inline JSON or a JSON file (default: the model's own)")
    p.add_argument("--recipe", help="a recipe name or YAML path: its " + ", ".join(RECIPE_FIELDS)
                   + " (other fields, e.g. training ones, are not used here); flags override")
    add_generation_args(p)
    p.add_argument("--out", required=True, help="output directory")
    return p


def main(argv: list[str]) -> int:
    from ..cli import load_model_from_args
    from ..config import DepthConfig
    from ..data import data_sha256, load_examples
    from ..evaluate import context_length, dist_info, make_items, rank_device, run_eval, write_stdout_summary
    from ..metrics import COLUMNS, parse_metrics
    from ..recipes import load_recipe, split_recipe_flag, to_argv

    recipe, rest = split_recipe_flag(list(argv))
    fields = {k: v for k, v in load_recipe(recipe).items() if k in RECIPE_FIELDS} if recipe else {}
    args = build_parser().parse_args(to_argv(fields) + rest)  # defaults < recipe < command line
    args.recipe = recipe
    fill_defaults(args)
    teacher_forced = parse_metrics(args.metric)
    depth = DepthConfig.parse(args.depth) if args.depth else None
    rank, world = dist_info()
    args.device = rank_device(args.device, rank, world)
    examples = load_examples(args.data, split=args.split, limit=args.limit)  # bad data fails before the model loads
    warn_if_trained_on(args.model, args.data, args.split)
    model, tok = load_model_from_args(args, depth=depth)  # depth None: the model directory's saved depth
    items = make_items(examples, tok, prompt_format=args.prompt_format, max_prompt_tokens=args.max_prompt_tokens,
                       context=context_length(model), max_new_tokens=args.max_new_tokens,
                       long_prompts=args.long_prompts, source=f"data {args.data!r}")
    identity = {"model": args.model, "data": {"name": args.data, "split": args.split}, "limit": args.limit,
                **({"data_sha256": sha} if (sha := data_sha256(args.data)) else {}),
                "generation": {"prompt_format": args.prompt_format, "max_prompt_tokens": args.max_prompt_tokens,
                               "long_prompts": args.long_prompts},
                **({"recipe": args.recipe} if args.recipe else {})}
    metrics = run_eval(model, tok, items, args.out, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                       reference=args.reference, rank=rank, world_size=world, identity=identity,
                       progress=not args.no_progress, teacher_forced=teacher_forced)
    if metrics is not None:
        write_stdout_summary(metrics, ("rouge1", "rouge2", "rougeL", *(COLUMNS[m] for m in teacher_forced),
                                       "avg_layers", "n"))
    else:
        print(f"rank {rank}: done; the last rank to finish writes {args.out}/metrics.json")
    return 0
