"""`adalas adapt`: one command from a model to a faster one, adapted to N of its layers and exported.

    adalas adapt --model smollm2-135m --layers 20 --out runs/adapt20 [--data FILE] [--test FILE ...]
                 [--format hf|gguf] [--steps 160] [--seed 0] [--prompt-depth route|full]

Five resumable stages, recorded in OUT/adapt.json: data (the model's own instructions and answers, or
--data, with held-out rows), route (the N layers to keep, searched teacher-forced on held-out rows),
train (LoRA plus self-distillation on that route), evaluate (full depth, the route off the shelf and
the adapted route on held-out rows and each --test file, paired intervals; tokens/s against full
depth) and export (OUT/export: a plain transformers checkpoint with the adapter merged and the
skipped layers deleted, and a model card; OUT/export/model.gguf with --format gguf). OUT/adapter is
the LoRA adapter in the shipped-adapter layout; OUT/report.md the report. Run the same command again
to resume; a stage whose inputs changed is redone, with every stage after it.
"""
from __future__ import annotations

import json
import sys

from ..cli import add_model_args, make_parser


def build_parser():
    p = make_parser("adapt", __doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--layers", type=int, required=True, help="layers to keep, 1..L-1")
    p.add_argument("--out", required=True, help="the directory to write (and to resume in)")
    p.add_argument("--data", default=None,
                   help="a JSON/JSONL file of rows to adapt on (default: rows the model writes itself, adalas synth)")
    p.add_argument("--test", nargs="+", default=[], metavar="FILE",
                   help="evaluation files: scored at the end; rows sharing text with them are dropped from the data")
    p.add_argument("--looks", default=None, metavar="LOOKS.jsonl",
                   help="a test-set protocol's log (results/tasks/LOOKS.jsonl): each --test file's evaluation is "
                        "logged there before it starts (date, commit, the models' sha256, why)")
    p.add_argument("--format", default="hf", choices=["hf", "gguf"],
                   help="hf (default): a transformers checkpoint; gguf: also model.gguf for llama.cpp (Llama models)")
    p.add_argument("--steps", type=int, default=160, help="training steps (default 160, batch 8)")
    p.add_argument("--seed", type=int, default=0, help="training seed: LoRA initialisation and data order")
    p.add_argument("--prompt-depth", default="route", choices=["route", "full"],
                   help="route (default): the prompt follows the route too, so the export is the model trained and "
                        "evaluated; full: the prompt at full depth (the paper's setting; the export then differs)")
    p.add_argument("--heldout", type=int, default=96,
                   help="held-out rows, the first of the data (default 96, at most half)")
    p.add_argument("--route-rows", type=int, default=32, help="held-out rows the route search scores (default 32)")
    p.add_argument("--response-tokens", type=int, default=32, help="response tokens per row in the search (default 32)")
    p.add_argument("--max-candidates", type=int, default=100, help="routes the search scores at most (default 100)")
    p.add_argument("--synth-rows", type=int, default=1600, help="rows the model writes itself without --data")
    p.add_argument("--shapes", default="dialogue,article,input",
                   help="without --data, also rows of these shapes (a dialogue to summarise, an article, a text to "
                        "work on; comma list, or none): the shapes of real tasks (default: all three)")
    p.add_argument("--shape-rows", type=int, default=192, help="rows per shape (default 192)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens in evaluation (default 64)")
    p.add_argument("--eval-rows", type=int, default=None,
                   help="held-out rows to evaluate (default: every one the search did not use)")
    p.add_argument("--batch-size", type=int, default=8, help="training, search and evaluation batch (default 8)")
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--gguf-dtype", default="f16", choices=["f16", "f32"], help="GGUF weights (norms are F32)")
    p.add_argument("--speed-tokens", type=int, default=32, help="new tokens per timed call (default 32)")
    p.add_argument("--speed-rounds", type=int, default=3, help="timed calls per model and batch size (default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_shapes(text: str) -> tuple[str, ...]:
    """"dialogue,article" -> ("dialogue", "article"); "none" (or empty) -> ()."""
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    return () if words in ((), ("none",)) else words


def main(argv: list[str]) -> int:
    from ..adapt import AdaptSettings, command_line, run_adapt

    args = build_parser().parse_args(argv)
    settings = AdaptSettings(
        model=args.model, layers=args.layers, out=args.out, data=args.data, tests=tuple(args.test), format=args.format,
        steps=args.steps, seed=args.seed, prompt_depth=args.prompt_depth, heldout=args.heldout,
        route_rows=args.route_rows, response_tokens=args.response_tokens, max_candidates=args.max_candidates,
        synth_rows=args.synth_rows, shapes=parse_shapes(args.shapes), shape_rows=args.shape_rows,
        max_new_tokens=args.max_new_tokens, eval_rows=args.eval_rows, looks=args.looks,
        batch_size=args.batch_size, learning_rate=args.learning_rate, lora_r=args.lora_r, gguf_dtype=args.gguf_dtype,
        speed_tokens=args.speed_tokens, speed_rounds=args.speed_rounds, dtype=args.dtype, device=args.device,
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code, progress=not args.no_progress,
        command=command_line(argv))
    record = run_adapt(settings)
    stages = record["stages"]
    print(json.dumps({"out": args.out, "skip": stages["route"]["outputs"].get("skip"),
                      "rougeL": stages["evaluate"]["outputs"].get("rougeL"),
                      "speed_ratio": stages["evaluate"]["outputs"].get("speed_ratio"),
                      "export": stages["export"]["outputs"].get("export"),
                      "gguf": stages["export"]["outputs"].get("gguf"),
                      "wall_s": {k: v["wall_s"] for k, v in stages.items()}}))
    print(f"adalas adapt: done; the report is {args.out}/report.md", file=sys.stderr)
    return 0
