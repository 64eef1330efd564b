"""`adalas synth`: instruction data that the model writes itself, answered by it at full depth.

    adalas synth --model smollm2-135m --n 1500 --out data/synth.jsonl [--seed 0] [--max-new-tokens 128]

Rows `id`, `instruction`, `input` (""), `output`; settings and drop counts in `FILE.meta.json`. A killed
run resumes where it stopped; the same settings give the same bytes. `--prompts FILE` answers a
user's prompts instead of sampling them. `--shape dialogue|article|input` has the model write a chat,
a news article, or a text with an operation on it (rows with the shape of SAMSum, CNN/DailyMail and
instruction-with-input prompts; `input` holds the text), answered by it at full depth.
"""
from __future__ import annotations

import json

from ..cli import add_model_args, check_counts, load_model_from_args, make_parser
from ..io import check_output_file
from ..real_tasks import REAL_TASKS

# the choices and defaults of --shape, as adalas.synth has them (importing it here would load torch)
SHAPES = ("plain", "dialogue", "article", "input")
MAX_SOURCE_TOKENS = 320
SHAPE_TEMPERATURE = 0.7
SHAPE_REPETITION_PENALTY = 1.15
SHAPE_ANSWER_TOKENS = {t.shape: t.max_new_tokens for t in REAL_TASKS.values()}
SOURCE_WORDS = {"dialogue": (30, 250), "article": (80, 400), "input": (20, 200)}


def build_parser():
    p = make_parser("synth", __doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--n", type=int, default=1500, help="rows to keep (default 1500)")
    p.add_argument("--out", required=True, help="the JSONL file to write (FILE.meta.json goes beside it)")
    p.add_argument("--prompts", help="answer these prompts (JSONL/JSON with instruction[, input], or text lines)")
    p.add_argument("--shape", choices=SHAPES, default="plain",
                   help="plain (default): a sampled user turn; dialogue, article, input: the model writes a chat, a "
                        "news article, or a text with an operation on it, with the shape of real tasks' prompts")
    p.add_argument("--max-source-tokens", type=int, default=None,
                   help=f"the text the model writes for a shape (default {MAX_SOURCE_TOKENS})")
    p.add_argument("--min-source-words", type=int, default=None, help="for a shape: fewer words are dropped "
                   "(default " + ", ".join(f"{k} {lo}" for k, (lo, _) in SOURCE_WORDS.items()) + ")")
    p.add_argument("--max-source-words", type=int, default=None, help="for a shape: more words are dropped "
                   "(default " + ", ".join(f"{k} {hi}" for k, (_, hi) in SOURCE_WORDS.items()) + ")")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length cap (default 128; a shape: its real task's cap, " +
                        ", ".join(f"{k} {v}" for k, v in SHAPE_ANSWER_TOKENS.items()) + ")")
    p.add_argument("--max-prompt-tokens", type=int, default=96, help="sampled user turn cap (plain; default 96)")
    p.add_argument("--min-prompt-words", type=int, default=4, help="(plain)")
    p.add_argument("--max-prompt-words", type=int, default=60, help="(plain)")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"for sampling prompts or texts (default 1.0 for plain, {SHAPE_TEMPERATURE} for the other shapes)")
    p.add_argument("--top-p", type=float, default=0.95, help="for sampling prompts or texts (default 0.95)")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help=f"for sampling a shape's texts (default {SHAPE_REPETITION_PENALTY}; answers are greedy)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--exclude", nargs="+", default=[], metavar="FILE",
                   help="evaluation files whose text must not leak: a prompt or answer sharing a word 8-gram with "
                        "any of their rows is dropped and counted (dropped_test), e.g. the real test sets")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str]) -> int:
    from pathlib import Path

    from ..data import file_sha256, load_examples
    from ..synth import SynthSettings, meta_path, read_prompt_file, synthesize

    args = build_parser().parse_args(argv)
    if args.shape == "plain" and args.repetition_penalty is not None:
        raise ValueError("--repetition-penalty: only with --shape dialogue, article or input")
    check_counts(("--n", args.n, 1), ("--max-new-tokens", args.max_new_tokens, 1),
                 ("--max-prompt-tokens", args.max_prompt_tokens, 1), ("--batch-size", args.batch_size, 1),
                 ("--min-prompt-words", args.min_prompt_words, 1), ("--max-prompt-words", args.max_prompt_words, 1),
                 ("--max-source-tokens", args.max_source_tokens, 1), ("--min-source-words", args.min_source_words, 1),
                 ("--max-source-words", args.max_source_words, 1))
    source = [flag for flag, v in (("--max-source-tokens", args.max_source_tokens), ("--min-source-words",
              args.min_source_words), ("--max-source-words", args.max_source_words)) if v is not None]
    if args.shape == "plain" and source:
        raise ValueError(f"{source[0]}: only with --shape dialogue, article or input")
    if args.shape != "plain" and args.prompts:
        raise ValueError(f"--prompts: only with --shape plain (--shape {args.shape} has the model write its texts)")
    out = check_output_file(args.out, example="synth.jsonl")
    if args.prompts:
        read_prompt_file(Path(args.prompts))  # refuse a bad file before the model loads
    for f in args.exclude:
        load_examples(f)  # an unreadable evaluation file fails before the model loads
    settings = SynthSettings(model=args.model, n=args.n, seed=args.seed, batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                             min_prompt_words=args.min_prompt_words, max_prompt_words=args.max_prompt_words,
                             temperature=args.temperature, top_p=args.top_p,
                             repetition_penalty=args.repetition_penalty, prompts=args.prompts,
                             prompts_sha256=file_sha256(args.prompts) if args.prompts else None,
                             exclude=tuple(args.exclude), exclude_sha256=tuple(file_sha256(f) for f in args.exclude),
                             shape=args.shape, max_source_tokens=args.max_source_tokens,
                             min_source_words=args.min_source_words, max_source_words=args.max_source_words)
    model, tokenizer = load_model_from_args(args)
    state = synthesize(model, tokenizer, settings, out, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in state.items() if k != "settings"} | {"out": str(out),
                                                                              "meta": str(meta_path(out))}))
    return 0
